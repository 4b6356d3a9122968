/**
 * Retries (`retry:`), end to end against scripted upstreams on 127.0.0.1: only idempotent or keyed
 * requests (or `unprocessed` statuses) are retried, never once the client got a byte, honouring
 * Retry-After and the time left, within the retry budget, and every retry admitted by the limits.
 */
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { pino } from 'pino';
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { PauseRegistry } from '../src/limits/pauses.js';
import { ResponseFeedback } from '../src/limits/learn.js';
import { MemoryTokenStore } from '../src/store/memory-tokens.js';
import { RetryBudget, RetryPolicy } from '../src/upstream/retry.js';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { closedPort } from './helpers/raw.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

interface Seen {
  method: string;
  headers: IncomingHttpHeaders;
  /** SHA-256 and length of the body it received. */
  body: string;
  at: number;
}

type Reply = { status: number; headers?: OutgoingHttpHeaders; body?: string } | ((res: ServerResponse) => void);

interface Scripted {
  url: string;
  seen: Seen[];
  close(): Promise<void>;
}

/** An upstream answering the n-th request (0-based) with `script(n)`, once it read the body. */
async function scripted(script: (n: number, req: IncomingMessage) => Reply): Promise<Scripted> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const at = performance.now();
    const hash = createHash('sha256');
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      length += chunk.length;
      hash.update(chunk);
    });
    req.on('end', () => {
      const n = seen.length;
      seen.push({ method: req.method ?? '', headers: req.headers, body: `${length}:${hash.digest('hex')}`, at });
      const reply = script(n, req);
      if (typeof reply === 'function') return reply(res);
      const body = reply.body ?? JSON.stringify({ attempt: n, status: reply.status });
      res.writeHead(reply.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...reply.headers });
      res.end(body);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    async close() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** 503 for the first `failures` requests, then 200. */
const failFirst = (failures: number, headers?: OutgoingHttpHeaders) => (n: number) => (n < failures ? { status: 503, headers } : { status: 200 });

function upstream(target: string, retry: string, extra = ''): string {
  return `  api:
    match: { prefix: /api }
    target: ${target}
    allowPrivate: true
    retry: ${retry}
${extra}`;
}

const FAST = 'backoff: { base: 5ms, max: 20ms }';

let gw: TestGateway | undefined;
let up: Scripted | undefined;
afterEach(async () => {
  await gw?.close();
  await up?.close();
  gw = up = undefined;
});

async function send(path: string, options: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}) {
  const res = await request(`${gw!.proxyUrl}/api${path}`, {
    method: (options.method ?? 'GET') as 'GET',
    headers: { ...KEY, ...options.headers },
    body: options.body,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text };
}

/** The request log lines (the gateway writes them when the response is done with). */
async function requestLogs(count: number): Promise<Record<string, unknown>[]> {
  const lines = () => gw!.logs.filter((l) => l.msg === 'request');
  await until(() => lines().length >= count);
  return lines();
}

describe('retries', () => {
  it('retries a GET on a listed status; the client sees only the last answer', async () => {
    up = await scripted(failFirst(1));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], attempts: 2, ${FAST} }`)));
    const res = await send('/items');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.text)).toEqual({ attempt: 1, status: 200 });
    expect(res.headers['x-sluice-attempts']).toBe('2');
    expect(up.seen).toHaveLength(2);
    const [line] = await requestLogs(1);
    expect(line).toMatchObject({ status: 200, attempts: 2, retried: [503] });
  });

  it('gives up after `attempts` retries and passes the last answer on as it was', async () => {
    up = await scripted(() => ({ status: 503, headers: { 'x-last': 'yes' }, body: 'down' }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], attempts: 2, ${FAST} }`)));
    const res = await send('/items');
    expect(res.status).toBe(503);
    expect(res.text).toBe('down');
    expect(res.headers['x-last']).toBe('yes');
    expect(up.seen).toHaveLength(3);
    expect((await requestLogs(1))[0]).toMatchObject({ status: 503, attempts: 3, retried: [503, 503] });
  });

  it('does not retry a POST without an Idempotency-Key, and retries one with it, key and body the same', async () => {
    up = await scripted((n) => (n % 2 === 0 ? { status: 503 } : { status: 200 }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`)));
    const plain = await send('/messages', { method: 'POST', body: 'To=1&Body=hi' });
    expect(plain.status).toBe(503);
    expect(up.seen).toHaveLength(1);

    up.seen.length = 0;
    const keyed = await send('/messages', { method: 'POST', body: 'To=2&Body=hi', headers: { 'idempotency-key': 'key-42' } });
    expect(keyed.status).toBe(200);
    expect(up.seen).toHaveLength(2);
    expect(up.seen.map((s) => s.headers['idempotency-key'])).toEqual(['key-42', 'key-42']);
    expect(up.seen[0]!.body).toBe(up.seen[1]!.body);
    expect(up.seen[0]!.body.startsWith('12:')).toBe(true);
  });

  it('idempotencyKey: generate adds one key per client request, the same on every attempt', async () => {
    up = await scripted((n) => (n % 2 === 0 ? { status: 503 } : { status: 200 }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], idempotencyKey: generate, ${FAST} }`)));
    expect((await send('/charges', { method: 'POST', body: 'amount=1' })).status).toBe(200);
    expect((await send('/charges', { method: 'POST', body: 'amount=2' })).status).toBe(200);
    const keys = up.seen.map((s) => s.headers['idempotency-key']);
    expect(keys).toHaveLength(4);
    expect(keys[0]).toMatch(/^[0-9a-f-]{36}$/);
    expect(keys[1]).toBe(keys[0]);
    expect(keys[3]).toBe(keys[2]);
    expect(keys[2]).not.toBe(keys[0]);
  });

  it('retries a POST on an `unprocessed` status (Twilio 429 code 20429) without a key', async () => {
    const twilio429 = JSON.stringify({ code: 20429, message: 'Too Many Requests', status: 429 });
    up = await scripted((n) => (n === 0 ? { status: 429, body: twilio429 } : { status: 201 }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], unprocessed: [429], ${FAST} }`)));
    const res = await send('/Messages.json', { method: 'POST', body: 'To=1' });
    expect(res.status).toBe(201);
    expect(up.seen).toHaveLength(2);
    expect((await requestLogs(1))[0]).toMatchObject({ attempts: 2, retried: [429] });
  });

  it('retries a connection failure for an idempotent request, not for a plain POST', async () => {
    // The first connection of each pair is dropped before any answer.
    let connections = 0;
    const server = createServer((req, res) => {
      req.resume();
      res.writeHead(200, { connection: 'close' }); // every request on a connection of its own
      res.end('ok');
    });
    server.on('connection', (socket) => {
      if (connections++ % 2 === 0) socket.destroy();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      const target = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      gw = await startGateway(testConfig(upstream(target, `{ ${FAST} }`)));
      const res = await send('/items');
      expect(res.status).toBe(200);
      expect(res.text).toBe('ok');
      expect((await requestLogs(1))[0]).toMatchObject({ attempts: 2, retried: ['upstream_unreachable'] });

      connections = 0;
      const post = await send('/items', { method: 'POST', body: 'x' });
      expect(post.status).toBe(502);
      expect(JSON.parse(post.text).error).toBe('upstream_unreachable');
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  it('retries a refused connection, then answers the last failure', async () => {
    gw = await startGateway(testConfig(upstream(`http://127.0.0.1:${await closedPort()}`, `{ attempts: 2, ${FAST} }`)));
    const res = await send('/items');
    expect(res.status).toBe(502);
    expect(JSON.parse(res.text).error).toBe('upstream_unreachable');
    expect((await requestLogs(1))[0]).toMatchObject({ attempts: 3, retried: ['upstream_unreachable', 'upstream_unreachable'], error: 'upstream_unreachable' });
  });

  it('retries a headers timeout for an idempotent request only (a keyed POST may still be processed)', async () => {
    // Every other request hangs; undici checks its timeouts about twice a second.
    up = await scripted((n) => (n % 2 === 0 ? () => undefined : { status: 200 }));
    const timeouts = '    timeouts: { headers: 200ms }';
    gw = await startGateway(testConfig(upstream(up.url, `{ attempts: 1, ${FAST} }`, timeouts)));
    expect((await send('/items')).status).toBe(200);
    expect((await requestLogs(1))[0]).toMatchObject({ attempts: 2, retried: ['upstream_timeout'] });

    const post = await send('/items', { method: 'POST', body: 'x', headers: { 'idempotency-key': 'k' } });
    expect(post.status).toBe(504);
    expect(up.seen).toHaveLength(3);
  });

  it('never retries once response bytes went to the client', async () => {
    up = await scripted(() => (res) => {
      res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 1000 });
      res.write('partial');
      setTimeout(() => res.socket?.destroy(), 50);
    });
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], attempts: 3, ${FAST} }`)));
    await expect(send('/items')).rejects.toThrow();
    await until(() => gw!.logs.some((l) => l.msg === 'request'));
    expect(up.seen).toHaveLength(1);
    const line = gw.logs.find((l) => l.msg === 'request')!;
    expect(line.attempts).toBeUndefined();
  });

  it("waits at least the upstream's Retry-After before the retry", async () => {
    up = await scripted(failFirst(1, { 'retry-after': '1' }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`)));
    const res = await send('/items');
    expect(res.status).toBe(200);
    expect(up.seen).toHaveLength(2);
    // Retry-After is whole seconds; the upstream's clock and ours are the same here.
    expect(up.seen[1]!.at - up.seen[0]!.at).toBeGreaterThanOrEqual(980);
  });

  it('does not attempt a retry that would wait past the time left (`within`)', async () => {
    up = await scripted(failFirst(1, { 'retry-after': '5' }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], within: 1s, ${FAST} }`)));
    const started = performance.now();
    const res = await send('/items');
    expect(res.status).toBe(503);
    expect(res.headers['retry-after']).toBe('5');
    expect(up.seen).toHaveLength(1);
    expect(performance.now() - started).toBeLessThan(900);
  });

  it('the retry budget stops a retry storm', async () => {
    up = await scripted(() => ({ status: 503 }));
    const budget = 'budget: { ratio: 0.2, window: 10s, minPerSecond: 0 }';
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], attempts: 3, ${budget}, ${FAST} }`)));
    const requests = 30;
    for (let batch = 0; batch < requests / 5; batch++) {
      const answers = await Promise.all(Array.from({ length: 5 }, () => send('/items')));
      for (const a of answers) expect(a.status).toBe(503);
    }
    // Without the budget: 4 per request (120). With it: at most 0.2 retries per request.
    expect(up.seen.length).toBeGreaterThan(requests);
    expect(up.seen.length).toBeLessThanOrEqual(requests * 1.2);
  });

  it('each retry is admitted by the limits: it uses up capacity like a new request', async () => {
    up = await scripted((n) => (n === 0 ? { status: 503 } : { status: 200 }));
    const limits = `    limits:
      - { name: calls, rate: 2/min, burst: 2 }`;
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`, limits)));
    expect((await send('/items')).status).toBe(200);
    const second = await send('/items');
    expect(second.status).toBe(429);
    expect(JSON.parse(second.text).error).toBe('rate_limited');
    expect(up.seen).toHaveLength(2);
  });

  it("a retry the limits refuse leaves the client the upstream's answer it was to replace, not the refusal", async () => {
    up = await scripted(() => ({ status: 503, headers: { 'retry-after': '0', 'x-upstream': 'yes' }, body: 'busy' }));
    const limits = `    limits:
      - { name: calls, rate: 1/min, burst: 1 }`;
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`, limits)));
    const res = await send('/items');
    expect(res.status).toBe(503);
    expect(res.text).toBe('busy');
    expect(res.headers).toMatchObject({ 'retry-after': '0', 'x-upstream': 'yes' });
    expect(res.headers['ratelimit-policy']).toBeDefined(); // the first attempt's admission headers, as it would have had them
    expect(up.seen).toHaveLength(1);
    // The retry was never sent: no second attempt counted.
    const [line] = await requestLogs(1);
    expect(line).toMatchObject({ status: 503, limit: 'calls', retryRefused: 'rate_limited' });
    expect(line!.attempts).toBeUndefined();
    expect(line!.retried).toBeUndefined();
    expect(line!.error).toBeUndefined();
  });

  it('resends a small body (declared or chunked), and never retries a body over retry.maxBodySize', async () => {
    up = await scripted((n) => (n % 2 === 0 ? { status: 503 } : { status: 200 }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], maxBodySize: 1kb, ${FAST} }`)));
    const small = Buffer.alloc(600, 0x61);
    expect((await send('/doc', { method: 'PUT', body: small })).status).toBe(200);
    expect(up.seen.map((s) => s.body)).toEqual([`600:${sha(small)}`, `600:${sha(small)}`]);

    up.seen.length = 0;
    const chunked = await request(`${gw.proxyUrl}/api/doc`, {
      method: 'PUT',
      headers: KEY,
      body: Readable.from([Buffer.from('part one, '), Buffer.from('part two')]),
    });
    await chunked.body.text();
    expect(chunked.statusCode).toBe(200);
    expect(up.seen.map((s) => s.body)).toEqual([`18:${sha(Buffer.from('part one, part two'))}`, `18:${sha(Buffer.from('part one, part two'))}`]);

    up.seen.length = 0;
    const big = Buffer.alloc(4096, 0x62);
    expect((await send('/doc', { method: 'PUT', body: big })).status).toBe(503);
    expect(up.seen).toHaveLength(1);
    expect(up.seen[0]!.body).toBe(`4096:${sha(big)}`);
  });

  it('keeps Expect: 100-continue working for a retried request', async () => {
    up = await scripted(failFirst(1));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`)));
    const { request: httpRequest } = await import('node:http');
    const status = await new Promise<number>((resolve, reject) => {
      const req = httpRequest(`${gw!.proxyUrl}/api/doc`, {
        method: 'PUT',
        headers: { ...KEY, expect: '100-continue', 'content-length': '5' },
      });
      req.on('continue', () => req.end('hello'));
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
    });
    expect(status).toBe(200);
    expect(up.seen.map((s) => s.body)).toEqual([`5:${sha(Buffer.from('hello'))}`, `5:${sha(Buffer.from('hello'))}`]);
  });
});

describe('a retry decided but not sent', () => {
  it('queues for the limits only within its time left (`within`), not the whole onLimit.queue', async () => {
    // The first request on each path is answered 503, the next ones 200.
    const paths = new Set<string>();
    up = await scripted((_n, req) => (paths.has(req.url!) ? { status: 200 } : (paths.add(req.url!), { status: 503, body: `busy ${req.url}` })));
    // One request per 6 s: the retry would be admitted after ~6 s, within the 10 s queue but past `within`.
    const slow = `    onLimit: { queue: 10s }
    limits:
      - { name: slow, match: { path: /slow }, rate: 10/min, burst: 1 }
      - { name: quick, match: { path: /quick }, rate: 2/s, burst: 1 }`;
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], within: 1s, ${FAST} }`, slow)));
    const started = performance.now();
    const refused = await send('/slow');
    // Waiting for the limit would take ~6 s; refused at once takes milliseconds (3 s: room for a busy machine).
    expect(performance.now() - started).toBeLessThan(3_000);
    expect(refused.status).toBe(503);
    expect(refused.text).toBe('busy /slow');
    expect(up.seen).toHaveLength(1);
    expect((await requestLogs(1))[0]).toMatchObject({ retryRefused: 'rate_limited', limit: 'slow' });

    // A queue wait that ends within the time left is waited out.
    const waited = await send('/quick');
    expect(waited.status).toBe(200);
    expect(waited.headers['x-sluice-attempts']).toBe('2');
    expect(up.seen).toHaveLength(3);
    expect(up.seen[2]!.at - up.seen[1]!.at).toBeGreaterThanOrEqual(400);
  });

  it('takes nothing from the retry budget when refused before it goes', async () => {
    // /a is always busy and limited to one request a minute; /b is busy once.
    let bFailed = false;
    up = await scripted((_n, req) => {
      if (req.url === '/a') return { status: 503 };
      if (bFailed) return { status: 200 };
      bFailed = true;
      return { status: 503 };
    });
    // The budget holds one retry in the window (the floor), however few the requests.
    const budget = 'budget: { ratio: 0.01, window: 10s, minPerSecond: 0.1 }';
    const limits = `    limits:
      - { name: a, match: { path: /a }, rate: 1/min, burst: 1 }`;
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${budget}, ${FAST} }`, limits)));
    const a = await send('/a');
    expect(a.status).toBe(503);
    expect((await requestLogs(1))[0]).toMatchObject({ retryRefused: 'rate_limited' });
    // The refused retry gave its place back: /b's retry still has it.
    const b = await send('/b');
    expect(b.status).toBe(200);
    expect(b.headers['x-sluice-attempts']).toBe('2');
    expect(up.seen).toHaveLength(3);
  });

  it("refused by a pause, the client gets the upstream's 429 marked, with the pause as Retry-After", async () => {
    const limited = { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '30' };
    up = await scripted(() => ({ status: 429, headers: limited, body: '{"error":"slow down"}' }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [429], within: 2s, ${FAST} }`)));
    const res = await send('/items');
    expect(res.status).toBe(429);
    expect(res.text).toBe('{"error":"slow down"}');
    expect(res.headers).toMatchObject({ 'x-sluice-upstream-limited': 'true', 'retry-after': '30', 'x-ratelimit-remaining': '0' });
    expect(up.seen).toHaveLength(1);
    expect((await requestLogs(1))[0]).toMatchObject({ status: 429, retryRefused: 'upstream_paused' });
  });

  it("refused by the breaker, the client gets the upstream's 503; an answer too long to keep leaves the refusal", async () => {
    const long = 'x'.repeat(100 * 1024);
    up = await scripted((_n, req) => ({ status: 503, headers: { 'retry-after': '0' }, body: req.url === '/long' ? long : 'down' }));
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`, '    breaker: { failures: 1, cooldown: 30s }')));
    const short = await send('/short');
    expect(short.status).toBe(503);
    expect(short.text).toBe('down');
    expect((await requestLogs(1))[0]).toMatchObject({ status: 503, retryRefused: 'circuit_open' });

    await gw.close();
    gw = await startGateway(testConfig(upstream(up.url, `{ on: [503], ${FAST} }`, '    breaker: { failures: 1, cooldown: 30s }')));
    const cut = await send('/long');
    expect(cut.status).toBe(503);
    expect(JSON.parse(cut.text).error).toBe('circuit_open');
    expect(up.seen).toHaveLength(2);
  });
});

describe('the retry budget across a reload', () => {
  it('is kept when the budget settings stay, and starts afresh when they change', async () => {
    up = await scripted(() => ({ status: 503 }));
    // Half a retry per request, no floor: the 2nd and 4th requests (in one window) may be retried.
    const config = (budget: string, extra = '') =>
      testConfig(upstream(up!.url, `{ on: [503], attempts: 1, budget: { ${budget}, window: 60s, minPerSecond: 0 }, ${FAST} }`, extra));
    gw = await startGateway(config('ratio: 0.5'));
    for (let i = 0; i < 3; i++) await send('/items');
    expect(up.seen).toHaveLength(4); // 3 requests, the 2nd retried

    // A reload that changes something else (a limit) keeps the counts: the 4th request is retried.
    writeFileSync(gw.configPath, config('ratio: 0.5', '    limits:\n      - { name: roomy, rate: 100/s, burst: 100 }'));
    expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    await send('/items');
    expect(up.seen).toHaveLength(6);

    // New budget settings: a budget of their own, empty (the first request is not retried).
    writeFileSync(gw.configPath, config('ratio: 0.6'));
    expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    await send('/items');
    expect(up.seen).toHaveLength(7);
  });
});

describe('the learn stage', () => {
  it('an answer that says nothing about limits costs no parse and no object; one that does is still read', () => {
    const feedback = parseConfig(testConfig(upstream('https://api.example.com', '{}')), 'routes.yaml', {}).config.upstreams.api!.feedback;
    const registry = new PauseRegistry({ store: new MemoryTokenStore(), prefix: 'test', logger: pino({ level: 'silent' }), shared: false });
    const pauses = registry.acquire('api');
    const lowered: number[] = [];
    const ear = new ResponseFeedback(feedback, pauses, undefined, (counts) => lowered.push(...counts.map((c) => c.remaining)));
    const plain = ear.started(200, { 'content-type': 'text/plain', 'content-length': '2' });
    expect(ear.started(404, { 'retry-after': '5' })).toBe(plain); // Retry-After counts on a 429 or 503 only
    expect(plain).toEqual({});
    expect(Object.isFrozen(plain)).toBe(true);
    expect(lowered).toEqual([]);
    expect(pauses.leftMs(undefined)).toBe(0);

    expect(ear.started(200, { 'x-ratelimit-remaining': '7', 'x-ratelimit-reset': '60' })).toBe(plain);
    expect(lowered).toEqual([7]);
    expect(ear.started(503, { 'retry-after': '5' })).toBe(plain);
    expect(pauses.leftMs(undefined)).toBeGreaterThan(4_000);
    expect(ear.started(429, {}).headers).toMatchObject({ 'x-sluice-upstream-limited': 'true' });
    registry.close();
  });
});

describe('retry config', () => {
  const config = (retry: string) => testConfig(upstream('https://api.example.com', retry));

  it('fills in the defaults, and no longer warns that retry is not enforced', () => {
    const loaded = parseConfig(config('{ on: [503] }'), 'routes.yaml', {});
    expect(loaded.warnings.join('\n')).not.toContain('retry');
    expect(loaded.config.upstreams.api!.retry).toEqual({
      on: [503],
      attempts: 2,
      methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE'],
      unprocessed: [],
      idempotencyKey: 'keep',
      backoff: { base: 100, max: 2_000 },
      budget: { ratio: 0.2, window: 10_000, minPerSecond: 1 },
      within: 10_000,
      maxBodySize: 64 * 1024,
    });
  });

  it.each([
    ['{ on: [200] }', 'retry.on[0]: must be a 4xx or 5xx status'],
    ['{ unprocessed: [99] }', 'retry.unprocessed[0]: must be a 4xx or 5xx status'],
    ['{ attempts: 11 }', 'retry.attempts: must be at most 10'],
    ['{ idempotencyKey: always }', 'retry.idempotencyKey'],
    ['{ backoff: { base: 1s, max: 100ms } }', 'retry.backoff.max: must not be shorter than base'],
    ['{ budget: { ratio: 0 } }', 'retry.budget.ratio: must be more than 0'],
    ['{ budget: { window: 100ms } }', 'retry.budget.window: must be at least 1s'],
    ['{ maxBodySize: 2mb }', 'retry.maxBodySize: must be at most 1mb'],
    ['{ within: 0s }', 'retry.within: must be more than 0'],
    ['{ retries: 3 }', 'retry.retries: is not a known key'],
  ])('refuses %s', (retry, problem) => {
    let error: unknown;
    try {
      parseConfig(config(retry), 'routes.yaml', {});
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).problems.join('\n')).toContain(problem);
  });
});

describe('the retry budget', () => {
  it('allows ratio × requests in the window, plus minPerSecond, and forgets what left the window', () => {
    let now = 0;
    const budget = new RetryBudget({ ratio: 0.5, window: 10_000, minPerSecond: 0 }, () => now);
    const taken = (ticket: number | undefined) => ticket !== undefined;
    for (let i = 0; i < 4; i++) budget.request();
    expect([budget.take(), budget.take(), budget.take()].map(taken)).toEqual([true, true, false]);
    now = 10_500; // every slot left the window
    expect(budget.take()).toBeUndefined();
    budget.request();
    budget.request();
    expect(budget.take()).toBeDefined();

    const floor = new RetryBudget({ ratio: 0.1, window: 10_000, minPerSecond: 0.2 }, () => 0);
    expect([floor.take(), floor.take(), floor.take()].map(taken)).toEqual([true, true, false]);
  });

  it('a retry given back frees its place while its slot is in the window, and is forgotten after', () => {
    let now = 0;
    const budget = new RetryBudget({ ratio: 0.5, window: 10_000, minPerSecond: 0 }, () => now);
    budget.request();
    budget.request();
    const ticket = budget.take()!;
    expect(budget.take()).toBeUndefined();
    now = 5_000; // the ticket's slot is still in the window
    budget.giveBack(ticket);
    expect(budget.take()).toBeDefined();
    expect(budget.take()).toBeUndefined();

    now = 20_000; // everything left the window: a late give-back must not make room out of nothing
    budget.request();
    budget.request();
    const fresh = budget.take()!;
    budget.giveBack(ticket);
    expect(budget.take()).toBeUndefined();
    budget.giveBack(fresh);
    expect(budget.take()).toBeDefined();
  });

  it('a decision made while another is pending replaces it and gives its place back', () => {
    const budget = new RetryBudget({ ratio: 0.5, window: 10_000, minPerSecond: 0 }, () => 0);
    const config = parseConfig(testConfig(upstream('https://api.example.com', '{ on: [503] }')), 'routes.yaml', {}).config.upstreams.api!.retry!;
    const run = new RetryPolicy(config, budget).begin('GET', {}, performance.now());
    budget.request(); // two requests: room for one retry
    expect(run.afterStatus(503, {})).toBeDefined();
    expect(run.afterStatus(503, {})).toBeDefined(); // the first one's place, given back, is the second's
    expect(budget.take()).toBeUndefined(); // one place taken, not two
    run.refused();
    expect(budget.take()).toBeDefined();
  });
});

function sha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
