import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TenantDirectory } from '../src/tenants/identify.js';
import { GatewayError } from '../src/errors.js';
import { proxyAuth, startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { startUpstream, type EchoBody, type FakeUpstream } from './helpers/upstream.js';

const run = promisify(execFile);

let upstream: FakeUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startUpstream();
  gw = await startGateway(
    testConfig(`
  api:
    match: { hosts: [api.example.test], prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
`),
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('proxy-form requests', () => {
  it('answer 407 with Proxy-Authenticate when the key is missing or wrong', async () => {
    // curl, because undici's ProxyAgent turns a 407 into an exception before we could look at it.
    for (const userinfo of ['', 'acme:wrong@', 'nobody:acme-secret-key-1@', 'acme@']) {
      const { stdout } = await run('curl', ['-sS', '-i', '-x', `http://${userinfo}127.0.0.1:${gw.port}`, 'http://api.example.test/x']);
      const [head, body] = stdout.split('\r\n\r\n');
      expect(head, userinfo).toMatch(/^HTTP\/1\.1 407 /);
      expect(head).toMatch(/\r\nproxy-authenticate: Basic realm="sluice"/i);
      expect(JSON.parse(body!)).toMatchObject({ error: 'proxy_auth_required' });
    }
    expect(upstream.arrivals).toHaveLength(0);
  });

  it('let curl -x with tenant:key through, and strip Proxy-Authorization', async () => {
    const { stdout } = await run('curl', ['-sS', '-x', `http://globex:globex-secret-key-2@127.0.0.1:${gw.port}`, 'http://api.example.test/who']);
    const body = JSON.parse(stdout) as EchoBody;
    expect(body.url).toBe('/who');
    expect(body.headers['proxy-authorization']).toBeUndefined();
    expect(gw.logs.some((l) => l.tenant === 'globex' && l.status === 200)).toBe(true);
  });
});

describe('base-URL requests', () => {
  it('answer 401 with WWW-Authenticate when the key is missing or wrong', async () => {
    for (const key of [undefined, 'acme:wrong', 'acme', ':acme-secret-key-1', 'globex:acme-secret-key-1']) {
      const res = await request(`${gw.proxyUrl}/api/x`, { headers: key === undefined ? {} : { 'x-sluice-key': key } });
      expect(res.statusCode, String(key)).toBe(401);
      expect(res.headers['www-authenticate']).toBe('Basic realm="sluice"');
      expect(await res.body.json()).toMatchObject({ error: 'unauthorized' });
    }
  });

  it('accept X-Sluice-Key or Proxy-Authorization, and strip both', async () => {
    for (const headers of [{ 'x-sluice-key': 'acme:acme-secret-key-1' }, { 'proxy-authorization': proxyAuth('acme', 'acme-secret-key-1') }]) {
      const res = await request(`${gw.proxyUrl}/api/ok`, { headers });
      expect(res.statusCode).toBe(200);
      const body = (await res.body.json()) as EchoBody;
      expect(body.headers['x-sluice-key']).toBeUndefined();
      expect(body.headers['proxy-authorization']).toBeUndefined();
    }
  });
});

describe('without a tenants: section', () => {
  it('serves every request as tenant "default" on a loopback listener', async () => {
    const open = await startGateway(`listen: { proxy: 127.0.0.1:0, admin: 127.0.0.1:0 }
upstreams:
  api: { match: { prefix: /api }, target: "${upstream.url}", allowPrivate: true }
`);
    try {
      const res = await request(`${open.proxyUrl}/api/open`);
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      await new Promise((r) => setTimeout(r, 10));
      expect(open.logs.find((l) => l.path === '/api/open')?.tenant).toBe('default');
    } finally {
      await open.close();
    }
  });
});

describe('TenantDirectory', () => {
  const directory = new TenantDirectory({ acme: { key: 'k1', weight: 2 }, idle: { key: '', weight: 1 } }, new Set(['idle']));

  it('identifies by key and never by an empty or unset one', () => {
    expect(directory.identify({ 'x-sluice-key': 'acme:k1' }, 'base-url')).toEqual(expect.objectContaining({ name: 'acme', weight: 2 }));
    expect(() => directory.identify({ 'x-sluice-key': 'idle:' }, 'base-url')).toThrow(GatewayError);
    expect(() => directory.identify({ 'x-sluice-key': 'acme:k1x' }, 'proxy')).toThrow(/tenant key is not valid/);
  });

  it('keeps the key out of the error', () => {
    try {
      directory.identify({ 'x-sluice-key': 'acme:k1-wrong-guess' }, 'proxy');
    } catch (err) {
      expect((err as GatewayError).code).toBe('proxy_auth_required');
      expect(JSON.stringify(err) + String(err)).not.toContain('k1-wrong-guess');
    }
    expect.assertions(2);
  });
});
