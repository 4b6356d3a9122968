import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { proxyAuth, startGateway, type TestGateway } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { configWithListen, rawExchange, type RawExchange } from './helpers/raw.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const KEY = 'x-sluice-key: acme:acme-secret-key-1';
const LIMITS = { maxHeaderSize: '8kb', maxBodySize: '64kb', headersTimeout: '500ms' };

let upstream: FakeUpstream;
let gw: TestGateway;

const upstreams = () => `
  plain:
    match: { hosts: [api.example.test], prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
  small:
    match: { prefix: /small }
    target: ${upstream.url}
    allowPrivate: true
    maxBodySize: 1kb
`;

beforeAll(async () => {
  upstream = await startUpstream();
  gw = await startGateway(configWithListen(LIMITS, upstreams()));
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

/** The exchange got a whole JSON error response with this status and code (and a message). */
function expectJsonError(exchange: RawExchange, status: number, code: string): void {
  const res = exchange.response;
  expect(res, `no complete response; got ${JSON.stringify(exchange.raw.toString('latin1').slice(0, 200))}`).toBeDefined();
  expect(res!.status).toBe(status);
  expect(res!.headers['content-type']).toMatch(/^application\/json/);
  const body = JSON.parse(res!.body) as { error?: unknown; message?: unknown };
  expect(body.error).toBe(code);
  expect(body.message).toBeTypeOf('string');
  expect(String(body.message).length).toBeGreaterThan(0);
}

function arrived(fragment: string): boolean {
  return upstream.arrivals.some((a) => a.url.includes(fragment));
}

async function gatewayStillServes(url: string): Promise<void> {
  const res = await request(url, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
  expect(res.statusCode).toBe(200);
  await res.body.dump();
}

describe('request lines Node cannot parse', () => {
  it.each([
    ['garbage', 'GARBAGE\r\n\r\n'],
    ['a space inside an absolute URL', 'GET http://exa mple.com/ HTTP/1.1\r\nHost: exa\r\n\r\n'],
    ['an unknown HTTP version', 'GET /plain/x HTTP/7.3\r\nHost: x\r\n\r\n'],
    ['a header name with a space', `GET /plain/x HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n${KEY}\r\n\r\n`],
    ['Content-Length and Transfer-Encoding together', `POST /plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n${KEY}\r\n\r\n0\r\n\r\n`],
    ['a negative Content-Length', `POST /plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n${KEY}\r\n\r\n`],
    ['binary junk', Buffer.from([0x00, 0xff, 0x13, 0x37, 0x0d, 0x0a, 0x0d, 0x0a])],
  ])('%s → 400 bad_request as JSON, then the connection closes', async (_name, input) => {
    const exchange = await rawExchange(gw.port, input, { untilClose: true });
    expect(exchange.timedOut).toBe(false);
    expectJsonError(exchange, 400, 'bad_request');
    expect(exchange.response!.headers.connection).toBe('close');
    expect(exchange.closed).toBe(true);
  });
});

describe('garbage pipelined behind a valid request', () => {
  it('the 400 for the garbage does not take the place of the valid request’s response', async () => {
    const input = `GET /plain/slow/300?pipelined HTTP/1.1\r\nHost: x\r\n${KEY}\r\n\r\nGARBAGE\r\n\r\n`;
    const exchange = await rawExchange(gw.port, input, { untilClose: true, timeoutMs: 3_000 });
    // HTTP/1.1 answers pipelined requests in order: the first response belongs to the valid request.
    expect(exchange.raw.toString('latin1').slice(0, 200)).toMatch(/^HTTP\/1\.1 200 /);
    expect(JSON.parse(exchange.response!.body)).toEqual({ slept: 300 });
  });
});

describe('request targets the intake refuses', () => {
  it.each([
    ['an ftp:// URL', 'GET ftp://x/intake-ftp HTTP/1.1\r\nHost: x\r\n'],
    ['user info in the URL', 'GET http://user:pw@api.example.test/intake-userinfo HTTP/1.1\r\nHost: api.example.test\r\n'],
    ['an asterisk target', 'OPTIONS * HTTP/1.1\r\nHost: api.example.test\r\n'],
    ['an odd character in the host', 'GET http://api.example.test%2Fevil/intake-host HTTP/1.1\r\nHost: api.example.test\r\n'],
    ['an unclosed IPv6 literal', 'GET http://[::1/intake-v6 HTTP/1.1\r\nHost: x\r\n'],
  ])('%s → 400 bad_request, nothing sent upstream', async (_name, head) => {
    const exchange = await rawExchange(gw.port, `${head}${KEY}\r\n\r\n`);
    expectJsonError(exchange, 400, 'bad_request');
    expect(arrived('intake-')).toBe(false);
  });

  it('an HTTP/1.1 request without a Host header → 400 bad_request as JSON (RFC 9112 3.2)', async () => {
    const exchange = await rawExchange(gw.port, `GET /plain/no-host HTTP/1.1\r\n${KEY}\r\n\r\n`, { untilClose: true });
    expectJsonError(exchange, 400, 'bad_request');
    expect(arrived('no-host')).toBe(false);
  });
});

describe('answers Node would give itself', () => {
  it('an unknown Expect value is refused as JSON (or ignored), never with a bare status line', async () => {
    const exchange = await rawExchange(gw.port, `GET /plain/expect HTTP/1.1\r\nHost: x\r\n${KEY}\r\nExpect: teapot\r\n\r\n`);
    const res = exchange.response;
    expect(res).toBeDefined();
    if (res!.status === 200) return; // ignoring the expectation is allowed too (RFC 9110 10.1.1: MAY answer 417)
    expect(res!.status).toBe(417);
    expect(res!.headers['content-type']).toMatch(/^application\/json/);
    const body = JSON.parse(res!.body) as { error?: unknown; message?: unknown };
    expect(body.error).toBeTypeOf('string');
    expect(body.message).toBeTypeOf('string');
  });
});

describe('header size limit (listen.maxHeaderSize: 8kb)', () => {
  it('answers 431 headers_too_large for a 9 KiB header section (under Node’s 16 KiB default)', async () => {
    const big = `X-Big: ${'a'.repeat(9 * 1024)}\r\n`;
    const exchange = await rawExchange(gw.port, `GET /plain/big-headers HTTP/1.1\r\nHost: x\r\n${KEY}\r\n${big}\r\n`, { untilClose: true });
    expectJsonError(exchange, 431, 'headers_too_large');
    expect(exchange.closed).toBe(true);
    expect(arrived('big-headers')).toBe(false);
  });

  it('also when the oversized headers arrive in small pieces', async () => {
    const pieces = [`GET /plain/big-headers-2 HTTP/1.1\r\nHost: x\r\n${KEY}\r\n`];
    for (let i = 0; i < 20; i++) pieces.push(`X-Piece-${i}: ${'b'.repeat(500)}\r\n`);
    pieces.push('\r\n');
    const exchange = await rawExchange(gw.port, pieces, { delayMs: 2, untilClose: true });
    expectJsonError(exchange, 431, 'headers_too_large');
    expect(arrived('big-headers-2')).toBe(false);
  });

  it('lets a 6 KiB header section through', async () => {
    const res = await request(`${gw.proxyUrl}/plain/fits`, {
      headers: { 'x-sluice-key': 'acme:acme-secret-key-1', 'x-medium': 'c'.repeat(6 * 1024) },
    });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });
});

describe('body size limit', () => {
  it('answers 413 payload_too_large for a Content-Length over listen.maxBodySize, before anything goes upstream', async () => {
    const head = `POST /plain/upload?cl-too-big HTTP/1.1\r\nHost: x\r\n${KEY}\r\nContent-Length: ${64 * 1024 + 1}\r\n\r\n`;
    const exchange = await rawExchange(gw.port, [head, Buffer.alloc(1024, 0x61)]);
    expectJsonError(exchange, 413, 'payload_too_large');
    expect(exchange.response!.headers.connection).toBe('close');
    await new Promise((r) => setTimeout(r, 100));
    expect(arrived('cl-too-big')).toBe(false);
  });

  it('uses the upstream’s own maxBodySize when it has one', async () => {
    const over = await request(`${gw.proxyUrl}/small/upload?small-over`, {
      method: 'POST',
      headers: { 'x-sluice-key': 'acme:acme-secret-key-1' },
      body: Buffer.alloc(1025, 0x61),
    });
    expect(over.statusCode).toBe(413);
    expect(await over.body.json()).toMatchObject({ error: 'payload_too_large', upstream: 'small' });
    expect(arrived('small-over')).toBe(false);

    const at = await request(`${gw.proxyUrl}/small/upload?small-at`, {
      method: 'POST',
      headers: { 'x-sluice-key': 'acme:acme-secret-key-1' },
      body: Buffer.alloc(1024, 0x61),
    });
    expect(at.statusCode).toBe(200);
    expect(await at.body.json()).toMatchObject({ length: 1024 });
  });

  it('answers 413 when a chunked body grows past the limit, and keeps serving', async () => {
    const head = `POST /plain/upload?chunked-too-big HTTP/1.1\r\nHost: x\r\n${KEY}\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const chunk = Buffer.concat([Buffer.from('4000\r\n'), Buffer.alloc(0x4000, 0x62), Buffer.from('\r\n')]);
    // 16 KiB chunks, up to 20 of them (320 KiB); writing stops as soon as the gateway answers.
    const exchange = await rawExchange(gw.port, [head, ...Array.from({ length: 20 }, () => chunk)], { delayMs: 5 });
    expect(exchange.timedOut).toBe(false);
    // /upload answers only after the whole body, so no response can have started: a 413 it is.
    expectJsonError(exchange, 413, 'payload_too_large');
    await gatewayStillServes(`${gw.proxyUrl}/plain/after-chunked`);
  });

  it('forwards a chunked body under the limit intact', async () => {
    const head = `POST /plain/upload?chunked-ok HTTP/1.1\r\nHost: x\r\n${KEY}\r\nTransfer-Encoding: chunked\r\n\r\n`;
    const chunk = Buffer.concat([Buffer.from('4000\r\n'), Buffer.alloc(0x4000, 0x62), Buffer.from('\r\n')]);
    const exchange = await rawExchange(gw.port, [head, chunk, chunk, '0\r\n\r\n'], { delayMs: 5 });
    expect(exchange.response?.status).toBe(200);
    expect(JSON.parse(exchange.response!.body)).toMatchObject({ length: 2 * 0x4000 });
  });
});

describe('slow clients (listen.headersTimeout: 500ms)', () => {
  it('answers 408 request_timeout to a client sending its headers one byte at a time', async () => {
    const text = `GET /plain/slow-client HTTP/1.1\r\nHost: x\r\n${KEY}\r\n\r\n`;
    const exchange = await rawExchange(gw.port, [...text], { delayMs: 40, timeoutMs: 5_000, untilClose: true });
    // The whole header section would take ~2.8 s at this pace; the gateway must not wait for it.
    expect(exchange.timedOut).toBe(false);
    expectJsonError(exchange, 408, 'request_timeout');
    expect(exchange.closed).toBe(true);
    expect(exchange.elapsedMs).toBeGreaterThanOrEqual(400);
    expect(exchange.elapsedMs).toBeLessThan(2_000);
    expect(arrived('slow-client')).toBe(false);
  });

  it('answers 408 to a client that stops in the middle of its headers', async () => {
    const exchange = await rawExchange(gw.port, `GET /plain/stalled HTTP/1.1\r\nHost: x\r\n${KEY}\r\nX-Partial: `, {
      timeoutMs: 5_000,
      untilClose: true,
    });
    expect(exchange.timedOut).toBe(false);
    expectJsonError(exchange, 408, 'request_timeout');
    expect(exchange.elapsedMs).toBeLessThan(2_000);
  });
});

describe('requests the gateway does not serve yet', () => {
  it('answers a CONNECT to a host no upstream lists with 403, and closes the connection', async () => {
    const exchange = await rawExchange(
      gw.port,
      `CONNECT other.test:443 HTTP/1.1\r\nHost: other.test:443\r\nProxy-Authorization: ${proxyAuth('acme', 'acme-secret-key-1')}\r\n\r\n`,
      { untilClose: true },
    );
    expectJsonError(exchange, 403, 'destination_not_allowed');
    expect(exchange.closed).toBe(true);
  });

  it('answers an Upgrade (WebSocket) request with 501 not_implemented', async () => {
    const exchange = await rawExchange(
      gw.port,
      `GET /plain/ws HTTP/1.1\r\nHost: x\r\n${KEY}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`,
      { untilClose: true },
    );
    expectJsonError(exchange, 501, 'not_implemented');
    expect(arrived('/ws')).toBe(false);
  });
});

// ---------------------------------------------------------------------------------------------
// Fuzz: a few thousand random and mangled requests against the built gateway as a child process.

/** mulberry32: a small seeded PRNG, so a failing run can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'HEAD', 'OPTIONS', 'PATCH', 'TRACE', 'CONNECT', 'PRI', 'get', 'GETT', 'G\tET', '', 'M-SEARCH', 'PROPFIND'];
const TARGETS = [
  '/plain/echo', '/plain/echo?x=1&y=%2F', '/plain', '/plain/', '/plain/upload', '/small/upload', '/plain/status/503',
  'http://api.example.test/echo', 'http://API.EXAMPLE.TEST:80/echo?q', 'http://api.example.test', 'https://api.example.test/x',
  'http://other.test/', 'http://', 'http:///x', 'http://exa mple.test/', 'ftp://x/', '*', '', '//', '/%00', '/%zz',
  '/plain/../../etc/passwd', 'http://user:pw@api.example.test/', 'http://[::1/', 'http://[::1]:8080/', 'http://api.example.test:99999/',
  `/plain/${'a'.repeat(3000)}`, '/\u00e9', '/plain/echo#frag', 'api.example.test:443', '/unknown/x',
];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'http/1.1', 'HTTP/1.1 ', 'HTTP/1.', ''];
const HEADERS = [
  'Host: api.example.test', 'Host: api.example.test', 'Host:', 'Host: a\tb', KEY, KEY, 'X-Sluice-Key: acme:wrong',
  'X-Sluice-Key: :', `Proxy-Authorization: ${proxyAuth('acme', 'acme-secret-key-1')}`, 'Proxy-Authorization: Basic !!!',
  'Proxy-Authorization: Bearer x', 'Content-Length: 0', 'Content-Length: 5', 'Content-Length: 5, 5', 'Content-Length: 5, 6',
  'Content-Length: -1', 'Content-Length: 99999999999999999999999', 'Content-Length: 1e3', 'Transfer-Encoding: chunked',
  'Transfer-Encoding: gzip, chunked', 'Transfer-Encoding: chunked, gzip', 'Transfer-Encoding: identity', 'Expect: 100-continue',
  'Expect: nonsense', 'Connection: close', 'Connection: keep-alive, x-hop', 'Connection: Upgrade', 'Upgrade: h2c', 'Upgrade: websocket',
  'X-Forwarded-For: 1.2.3.4', 'Via: 1.1 loop', 'Bad Header: x', ': empty-name', 'X-Nul: a\u0000b', ' leading-space: x', 'X-Folded: a\r\n b',
  `X-Long: ${'z'.repeat(2000)}`, 'Te: trailers', 'Trailer: X-T', 'Cookie: a=b',
];
const BODIES = ['', '', 'hello', '0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'zz\r\nxx\r\n', 'ffffffffffffffff\r\nx', '5\r\nhel', '{"a":1}', '\u0000\u0001\u0002'];

function pick<T>(rand: () => number, list: readonly T[]): T {
  return list[Math.floor(rand() * list.length)]!;
}

function randomBytes(rand: () => number, max: number): Buffer {
  const out = Buffer.alloc(Math.floor(rand() * max));
  for (let i = 0; i < out.length; i++) out[i] = Math.floor(rand() * 256);
  return out;
}

function structuredRequest(rand: () => number): string {
  const sep = () => (rand() < 0.97 ? ' ' : pick(rand, ['', '  ', '\t', '\r', '\n']));
  const eol = () => (rand() < 0.97 ? '\r\n' : pick(rand, ['\n', '\r', '\r\r\n', '']));
  const method = rand() < 0.6 ? pick(rand, ['GET', 'POST']) : pick(rand, METHODS);
  const version = rand() < 0.8 ? 'HTTP/1.1' : pick(rand, VERSIONS);
  let text = `${method}${sep()}${pick(rand, TARGETS)}${sep()}${version}${eol()}`;
  if (rand() < 0.85) text += `Host: api.example.test${eol()}`;
  if (rand() < 0.75) text += `${rand() < 0.5 ? KEY : `Proxy-Authorization: ${proxyAuth('acme', 'acme-secret-key-1')}`}${eol()}`;
  const count = Math.floor(rand() * 4);
  for (let i = 0; i < count; i++) text += `${pick(rand, HEADERS)}${eol()}`;
  const body = pick(rand, BODIES);
  // Mostly a body its headers announce; sometimes bytes that will read as a next request.
  if (body !== '' && rand() < 0.7) {
    text += rand() < 0.5 ? `Content-Length: ${Buffer.byteLength(body, 'latin1')}\r\n\r\n${body}` : `Transfer-Encoding: chunked\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`;
    return text;
  }
  return `${text}${eol()}${body}`;
}

function mutate(rand: () => number, input: Buffer): Buffer {
  const bytes = [...input];
  const edits = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < edits && bytes.length > 0; i++) {
    const at = Math.floor(rand() * bytes.length);
    const kind = rand();
    if (kind < 0.4) bytes[at] = Math.floor(rand() * 256);
    else if (kind < 0.7) bytes.splice(at, 0, pick(rand, [0x00, 0x0a, 0x0d, 0x20, 0x3a, 0x7f, 0xff, Math.floor(rand() * 256)]));
    else if (kind < 0.9) bytes.splice(at, 1 + Math.floor(rand() * 8));
    else bytes.length = at; // truncate
  }
  return Buffer.from(bytes);
}

function fuzzCase(rand: () => number): Buffer | Buffer[] {
  const kind = rand();
  if (kind < 0.2) return randomBytes(rand, 300);
  if (kind < 0.65) return Buffer.from(structuredRequest(rand), 'latin1');
  if (kind < 0.9) return mutate(rand, Buffer.from(structuredRequest(rand), 'latin1'));
  // Pipelined requests, split at random points.
  const all = Buffer.from(structuredRequest(rand) + structuredRequest(rand), 'latin1');
  const cut = Math.floor(rand() * all.length);
  return [all.subarray(0, cut), all.subarray(cut)];
}

describe('fuzz', () => {
  const SEED = 0x5eed_2024;
  const CASES = 3_000;
  const CONCURRENCY = 128;
  const statuses = new Map<number, number>();
  /** Error responses that were not JSON: one example input per status. */
  const nonJsonErrors = new Map<number, string>();
  const show = (input: Buffer | Buffer[]) => JSON.stringify(Buffer.concat([input].flat()).toString('latin1').slice(0, 160));

  it(`survives ${CASES} random and mangled requests (seed ${SEED}) and still answers normal ones`, async () => {
    const child = await spawnGateway(configWithListen(LIMITS, upstreams()));
    try {
      const rand = prng(SEED);
      const cases = Array.from({ length: CASES }, () => fuzzCase(rand));
      const internalErrors: string[] = [];
      let next = 0;
      const worker = async () => {
        while (next < cases.length) {
          const input = cases[next++]!;
          const exchange = await rawExchange(child.port, input, { timeoutMs: 600, delayMs: 1 });
          const res = exchange.response;
          if (!res) continue;
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          if (res.status === 500) internalErrors.push(`${res.status} for ${show(input)}`);
          if (res.status >= 400 && res.headers['content-type']?.startsWith('application/json') !== true) {
            if (!nonJsonErrors.has(res.status)) nonJsonErrors.set(res.status, show(input));
          }
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));

      expect(child.child.exitCode).toBeNull();
      expect(child.child.signalCode).toBeNull();
      // The CLI turns an escaped exception into a log line instead of an exit: look for those too.
      const faults = child.logs.filter((l) => /uncaught|unhandled|handler failed|inside the gateway/.test(String(l.msg)));
      expect(faults).toEqual([]);
      expect(internalErrors.slice(0, 10)).toEqual([]);
      // The inputs reached more than the parser: some were forwarded, some refused further in.
      expect(statuses.get(200)).toBeGreaterThan(0);
      expect(statuses.get(400)).toBeGreaterThan(0);

      const res = await request(`${child.proxyUrl}/plain/after-fuzz`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toMatchObject({ url: '/after-fuzz' });
      const agent = new ProxyAgent({ uri: child.proxyUrl, token: proxyAuth('acme', 'acme-secret-key-1'), proxyTunnel: false });
      try {
        const proxied = await request('http://api.example.test/after-fuzz-proxy', { dispatcher: agent });
        expect(proxied.statusCode).toBe(200);
        await proxied.body.dump();
      } finally {
        await agent.close();
      }
    } finally {
      child.child.kill('SIGTERM');
      await child.exited;
    }
  }, 60_000);

  it('answered every error of the fuzz run as JSON', () => {
    expect(statuses.size).toBeGreaterThan(0);
    expect(Object.fromEntries(nonJsonErrors)).toEqual({});
  });
});
