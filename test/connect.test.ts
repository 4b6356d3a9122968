/**
 * HTTPS_PROXY end to end with real clients: curl, undici's ProxyAgent and EnvHttpProxyAgent, and
 * the official twilio SDK reach a local HTTPS fake of api.twilio.com (its own test CA) through the
 * gateway, which intercepts the CONNECT with its CA, applies the limits and injects the
 * credentials. match.hosts lists the real host names; only the targets point at 127.0.0.1, so no
 * client ever resolves or contacts them. Also: refusals of CONNECT (407, 403, 400), blind tunnels
 * and their connection limit, and the leaf cache.
 */
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { promisify } from 'node:util';
import { EnvHttpProxyAgent, fetch, ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { proxyAuth, startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { startHttpsUpstream, type HttpsUpstream } from './helpers/https-upstream.js';
import { until } from './helpers/wait.js';

const run = promisify(execFile);
const ACCOUNT = 'AC00000000000000000000000000000001';
const AUTH_TOKEN = 'real-twilio-auth-token-77aa';
const BASIC = `Basic ${Buffer.from(`${ACCOUNT}:${AUTH_TOKEN}`).toString('base64')}`;
const ACME_KEY = 'acme-secret-key-1';
const MESSAGES = `/2010-04-01/Accounts/${ACCOUNT}/Messages.json`;

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
}

/** The fake Twilio: 401 unless the gateway injected the real Basic credentials; a message resource for POST Messages.json. */
function fakeTwilio(seen: Seen[]) {
  return (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.headers.authorization !== BASIC) {
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ code: 20003, message: 'Authenticate', status: 401 }));
        return;
      }
      const form = new URLSearchParams(Buffer.concat(chunks).toString());
      res.writeHead(req.method === 'POST' ? 201 : 200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          sid: 'SM00000000000000000000000000000001',
          account_sid: ACCOUNT,
          to: form.get('To'),
          from: form.get('From'),
          body: form.get('Body'),
          status: 'queued',
          path: req.url,
        }),
      );
    });
  };
}

/** Sends a CONNECT with Node's own client and returns the gateway's answer (the socket stays open on 200). */
async function connectTo(port: number, authority: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: IncomingHttpHeaders; socket: Socket }> {
  const req = httpRequest({ host: '127.0.0.1', port, method: 'CONNECT', path: authority, headers });
  req.end();
  const [res, socket] = (await once(req, 'connect')) as [IncomingMessage, Socket];
  return { status: res.statusCode ?? 0, headers: res.headers, socket };
}

const acme = { 'proxy-authorization': proxyAuth('acme', ACME_KEY) };

describe('HTTPS_PROXY: intercepted CONNECT', () => {
  let twilio: HttpsUpstream;
  let plain: HttpsUpstream;
  const seen: Seen[] = [];
  let gw: TestGateway;
  let gatewayCa: string;
  let gatewayCaPath: string;

  beforeAll(async () => {
    twilio = await startHttpsUpstream(fakeTwilio(seen));
    plain = await startHttpsUpstream();
    gw = await startGateway(
      testConfig(`  twilio:
    match: { hosts: [api.twilio.com] }
    target: ${twilio.url}
    ca: ${twilio.caPath}
    allowPrivate: true
    credentials: { type: basic, username: ${ACCOUNT}, password: ${AUTH_TOKEN} }
    limits:
      - name: slow-path
        match: { path: /limited }
        rate: 1/min
        burst: 1
  blind:
    match: { hosts: [api.example.com] }
    target: ${plain.url}
    intercept: false
    allowPrivate: true
    connections: 1
`),
    );
    const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { ca: string } };
    gatewayCaPath = status.tls.ca;
    gatewayCa = await import('node:fs').then((fs) => fs.readFileSync(gatewayCaPath, 'utf8'));
  });
  afterAll(async () => {
    await gw.close();
    await twilio.close();
    await plain.close();
  });

  it('curl --proxy … --cacert <gateway CA> https://api.twilio.com/… gets the fake’s answer with the injected credential', async () => {
    const before = seen.length;
    const { stdout } = await run(
      'curl',
      ['-sS', '--proxy', `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`, '--cacert', gatewayCaPath,
        '-u', 'dummy:dummy', '--data-urlencode', 'To=+15005550006', '--data-urlencode', 'From=+15005550001', '--data-urlencode', 'Body=hi',
        '-w', '\n%{http_code}', `https://api.twilio.com${MESSAGES}`],
      { env: { PATH: process.env.PATH } },
    );
    const [body, code] = stdout.split('\n');
    expect(code).toBe('201');
    expect(JSON.parse(body!)).toMatchObject({ to: '+15005550006', body: 'hi', path: MESSAGES });
    expect(seen.slice(before)).toEqual([{ method: 'POST', url: MESSAGES, authorization: BASIC }]);
    // The account SID in the path is the configured username, so the log redacts it like any credential.
    const isMessage = (l: Record<string, unknown>) => l.msg === 'request' && l.form === 'tunnel' && l.method === 'POST';
    await until(() => gw.logs.some(isMessage));
    expect(gw.logs.find(isMessage)).toMatchObject({ tenant: 'acme', upstream: 'twilio', status: 201, path: '/2010-04-01/Accounts/[REDACTED]/Messages.json' });
  });

  it('keep-alive: one tunnel carries many requests, each through the pipeline (curl, ten URLs)', async () => {
    const tunnels = () => gw.logs.filter((l) => l.msg === 'tunnel');
    const before = { seen: seen.length, tunnels: tunnels().length };
    const urls = Array.from({ length: 10 }, (_, i) => `https://api.twilio.com/2010-04-01/Accounts/${ACCOUNT}/Calls.json?page=${i}`);
    const { stdout } = await run(
      'curl',
      ['-sS', '--proxy', `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`, '--cacert', gatewayCaPath, '-w', '%{http_code}\n', ...urls.flatMap((url) => ['-o', '/dev/null', url])],
      { env: { PATH: process.env.PATH } },
    );
    expect(stdout.trim().split('\n')).toEqual(Array(10).fill('200'));
    expect(seen.slice(before.seen).map((s) => s.authorization)).toEqual(Array(10).fill(BASIC));
    await until(() => tunnels().length === before.tunnels + 1);
    expect(tunnels().at(-1)).toMatchObject({ method: 'CONNECT', tenant: 'acme', upstream: 'twilio', mode: 'intercept', status: 200, path: 'api.twilio.com:443' });
  });

  it('undici ProxyAgent: twenty requests, the credential injected in each, over fewer tunnels than requests', async () => {
    const tunnels = () => gw.logs.filter((l) => l.msg === 'tunnel').length;
    const before = { seen: seen.length, tunnels: tunnels() };
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', ACME_KEY), requestTls: { ca: gatewayCa } });
    try {
      for (let i = 0; i < 20; i++) {
        const res = await request(`https://api.twilio.com/2010-04-01/Accounts/${ACCOUNT}/Calls.json?page=${i}`, { dispatcher: agent });
        expect(res.statusCode).toBe(200);
        await res.body.json();
      }
      // undici opens a second connection early on by itself; the rest reuse them.
      const status = (await (await fetch(`${gw.adminUrl}/status`)).json()) as { tunnels: { upstreams: Record<string, { intercepted: number }> } };
      expect(status.tunnels.upstreams.twilio?.intercepted).toBeGreaterThanOrEqual(1);
      expect(status.tunnels.upstreams.twilio?.intercepted).toBeLessThanOrEqual(2);
    } finally {
      await agent.close();
    }
    expect(seen.slice(before.seen).map((s) => s.authorization)).toEqual(Array(20).fill(BASIC));
    await until(() => tunnels() > before.tunnels);
    expect(tunnels() - before.tunnels).toBeLessThanOrEqual(2);
  });

  it('undici EnvHttpProxyAgent with HTTPS_PROXY set, through fetch', async () => {
    const saved = { HTTPS_PROXY: process.env.HTTPS_PROXY, NO_PROXY: process.env.NO_PROXY, no_proxy: process.env.no_proxy };
    process.env.HTTPS_PROXY = `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`;
    delete process.env.NO_PROXY;
    delete process.env.no_proxy;
    const agent = new EnvHttpProxyAgent({ requestTls: { ca: gatewayCa } });
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
    try {
      const res = await fetch(`https://api.twilio.com${MESSAGES}`, { method: 'POST', body: new URLSearchParams({ To: '+1', From: '+2', Body: 'env' }), dispatcher: agent });
      expect(res.status).toBe(201);
      expect(await res.json()).toMatchObject({ body: 'env' });
    } finally {
      await agent.close();
    }
  });

  it('the official twilio SDK (HTTP_PROXY + NODE_EXTRA_CA_CERTS, dummy credentials) sends a message through the gateway', async () => {
    const before = seen.length;
    const script = `
      import twilio from 'twilio';
      const client = twilio('AC0000000000000000000000000000dead', 'dummy-token-the-sdk-holds');
      const message = await client.messages.create({ to: '+15005550006', from: '+15005550001', body: 'sent by the SDK' });
      console.log(JSON.stringify({ sid: message.sid, status: message.status, body: message.body }));`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
      env: { PATH: process.env.PATH, HTTP_PROXY: `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`, NODE_EXTRA_CA_CERTS: gatewayCaPath },
      timeout: 20_000,
    });
    expect(JSON.parse(stdout)).toEqual({ sid: 'SM00000000000000000000000000000001', status: 'queued', body: 'sent by the SDK' });
    // The fake saw the gateway's credentials, not the SDK's dummy ones.
    expect(seen.slice(before)).toEqual([
      { method: 'POST', url: '/2010-04-01/Accounts/AC0000000000000000000000000000dead/Messages.json', authorization: BASIC },
    ]);
  });

  it('a limited request inside the tunnel gets 429 with Retry-After', async () => {
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', ACME_KEY), requestTls: { ca: gatewayCa } });
    try {
      const first = await request('https://api.twilio.com/limited', { dispatcher: agent });
      await first.body.dump();
      const second = await request('https://api.twilio.com/limited', { dispatcher: agent });
      expect(first.statusCode).toBe(200);
      expect(second.statusCode).toBe(429);
      expect(Number(second.headers['retry-after'])).toBeGreaterThan(50);
      expect(await second.body.json()).toMatchObject({ error: 'rate_limited', upstream: 'twilio', tenant: 'acme' });
    } finally {
      await agent.close();
    }
  });

  it('refuses a CONNECT for an unknown host (403), a bad tenant key (407), and odd ports, IP literals, names and bodies', async () => {
    const unknown = await connectTo(gw.port, 'api.unknown-host.test:443', acme);
    expect(unknown.status).toBe(403);
    const badKey = await connectTo(gw.port, 'api.twilio.com:443', { 'proxy-authorization': proxyAuth('acme', 'wrong-key-4d1f9') });
    expect(badKey.status).toBe(407);
    expect(badKey.headers['proxy-authenticate']).toBe('Basic realm="sluice"');
    const noKey = await connectTo(gw.port, 'api.twilio.com:443');
    expect(noKey.status).toBe(407);
    expect((await connectTo(gw.port, 'api.twilio.com:8443', acme)).status).toBe(403);
    expect((await connectTo(gw.port, '10.1.2.3:443', acme)).status).toBe(403);
    expect((await connectTo(gw.port, `${'a'.repeat(64)}.example.com:443`, acme)).status).toBe(400);
    expect((await connectTo(gw.port, 'api.twilio.com', acme)).status).toBe(400);
    expect((await connectTo(gw.port, 'api.twilio.com:443', { ...acme, 'content-length': '5' })).status).toBe(400);
    // A key pasted into the target stays out of the log too (the wrong key above was never logged).
    expect((await connectTo(gw.port, 'acme:pasted-key-8c2e@api.twilio.com:443', acme)).status).toBe(400);
    await until(() => gw.logs.some((l) => l.msg === 'tunnel' && l.path === '[REDACTED]@api.twilio.com:443'));
    expect(gw.rawLogs.join('\n')).not.toMatch(/wrong-key-4d1f9|pasted-key-8c2e/);
  });

  it('a client that does not trust the gateway CA fails its handshake, and the gateway says so in its log', async () => {
    const curl = run('curl', ['-sS', '--proxy', `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`, 'https://api.twilio.com/x'], { env: { PATH: process.env.PATH } });
    await expect(curl).rejects.toMatchObject({ code: 60 }); // curl: the peer's certificate cannot be authenticated
    await until(() => gw.logs.some((l) => l.msg === 'TLS handshake with the client failed' && l.upstream === 'twilio'));
  });

  it('blind tunnel (intercept: false): end-to-end TLS to the target, counted against connections', async () => {
    const { stdout } = await run(
      'curl',
      ['-sS', '--proxy', `http://acme:${ACME_KEY}@127.0.0.1:${gw.port}`, '--cacert', plain.caPath, 'https://api.example.com/echo'],
      { env: { PATH: process.env.PATH } },
    );
    // The upstream's own certificate, and nothing injected or rewritten: the gateway saw no request.
    expect(JSON.parse(stdout)).toMatchObject({ method: 'GET', url: '/echo', headers: { host: 'api.example.com' } });
    type Tunnels = { tunnels: { upstreams: Record<string, { blind: number }> } };
    const blindTunnels = async () => ((await (await fetch(`${gw.adminUrl}/status`)).json()) as Tunnels).tunnels.upstreams.blind?.blind ?? 0;
    // curl has exited; the gateway hears its tunnel close a moment later (its one place frees then).
    await until(async () => (await blindTunnels()) === 0);
    const held = await connectTo(gw.port, 'api.example.com:443', acme);
    expect(held.status).toBe(200);
    try {
      expect(await blindTunnels()).toBe(1);
      const second = await connectTo(gw.port, 'api.example.com:443', acme);
      expect(second.status).toBe(429);
      expect(second.headers['retry-after']).toBe('1');
    } finally {
      held.socket.destroy();
    }
    await until(() => gw.logs.some((l) => l.msg === 'tunnel' && l.mode === 'tunnel' && l.status === 200 && (l.bytesIn as number) > 0));
  });

  it('reuses leaf certificates: new tunnels to one host issue nothing new', async () => {
    const stats = async () =>
      ((await (await fetch(`${gw.adminUrl}/status`)).json()) as { tls: { leaves: { issued: number; hits: number } } }).tls.leaves;
    const before = await stats();
    for (let i = 0; i < 3; i++) {
      const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', ACME_KEY), requestTls: { ca: gatewayCa } });
      const res = await request('https://api.twilio.com/x', { dispatcher: agent });
      await res.body.dump();
      await agent.close();
    }
    const after = await stats();
    expect(after.issued).toBe(before.issued);
    expect(after.hits).toBeGreaterThanOrEqual(before.hits + 3);
  });
});
