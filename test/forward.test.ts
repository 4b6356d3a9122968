import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { proxyAuth, startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { configWithListen } from './helpers/raw.js';
import { startUpstream, type EchoBody, type FakeUpstream } from './helpers/upstream.js';

const run = promisify(execFile);
const ACME = proxyAuth('acme', 'acme-secret-key-1');

let upstream: FakeUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startUpstream();
  gw = await startGateway(
    testConfig(`
  echo:
    match: { hosts: [api.example.test, "*.wild.test"], prefix: /echo }
    target: ${upstream.url}/base
    allowPrivate: true
    credentials: { type: basic, username: AC123, password: upstream-password-xyz }
  plain:
    match: { prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
  header:
    match: { hosts: [header.example.test] }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: header, header: X-Api-Key, value: hdr-secret-value, format: "Token {token}" }
`),
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('base-URL mode', () => {
  it('sends /PREFIX/rest to target + /rest with the query kept', async () => {
    const res = await request(`${gw.proxyUrl}/echo/v1/things?x=1&y=%2F`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(res.statusCode).toBe(200);
    const body = (await res.body.json()) as EchoBody;
    expect(body.url).toBe('/base/v1/things?x=1&y=%2F');
    expect(body.headers.host).toBe(`127.0.0.1:${upstream.port}`);
  });

  it('forwards the path byte for byte (no dot-segment resolution or re-encoding)', async () => {
    const { stdout } = await run('curl', ['-sS', '--path-as-is', '-H', 'x-sluice-key: acme:acme-secret-key-1', `${gw.proxyUrl}/plain/a/%7Euser/./b/../c?q=a%20b`]);
    expect((JSON.parse(stdout) as EchoBody).url).toBe('/a/%7Euser/./b/../c?q=a%20b');
  });

  it('maps the bare prefix to the target root', async () => {
    const res = await request(`${gw.proxyUrl}/plain?only=query`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(((await res.body.json()) as EchoBody).url).toBe('/?only=query');
  });

  it('answers 403 destination_not_allowed for a prefix no upstream has', async () => {
    const res = await request(`${gw.proxyUrl}/plainly/x`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(res.statusCode).toBe(403);
    expect(await res.body.json()).toMatchObject({ error: 'destination_not_allowed' });
    expect(upstream.arrivals.some((a) => a.url.includes('plainly'))).toBe(false);
  });
});

describe('absolute-form (HTTP_PROXY) mode', () => {
  it('routes by match.hosts through undici ProxyAgent and injects the Basic credential', async () => {
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: ACME, proxyTunnel: false });
    try {
      const res = await request('http://api.example.test/v1/calls?a=b', { dispatcher: agent, headers: { authorization: 'Bearer client-own' } });
      expect(res.statusCode).toBe(200);
      const body = (await res.body.json()) as EchoBody;
      expect(body.url).toBe('/base/v1/calls?a=b');
      expect(body.headers.authorization).toBe(`Basic ${Buffer.from('AC123:upstream-password-xyz').toString('base64')}`);
      expect(body.rawHeaders.filter((h) => h.toLowerCase() === 'authorization')).toHaveLength(1);
      expect(body.headers['proxy-authorization']).toBeUndefined();
    } finally {
      await agent.close();
    }
  });

  it('matches *.wildcard hosts and a host with an explicit port', async () => {
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: ACME, proxyTunnel: false });
    try {
      const a = await request('http://eu.wild.test/x', { dispatcher: agent });
      expect(a.statusCode).toBe(200);
      await a.body.dump();
      const b = await request('http://api.example.test:80/y', { dispatcher: agent });
      expect(b.statusCode).toBe(200);
      await b.body.dump();
      const c = await request('http://wild.test/z', { dispatcher: agent });
      expect(c.statusCode).toBe(403);
      await c.body.dump();
    } finally {
      await agent.close();
    }
  });

  it('works with curl -x, and formats header credentials', async () => {
    const { stdout } = await run('curl', ['-sS', '-x', `http://acme:acme-secret-key-1@127.0.0.1:${gw.port}`, 'http://header.example.test/h?q=1']);
    const body = JSON.parse(stdout) as EchoBody;
    expect(body.url).toBe('/h?q=1');
    expect(body.headers['x-api-key']).toBe('Token hdr-secret-value');
  });

  it('answers 403 destination_not_allowed for any other host (never an open relay)', async () => {
    const { stdout } = await run('curl', ['-sS', '-w', '\\n%{http_code}', '-x', `http://acme:acme-secret-key-1@127.0.0.1:${gw.port}`, 'http://127.0.0.1:1/']);
    const [body, code] = stdout.split('\n');
    expect(code).toBe('403');
    expect(JSON.parse(body!)).toMatchObject({ error: 'destination_not_allowed' });
  });
});

describe('headers', () => {
  it('strips hop-by-hop headers both ways and adds Via and X-Forwarded-For', async () => {
    const headers = [
      'x-sluice-key: acme:acme-secret-key-1',
      'connection: keep-alive, x-client-hop',
      'x-client-hop: must-not-pass',
      'keep-alive: timeout=5',
      'te: trailers',
      'upgrade: h2c',
      'proxy-connection: keep-alive',
      `proxy-authorization: ${ACME}`,
      'x-sluice-priority: high',
      'x-forwarded-for: 203.0.113.9',
      'x-end-to-end: kept',
    ];
    const { stdout } = await run('curl', ['-sS', '-D', '-', ...headers.flatMap((h) => ['-H', h]), `${gw.proxyUrl}/plain/hop`]);
    const [head, json] = stdout.split('\r\n\r\n');
    const body = JSON.parse(json!) as EchoBody;
    for (const h of ['x-client-hop', 'keep-alive', 'te', 'upgrade', 'proxy-connection', 'proxy-authorization', 'x-sluice-key', 'x-sluice-priority']) {
      expect(body.headers[h], h).toBeUndefined();
    }
    expect(body.headers['x-end-to-end']).toBe('kept');
    expect(body.headers.via).toBe('1.1 sluice');
    expect(body.headers['x-forwarded-for']).toBe('203.0.113.9, 127.0.0.1');
    const responseHeaders = head!.toLowerCase();
    expect(responseHeaders).not.toContain('x-upstream-hop');
    expect(responseHeaders).not.toContain('timeout=77');
    expect(responseHeaders).toContain('x-upstream-end: kept');
    expect(responseHeaders).toContain('via: 1.1 sluice');
  });
});

describe('streaming', () => {
  const TEN_MB = 10 * 1024 * 1024;
  const SIXTY_FOUR_MB = 64 * 1024 * 1024;
  const chunk = Buffer.alloc(256 * 1024, 0x62);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  it('streams a 10 MB upload and a 10 MB download intact', async () => {
    const expected = createHash('sha256');
    for (let i = 0; i < TEN_MB / chunk.length; i++) expected.update(chunk);
    const up = await request(`${gw.proxyUrl}/plain/upload`, {
      method: 'POST',
      headers: { 'x-sluice-key': 'acme:acme-secret-key-1' },
      body: Readable.from((function* () {
        for (let i = 0; i < TEN_MB / chunk.length; i++) yield chunk;
      })()),
    });
    expect(up.statusCode).toBe(200);
    expect(await up.body.json()).toEqual({ length: TEN_MB, sha256: expected.digest('hex') });

    const down = await request(`${gw.proxyUrl}/plain/bytes/${TEN_MB}`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    let received = 0;
    for await (const piece of down.body) received += (piece as Buffer).length;
    expect(received).toBe(TEN_MB);
  });

  // A buffering gateway would read the whole body from one side while the other side stalls.
  // With streaming, a stalled reader stops the writer after a few socket buffers' worth.
  it('does not buffer a download: a client that stops reading stops the upstream', async () => {
    const before = upstream.bytesWritten();
    const down = await request(`${gw.proxyUrl}/plain/bytes/${SIXTY_FOUR_MB}`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    await sleep(700); // the client reads nothing meanwhile
    const written = upstream.bytesWritten() - before;
    down.body.destroy();
    expect(written).toBeGreaterThan(0);
    expect(written).toBeLessThan(SIXTY_FOUR_MB / 2);
  });

  it('does not buffer an upload: an upstream that stops reading stops the client', async () => {
    let produced = 0;
    const aborter = new AbortController();
    const pending = request(`${gw.proxyUrl}/plain/hang`, {
      method: 'POST',
      signal: aborter.signal,
      headers: { 'x-sluice-key': 'acme:acme-secret-key-1' },
      body: Readable.from((function* () {
        for (let i = 0; i < SIXTY_FOUR_MB / chunk.length; i++) {
          produced += chunk.length;
          yield chunk;
        }
      })()),
    }).catch(() => undefined);
    await sleep(700); // the upstream reads nothing meanwhile
    aborter.abort();
    await pending;
    expect(produced).toBeGreaterThan(0);
    expect(produced).toBeLessThan(SIXTY_FOUR_MB / 2);
  });
});

describe('gateway memory', () => {
  it('stays flat while 200 MB go each way through it', async () => {
    const child = await spawnGateway(configWithListen({ maxBodySize: '1gb' }, `
  plain:
    match: { prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
`));
    try {
      const MB = 1024 * 1024;
      const chunk = Buffer.alloc(256 * 1024, 0x63);
      const headers = { 'x-sluice-key': 'acme:acme-secret-key-1' };
      const roundTrip = async (bytes: number) => {
        const up = await request(`${child.proxyUrl}/plain/upload`, {
          method: 'POST',
          headers,
          body: Readable.from((function* () {
            for (let i = 0; i < bytes / chunk.length; i++) yield chunk;
          })()),
        });
        expect(((await up.body.json()) as { length: number }).length).toBe(bytes);
        const down = await request(`${child.proxyUrl}/plain/bytes/${bytes}`, { headers });
        let received = 0;
        for await (const piece of down.body) received += (piece as Buffer).length;
        expect(received).toBe(bytes);
      };
      await roundTrip(10 * MB); // warm-up: code paths, buffers and heap at their working size
      const warm = child.memory().peakBytes;
      await roundTrip(200 * MB);
      // Buffering either body would add at least 200 MB; streaming leaves only allocator slack.
      expect(child.memory().peakBytes - warm).toBeLessThan(100 * MB);
    } finally {
      child.child.kill('SIGTERM');
      await child.exited;
    }
  });
});

describe('credentials', () => {
  it('answers 503 credentials_missing when the secrets are unset, and still serves the rest', async () => {
    const other = await startGateway(
      testConfig(`
  twilio:
    match: { prefix: /twilio }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: basic, username: \${SID}, password: \${TOKEN} }
  open:
    match: { prefix: /open }
    target: ${upstream.url}
    allowPrivate: true
`),
    );
    try {
      const warning = other.logs.find((l) => String(l.msg).includes('credentials'));
      expect(warning?.msg).toMatch(/upstreams\.twilio\.credentials: environment variables SID, TOKEN are not set/);
      const res = await request(`${other.proxyUrl}/twilio/x`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
      expect(res.statusCode).toBe(503);
      expect(await res.body.json()).toMatchObject({ error: 'credentials_missing', upstream: 'twilio' });
      const ok = await request(`${other.proxyUrl}/open/x`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
      expect(ok.statusCode).toBe(200);
      await ok.body.dump();
    } finally {
      await other.close();
    }
  });
});

describe('request log', () => {
  it('writes one line per request with tenant, upstream, method, path, status and timings', async () => {
    const res = await request(`${gw.proxyUrl}/plain/logged?token=abc123secret&page=2`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    await res.body.dump();
    await new Promise((r) => setTimeout(r, 20));
    const line = gw.logs.find((l) => typeof l.path === 'string' && l.path.startsWith('/plain/logged'));
    expect(line).toMatchObject({ tenant: 'acme', upstream: 'plain', method: 'GET', status: 200, path: '/plain/logged?token=[REDACTED]&page=2' });
    expect(line?.upstreamMs).toBeTypeOf('number');
    expect(line?.gatewayMs).toBeTypeOf('number');
  });
});
