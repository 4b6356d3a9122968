/**
 * The lifecycle of CONNECT tunnels: bounded (listen.maxTunnels, idle timeout), cut at the end of a
 * drain, re-checked against a reloaded config, plain HTTP inside a tunnel (undici tunnels http://
 * URLs too), and a CA key others can read stopping the start. (Egress safety for blind tunnels is
 * in egress.test.ts, with its DNS stand-in.)
 */
import { once } from 'node:events';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { fetch, ProxyAgent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { Gateway } from '../src/main.js';
import { proxyAuth, startGateway, tempDir, writeConfig, type TestGateway } from './helpers/gateway.js';
import { startHttpsUpstream, type HttpsUpstream } from './helpers/https-upstream.js';
import { configWithListen } from './helpers/raw.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';
import { until } from './helpers/wait.js';

const ACME = { 'proxy-authorization': proxyAuth('acme', 'acme-secret-key-1') };

async function connectTo(port: number, authority: string, headers: Record<string, string> = ACME): Promise<{ status: number; headers: IncomingHttpHeaders; socket: Socket; body: string }> {
  const req = httpRequest({ host: '127.0.0.1', port, method: 'CONNECT', path: authority, headers });
  req.end();
  const [res, socket, head] = (await once(req, 'connect')) as [IncomingMessage, Socket, Buffer];
  let body = head.toString();
  if (res.statusCode !== 200) {
    socket.on('data', (c: Buffer) => (body += c.toString()));
    await once(socket, 'close');
  }
  return { status: res.statusCode ?? 0, headers: res.headers, socket, body };
}

const closing: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closing.splice(0).map((close) => close()));
});

async function https(): Promise<HttpsUpstream> {
  const upstream = await startHttpsUpstream();
  closing.push(() => upstream.close());
  return upstream;
}

async function gateway(yaml: string): Promise<TestGateway> {
  const gw = await startGateway(yaml);
  closing.unshift(() => gw.close());
  return gw;
}

function blind(upstream: HttpsUpstream, more = ''): string {
  return `  blind:
    match: { hosts: [api.example.com] }
    target: ${upstream.url}
    intercept: false
    allowPrivate: true
${more}`;
}

describe('CONNECT tunnels', () => {
  it('refuses a tunnel past listen.maxTunnels with 503 too_many_tunnels, and takes one again when a tunnel closes', async () => {
    const up = await https();
    const gw = await gateway(configWithListen({ maxTunnels: '1' }, blind(up)));
    const first = await connectTo(gw.port, 'api.example.com:443');
    expect(first.status).toBe(200);
    const second = await connectTo(gw.port, 'api.example.com:443');
    expect(second.status).toBe(503);
    expect(second.headers['retry-after']).toBe('1');
    expect(JSON.parse(second.body.slice(second.body.indexOf('{')))).toMatchObject({ error: 'too_many_tunnels' });
    first.socket.destroy();
    await until(async () => (await connectTo(gw.port, 'api.example.com:443').then((t) => (t.socket.destroy(), t.status))) === 200);
  });

  it('closes a blind tunnel idle both ways for listen.idleTimeout', async () => {
    const up = await https();
    const gw = await gateway(configWithListen({ idleTimeout: '300ms' }, blind(up)));
    const tunnel = await connectTo(gw.port, 'api.example.com:443');
    expect(tunnel.status).toBe(200);
    const started = Date.now();
    await once(tunnel.socket, 'close');
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    expect(Date.now() - started).toBeLessThan(3_000);
  });

  it('serves plain HTTP inside a tunnel: undici ProxyAgent tunnels http:// URLs too', async () => {
    const up: FakeUpstream = await startUpstream();
    closing.push(() => up.close());
    const gw = await gateway(configWithListen({}, `  plain:
    match: { hosts: ["api.plain.test:80"] }
    target: ${up.url}
    allowPrivate: true
    credentials: { type: header, header: X-Api-Key, value: plain-upstream-key-31 }
`));
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', 'acme-secret-key-1') });
    try {
      const res = await request('http://api.plain.test/echo?x=1', { dispatcher: agent });
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toMatchObject({ url: '/echo?x=1', headers: { 'x-api-key': 'plain-upstream-key-31' } });
    } finally {
      await agent.close();
    }
    expect(gw.logs.find((l) => l.msg === 'request' && l.form === 'tunnel')).toMatchObject({ upstream: 'plain', status: 200, path: '/echo?x=1' });
  });

  it('checks every request in a tunnel against the config in force: a reload that turns interception off ends it', async () => {
    const up = await https();
    const upstreams = (intercept: boolean) => `  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${up.url}
    ca: ${up.caPath}
    allowPrivate: true
    intercept: ${intercept}
`;
    const gw = await gateway(configWithListen({}, upstreams(true)));
    const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { ca: string } };
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', 'acme-secret-key-1'), requestTls: { ca: readFileSync(status.tls.ca, 'utf8') } });
    try {
      const before = await request('https://api.twilio.com/a', { dispatcher: agent });
      expect(before.statusCode).toBe(200);
      await before.body.dump();
      writeFileSync(gw.configPath, configWithListen({}, upstreams(false)));
      expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
      const after = await request('https://api.twilio.com/b', { dispatcher: agent });
      expect(after.statusCode).toBe(403);
      expect(after.headers.connection).toBe('close');
      expect(await after.body.json()).toMatchObject({ error: 'destination_not_allowed' });
    } finally {
      await agent.close();
    }
  });

  it('a drain closes idle intercepted connections at once and cuts blind tunnels when drainTimeout runs out', async () => {
    const up = await https();
    const gw = await startGateway(
      configWithListen({ drainTimeout: '500ms' }, `${blind(up)}  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${up.url}
    ca: ${up.caPath}
    allowPrivate: true
`),
    );
    const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { ca: string } };
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', 'acme-secret-key-1'), requestTls: { ca: readFileSync(status.tls.ca, 'utf8') } });
    const res = await request('https://api.twilio.com/a', { dispatcher: agent });
    await res.body.dump();
    const tunnel = await connectTo(gw.port, 'api.example.com:443');
    expect(tunnel.status).toBe(200);
    const tunnelClosed = once(tunnel.socket, 'close');
    const started = Date.now();
    await gw.close();
    await tunnelClosed;
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(gw.logs.some((l) => l.msg === 'drain timeout reached; closing the remaining connections')).toBe(true);
    // The idle intercepted connection went at once, well before the drain timeout cut the blind one.
    const tunnelLine = (mode: string) => gw.logs.find((l) => l.msg === 'tunnel' && l.mode === mode);
    await until(() => tunnelLine('tunnel') !== undefined);
    const intercepted = tunnelLine('intercept');
    const blindLine = tunnelLine('tunnel');
    expect((intercepted!.time as number) - started).toBeLessThan(300);
    expect((blindLine!.time as number) - started).toBeGreaterThanOrEqual(450);
    await agent.close();
  });

  it('survives clients that reset their connection: after a refusal, after "200", while a blind tunnel connects', async () => {
    const up = await https();
    const gw = await gateway(configWithListen({}, `${blind(up)}  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${up.url}
    ca: ${up.caPath}
    allowPrivate: true
`));
    const reset = async (authority: string, headers: Record<string, string>, when: 'answered' | 'sent') => {
      const req = httpRequest({ host: '127.0.0.1', port: gw.port, method: 'CONNECT', path: authority, headers });
      if (when === 'sent') req.once('socket', (socket: Socket) => socket.once('connect', () => setImmediate(() => socket.resetAndDestroy())));
      req.on('error', () => undefined);
      req.end();
      if (when === 'answered') {
        const [, socket] = (await once(req, 'connect')) as [IncomingMessage, Socket];
        socket.resetAndDestroy();
      }
    };
    await reset('api.twilio.com:443', { 'proxy-authorization': proxyAuth('acme', 'wrong') }, 'answered');
    await reset('api.twilio.com:443', ACME, 'answered');
    for (let i = 0; i < 5; i++) await reset('api.example.com:443', ACME, 'sent');
    // Still serving; the intercepted tunnel reset before its handshake is logged as the client's leaving.
    await until(() => gw.logs.some((l) => l.msg === 'tunnel' && l.mode === 'intercept' && l.status === 499));
    const next = await connectTo(gw.port, 'api.example.com:443');
    expect(next.status).toBe(200);
    next.socket.destroy();
  });

  it('closes the connection of a refused CONNECT even when the client keeps it open', async () => {
    const up = await https();
    const gw = await gateway(configWithListen({}, blind(up)));
    const req = httpRequest({ host: '127.0.0.1', port: gw.port, method: 'CONNECT', path: 'api.example.com:443', headers: { 'proxy-authorization': proxyAuth('acme', 'wrong') } });
    req.end();
    const [res, socket] = (await once(req, 'connect')) as [IncomingMessage, Socket];
    expect(res.statusCode).toBe(407);
    // The client neither reads on nor closes; the gateway closes its side all the same.
    await once(socket, 'close');
  });

  it('cuts blind tunnels a reload no longer allows (tenant removed), and keeps the others', async () => {
    const up = await https();
    const yaml = configWithListen({}, blind(up));
    const gw = await gateway(yaml);
    const acme = await connectTo(gw.port, 'api.example.com:443');
    const globex = await connectTo(gw.port, 'api.example.com:443', { 'proxy-authorization': proxyAuth('globex', 'globex-secret-key-2') });
    expect([acme.status, globex.status]).toEqual([200, 200]);
    const acmeClosed = once(acme.socket, 'close');
    writeFileSync(gw.configPath, yaml.replace('  acme: { key: acme-secret-key-1 }\n', ''));
    expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    await acmeClosed;
    expect(globex.socket.destroyed).toBe(false);
    expect(gw.logs.some((l) => l.msg === 'closed blind tunnels the new config no longer allows' && l.tunnels === 1)).toBe(true);
    globex.socket.destroy();
  });

  it("answers 407 and closes an intercepted tunnel whose tenant's key a reload revoked", async () => {
    const up = await https();
    const yaml = configWithListen({}, `  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${up.url}
    ca: ${up.caPath}
    allowPrivate: true
`);
    const gw = await gateway(yaml);
    const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { ca: string } };
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', 'acme-secret-key-1'), requestTls: { ca: readFileSync(status.tls.ca, 'utf8') } });
    try {
      const before = await request('https://api.twilio.com/a', { dispatcher: agent });
      await before.body.dump();
      writeFileSync(gw.configPath, yaml.replace('acme-secret-key-1', 'acme-new-key-2b7a'));
      expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
      const after = await request('https://api.twilio.com/b', { dispatcher: agent });
      expect(after.statusCode).toBe(407);
      expect(after.headers.connection).toBe('close');
      await after.body.dump();
    } finally {
      await agent.close();
    }
  });

  it('without a usable CA it still starts: intercepted CONNECTs get 503 tls_unavailable, other traffic flows', async () => {
    const up = await https();
    const dir = tempDir();
    writeFileSync(join(dir, 'not-a-folder'), 'x');
    const gw = await gateway(
      configWithListen({}, `  twilio:
    match: { hosts: [api.twilio.com], prefix: /twilio }
    target: ${up.url}
    ca: ${up.caPath}
    allowPrivate: true
`).replace('tenants:', `tls: { caDir: ${join(dir, 'not-a-folder', 'ca')} }\ntenants:`),
    );
    expect(gw.logs.some((l) => l.level === 50 && String(l.msg).startsWith('no gateway CA'))).toBe(true);
    const refused = await connectTo(gw.port, 'api.twilio.com:443');
    expect(refused.status).toBe(503);
    expect(refused.body).toContain('tls_unavailable');
    const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { error: string } };
    expect(status.tls.error).toContain('not-a-folder');
    const res = await request(`${gw.proxyUrl}/twilio/x`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('will not start with a CA key that other users can read', async () => {
    const dir = tempDir();
    const caDir = join(dir, 'ca');
    mkdirSync(caDir, { recursive: true });
    const up = await https();
    const yaml = configWithListen({}, `  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${up.url}
    allowPrivate: true
`).replace('tenants:', `tls: { caDir: ${caDir} }\ntenants:`);
    // The first start creates the CA; someone then loosens the key's mode.
    const first = await Gateway.start({ configPath: writeConfig(yaml, dir), env: {}, watch: false, logDestination: { write: () => undefined } });
    await first.shutdown();
    chmodSync(join(caDir, 'ca.key'), 0o644);
    await expect(Gateway.start({ configPath: join(dir, 'routes.yaml'), env: {}, watch: false, logDestination: { write: () => undefined } })).rejects.toThrow(
      /ca\.key is readable by other users \(mode 0644\); run: chmod 600/,
    );
  });
});
