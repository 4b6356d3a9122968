/**
 * Egress safety: private destinations are refused unless the upstream sets allowPrivate. Only
 * 127.0.0.1 is ever contacted. Names that should resolve to something other than what /etc/hosts
 * says are answered by a stand-in for dns.lookup (below), never asked of a resolver; the public
 * addresses in this file are strings that no test connects to.
 */
import { once } from 'node:events';
import * as dns from 'node:dns';
import { createServer, type Server } from 'node:http';
import type { AddressInfo, LookupFunction } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { EgressRefusedError, guardedLookup, literalRange, privateRange } from '../src/upstream/egress.js';
import { proxyAuth, startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { startTokenEndpoint, type FakeTokenEndpoint } from './helpers/oauth.js';
import { rawExchange } from './helpers/raw.js';
import { until } from './helpers/wait.js';

vi.mock('node:dns', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:dns')>();
  // DNS rebinding, played: names that resolve to private addresses (and one that mixes public and private).
  const answers: Record<string, string[]> = {
    'rebound.sluice.test': ['127.0.0.1'],
    'mixed.sluice.test': ['8.8.8.8', '10.1.2.3'],
    'public.sluice.test': ['8.8.8.8', '2606:4700::1111'],
  };
  // A name that rebinds: public at its first lookup, loopback at every one after.
  let flips = 0;
  const lookup = vi.fn((hostname: string, options: dns.LookupOptions, callback: (...args: unknown[]) => void) => {
    const answer = hostname === 'flip.sluice.test' ? [flips++ === 0 ? '8.8.8.8' : '127.0.0.1'] : answers[hostname];
    const addresses = answer?.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
    if (!addresses) return real.lookup(hostname, options, callback as never);
    process.nextTick(() => (options.all ? callback(null, addresses) : callback(null, addresses[0]!.address, addresses[0]!.family)));
  });
  return { ...real, lookup, default: { ...real, lookup } };
});

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

function resolve(lookup: LookupFunction, host: string, all: boolean): Promise<{ err: NodeJS.ErrnoException | null; address: unknown; family?: number | undefined }> {
  return new Promise((done) => lookup(host, { all }, (err, address, family) => done({ err, address, family })));
}

beforeAll(() => {
  // The fake names above must never reach a real resolver.
  expect(vi.isMockFunction(dns.lookup)).toBe(true);
});

describe('privateRange', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.255', 'private'],
    ['192.168.1.1', 'private'],
    ['169.254.169.254', 'link-local (cloud metadata)'],
    ['169.254.1.1', 'link-local'],
    ['100.100.100.200', 'CGNAT (cloud metadata)'],
    ['100.64.0.1', 'CGNAT'],
    ['0.0.0.0', '"this network"'],
    ['0.1.2.3', '"this network"'],
    ['255.255.255.255', 'broadcast'],
    ['240.0.0.1', 'reserved'],
    ['224.0.0.1', 'multicast'],
    ['198.18.0.1', 'benchmarking'],
    ['192.0.2.1', 'documentation'],
    ['198.51.100.7', 'documentation'],
    ['203.0.113.5', 'documentation'],
    ['192.0.0.8', 'IETF protocol assignments'],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['fd00:ec2::254', 'private (cloud metadata)'],
    ['fe80::1', 'link-local'],
    ['fe80::1%eth0', 'link-local'],
    ['fec0::1', 'site-local'],
    ['ff02::1', 'multicast'],
    ['2001:db8::1', 'documentation'],
    ['100::1', 'discard-only'],
    ['64:ff9b:1::1', 'NAT64 local use'],
    ['::7f00:1', 'IPv4-compatible (deprecated)'],
    ['::ffff:127.0.0.1', 'IPv4-mapped loopback'],
    ['::ffff:7f00:1', 'IPv4-mapped loopback'],
    ['::ffff:169.254.169.254', 'IPv4-mapped link-local (cloud metadata)'],
    ['::ffff:0:a00:1', 'IPv4-translated private'],
    ['64:ff9b::a9fe:a9fe', 'NAT64 link-local (cloud metadata)'],
    ['64:ff9b::127.0.0.1', 'NAT64 loopback'],
    ['2002:c0a8:101::1', '6to4 private'],
  ])('%s is %s', (address, range) => {
    expect(privateRange(address)).toBe(range);
  });

  it.each(['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '198.20.0.1', '2606:4700::1111', '::ffff:8.8.8.8', '64:ff9b::808:808', '2002:808:808::1'])(
    '%s is public',
    (address) => {
      expect(privateRange(address)).toBeUndefined();
    },
  );

  it('knows localhost and bracketed IPv6 as URLs write them, and leaves other names to DNS', () => {
    expect(literalRange('localhost')).toBe('loopback');
    expect(literalRange('api.localhost')).toBe('loopback');
    expect(literalRange('[::1]')).toBe('loopback');
    expect(literalRange('[::ffff:a9fe:a9fe]')).toBe('IPv4-mapped link-local (cloud metadata)');
    expect(literalRange('api.example.com')).toBeUndefined();
  });
});

describe('guardedLookup', () => {
  it('refuses a name when any of its addresses is private, however the caller asks', async () => {
    for (const all of [false, true]) {
      const { err } = await resolve(guardedLookup(false), 'mixed.sluice.test', all);
      expect(err).toBeInstanceOf(EgressRefusedError);
      expect(err).toMatchObject({ code: 'ESLUICE_EGRESS', host: 'mixed.sluice.test', address: '10.1.2.3', range: 'private' });
      expect(err?.message).toBe(
        'mixed.sluice.test resolves to 10.1.2.3 (private); the gateway refuses private destinations unless the upstream sets allowPrivate: true',
      );
    }
  });

  it('answers public names in the shape asked for', async () => {
    expect(await resolve(guardedLookup(false), 'public.sluice.test', false)).toEqual({ err: null, address: '8.8.8.8', family: 4 });
    const all = await resolve(guardedLookup(false), 'public.sluice.test', true);
    expect(all.address).toEqual([
      { address: '8.8.8.8', family: 4 },
      { address: '2606:4700::1111', family: 6 },
    ]);
  });

  it('checks every lookup anew: a name that rebinds to loopback after a public answer is refused then', async () => {
    const guarded = guardedLookup(false);
    expect(await resolve(guarded, 'flip.sluice.test', false)).toEqual({ err: null, address: '8.8.8.8', family: 4 });
    const rebound = await resolve(guarded, 'flip.sluice.test', false);
    expect(rebound.err).toMatchObject({ code: 'ESLUICE_EGRESS', address: '127.0.0.1', range: 'loopback' });
  });

  it('refuses localhost (from /etc/hosts), and is plain dns.lookup with allowPrivate', async () => {
    const refused = await resolve(guardedLookup(false), 'localhost', false);
    expect(refused.err).toMatchObject({ code: 'ESLUICE_EGRESS', range: 'loopback' });
    expect(guardedLookup(true)).toBe(dns.lookup);
  });
});

describe('a gateway in front of a private destination', () => {
  let server: Server;
  let port: number;
  let connections = 0;
  let gw: TestGateway;

  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      res.end('{"reached":true}');
    });
    server.on('connection', () => connections++);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
    gw = await startGateway(
      testConfig(`
  rebound:
    match: { prefix: /rebound }
    target: http://rebound.sluice.test:${port}
  allowed:
    match: { prefix: /allowed }
    target: http://localhost:${port}
    allowPrivate: true
  blind:
    match: { hosts: [rebound.example.com] }
    target: https://rebound.sluice.test:${port}
    intercept: false
`),
    );
  });

  afterAll(async () => {
    await gw.close();
    server.closeAllConnections();
    server.close();
  });

  it('answers 502 egress_refused for a target that resolves to a private address, and never connects', async () => {
    const res = await request(`${gw.proxyUrl}/rebound/anything`, { headers: KEY });
    expect(res.statusCode).toBe(502);
    expect(await res.body.json()).toEqual({
      error: 'egress_refused',
      message: "the upstream's target resolves to a private address (127.0.0.1, loopback); set allowPrivate: true on the upstream if that is intended",
      upstream: 'rebound',
    });
    expect(connections).toBe(0);
    expect(gw.logs.find((l) => l.msg === 'request' && l.upstream === 'rebound')).toMatchObject({ status: 502, error: 'egress_refused' });
  });

  it('refuses a blind CONNECT tunnel to that target with 502 egress_refused, and never connects', async () => {
    const exchange = await rawExchange(
      gw.port,
      `CONNECT rebound.example.com:443 HTTP/1.1\r\nHost: rebound.example.com:443\r\nProxy-Authorization: ${proxyAuth('acme', 'acme-secret-key-1')}\r\n\r\n`,
      { untilClose: true },
    );
    expect(exchange.response?.status).toBe(502);
    expect(JSON.parse(exchange.response!.body)).toMatchObject({ error: 'egress_refused', upstream: 'blind' });
    expect(connections).toBe(0);
  });

  it('forwards when the upstream sets allowPrivate: true', async () => {
    const res = await request(`${gw.proxyUrl}/allowed/anything`, { headers: KEY });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ reached: true });
    expect(connections).toBe(1);
  });
});

describe('OAuth2 token endpoints pass the same check', () => {
  let endpoint: FakeTokenEndpoint;
  let gw: TestGateway;
  beforeAll(async () => {
    endpoint = await startTokenEndpoint();
    // The endpoint answers on 127.0.0.1; the config names it rebound.sluice.test (loopback too).
    const tokenUrl = endpoint.url.replace('127.0.0.1', 'rebound.sluice.test');
    const oauth2 = (name: string, allow: string) => `
  ${name}:
    match: { prefix: /${name} }
    target: http://rebound.sluice.test:1
${allow}    credentials:
      type: oauth2
      grant: client_credentials
      tokenUrl: "${tokenUrl}"
      clientId: ${name}-client
      clientSecret: ${name}-client-secret-5a1b
      timeout: 2s
`;
    gw = await startGateway(testConfig(oauth2('refused', '') + oauth2('allowed', '    allowPrivate: true\n')));
  });
  afterAll(async () => {
    await gw.close();
    await endpoint.close();
  });

  it('refuses a token URL that resolves to a private address without allowPrivate, and never calls it', async () => {
    type Credentials = Record<string, { lastRefresh?: { outcome: string; detail?: string } }>;
    const credentials = async () => ((await (await request(`${gw.adminUrl}/status`)).body.json()) as { credentials: Credentials }).credentials;
    await until(async () => (await credentials()).refused?.lastRefresh !== undefined && (await credentials()).allowed?.lastRefresh !== undefined);
    const state = await credentials();
    expect(state.refused!.lastRefresh).toMatchObject({ outcome: 'failed', detail: expect.stringContaining('egress refused: rebound.sluice.test resolves to 127.0.0.1 (loopback)') });
    expect(state.allowed!.lastRefresh).toMatchObject({ outcome: 'token' });
    expect(endpoint.calls.map((call) => call.form.client_id)).toEqual(['allowed-client']);
    const res = await request(`${gw.proxyUrl}/refused/x`, { headers: KEY });
    expect(res.statusCode).toBe(503);
    expect(await res.body.json()).toMatchObject({ error: 'credentials_unavailable', upstream: 'refused' });
  });
});

describe('IP-literal targets at config load', () => {
  const config = (target: string, allow = '') => `upstreams:\n  a:\n    match: { prefix: /a }\n    target: ${target}\n${allow}`;
  const problems = (yaml: string) => {
    try {
      parseConfig(yaml, 'routes.yaml', {});
      return [];
    } catch (err) {
      if (err instanceof ConfigError) return err.problems;
      throw err;
    }
  };

  it('refuses a private address literal, naming its range', () => {
    expect(problems(config('http://127.0.0.1:8080'))).toEqual([
      'routes.yaml:4 upstreams.a.target: 127.0.0.1 is a loopback address; the gateway refuses private destinations unless the upstream sets allowPrivate: true',
    ]);
    // The URL parser writes every form of an address one way: 2130706433 is 127.0.0.1.
    expect(problems(config('http://2130706433/'))[0]).toContain('127.0.0.1 is a loopback address');
    expect(problems(config('http://0.0.0.0:80'))[0]).toContain('0.0.0.0 is a "this network" address');
  });

  it('refuses a private address literal as an OAuth2 token URL too', () => {
    const yaml = `${config('https://8.8.8.8')}    credentials: { type: oauth2, grant: client_credentials, tokenUrl: "http://10.0.0.7/token", clientId: c, clientSecret: s }\n`;
    expect(problems(yaml)).toEqual([
      'routes.yaml:5 upstreams.a.credentials.tokenUrl: 10.0.0.7 is a private address; the gateway refuses private destinations unless the upstream sets allowPrivate: true',
    ]);
  });

  it('accepts them with allowPrivate: true, and public literals without', () => {
    expect(problems(config('http://127.0.0.1:8080', '    allowPrivate: true\n'))).toEqual([]);
    expect(problems(config('http://[::1]:8080', '    allowPrivate: true\n'))).toEqual([]);
    expect(problems(config('https://8.8.8.8'))).toEqual([]);
  });
});
