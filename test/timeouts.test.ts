import { once } from 'node:events';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from './helpers/gateway.js';
import { closedPort, configWithListen } from './helpers/raw.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

/** What the dedicated upstream saw of one request. */
interface Seen {
  url: string;
  bodyBytes: number;
  /** The request's connection went away before the request body was complete ('aborted'). */
  aborted: boolean;
  /** The response was closed before it was finished (the client side of the upstream left). */
  closedEarly: boolean;
}

/**
 * A small upstream for what the shared fake cannot do:
 *   /stall   200, 1000 body bytes (chunked), then nothing, ever
 *   /wait    reads the body, never answers
 * and it records, per request, whether the gateway abandoned it.
 */
async function startWatchedUpstream(): Promise<{ server: Server; url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req: IncomingMessage, res) => {
    const record: Seen = { url: req.url ?? '', bodyBytes: 0, aborted: false, closedEarly: false };
    seen.push(record);
    req.on('data', (c: Buffer) => (record.bodyBytes += c.length));
    req.on('aborted', () => (record.aborted = true));
    req.on('error', () => undefined);
    res.on('close', () => {
      if (!res.writableFinished) record.closedEarly = true;
    });
    if (req.url?.startsWith('/stall')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(Buffer.alloc(1000, 0x73));
    }
    // /wait: nothing.
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

let upstream: FakeUpstream;
let watched: Awaited<ReturnType<typeof startWatchedUpstream>>;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startUpstream();
  watched = await startWatchedUpstream();
  const refusingPort = await closedPort();
  gw = await startGateway(
    configWithListen(
      {},
      `
  plain:
    match: { prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
  refused:
    match: { prefix: /refused }
    target: http://127.0.0.1:${refusingPort}
    allowPrivate: true
    timeouts: { connect: 1s }
  slowheaders:
    match: { prefix: /slowheaders }
    target: ${upstream.url}
    allowPrivate: true
    timeouts: { headers: 300ms }
  stalling:
    match: { prefix: /stalling }
    target: ${watched.url}
    allowPrivate: true
    timeouts: { bodyIdle: 300ms }
  watched:
    match: { prefix: /watched }
    target: ${watched.url}
    allowPrivate: true
`,
    ),
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
  watched.server.closeAllConnections();
  watched.server.close();
});

async function waitFor(what: string, condition: () => boolean, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

function logLine(path: string): Record<string, unknown> | undefined {
  return gw.logs.find((l) => l.msg === 'request' && l.path === path);
}

async function expectServing(): Promise<void> {
  const res = await request(`${gw.proxyUrl}/plain/still-serving`, { headers: KEY });
  expect(res.statusCode).toBe(200);
  await res.body.dump();
}

describe('upstream failures', () => {
  it('answers 502 upstream_unreachable when the upstream refuses the connection', async () => {
    const res = await request(`${gw.proxyUrl}/refused/x`, { headers: KEY });
    expect(res.statusCode).toBe(502);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    const body = (await res.body.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ error: 'upstream_unreachable', upstream: 'refused' });
    expect(body.message).toMatch(/ECONNREFUSED/);
    await waitFor('the log line', () => logLine('/refused/x') !== undefined);
    expect(logLine('/refused/x')).toMatchObject({ status: 502, error: 'upstream_unreachable', upstream: 'refused' });
  });

  it('answers 504 upstream_timeout when the upstream accepts but never answers (timeouts.headers: 300ms)', async () => {
    const startedAt = Date.now();
    const res = await request(`${gw.proxyUrl}/slowheaders/hang`, { headers: KEY });
    const elapsed = Date.now() - startedAt;
    expect(res.statusCode).toBe(504);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    const body = (await res.body.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ error: 'upstream_timeout', upstream: 'slowheaders' });
    expect(body.message).toBeTypeOf('string');
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(2_000);
  });

  it('waits for an upstream that answers within timeouts.headers', async () => {
    const res = await request(`${gw.proxyUrl}/slowheaders/slow/100`, { headers: KEY });
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ slept: 100 });
  });

  it('cuts the client connection when the body stalls mid-way (timeouts.bodyIdle: 300ms), and keeps serving', async () => {
    const startedAt = Date.now();
    const res = await request(`${gw.proxyUrl}/stalling/stall`, { headers: KEY });
    // The status and the first bytes went out before the stall: it cannot become a 504 any more.
    expect(res.statusCode).toBe(200);
    let received = 0;
    const reading = (async () => {
      for await (const piece of res.body) received += (piece as Buffer).length;
    })();
    await expect(reading).rejects.toThrow();
    const elapsed = Date.now() - startedAt;
    expect(received).toBe(1000);
    expect(elapsed).toBeGreaterThanOrEqual(250);
    expect(elapsed).toBeLessThan(2_000);
    await waitFor('the stalled upstream request to be dropped', () => watched.seen.some((s) => s.url === '/stall' && s.closedEarly));
    await waitFor('the log line', () => logLine('/stalling/stall') !== undefined);
    expect(logLine('/stalling/stall')).toMatchObject({ error: 'upstream_timeout', upstream: 'stalling' });
    await expectServing();
  });
});

describe('clients that leave', () => {
  it('a client that aborts while waiting for the response: the upstream request is dropped too', async () => {
    const aborter = new AbortController();
    const pending = request(`${gw.proxyUrl}/watched/wait?client-abort`, { headers: KEY, signal: aborter.signal }).catch((err: Error) => err);
    await waitFor('the request to reach the upstream', () => watched.seen.some((s) => s.url === '/wait?client-abort'));
    aborter.abort();
    expect(await pending).toBeInstanceOf(Error);
    await waitFor('the upstream to see its request abandoned', () => watched.seen.some((s) => s.url === '/wait?client-abort' && s.closedEarly));
    await waitFor('the log line', () => logLine('/watched/wait?client-abort') !== undefined);
    expect(logLine('/watched/wait?client-abort')).toMatchObject({ status: 499, upstream: 'watched' });
    await expectServing();
  });

  it('a client that disconnects in the middle of its request body: the upstream sees its request aborted', async () => {
    const socket = connect({ host: '127.0.0.1', port: gw.port });
    socket.on('error', () => undefined);
    await once(socket, 'connect');
    socket.write(
      'POST /watched/wait?mid-body HTTP/1.1\r\nHost: x\r\nx-sluice-key: acme:acme-secret-key-1\r\n' +
        'Content-Length: 100000\r\nContent-Type: application/octet-stream\r\n\r\n',
    );
    socket.write(Buffer.alloc(4000, 0x75));
    await waitFor('part of the body to reach the upstream', () => watched.seen.some((s) => s.url === '/wait?mid-body' && s.bodyBytes > 0));
    socket.destroy();
    await waitFor('the upstream to see the request aborted', () => {
      const s = watched.seen.find((x) => x.url === '/wait?mid-body');
      return s !== undefined && s.aborted && s.closedEarly;
    });
    const record = watched.seen.find((s) => s.url === '/wait?mid-body')!;
    expect(record.bodyBytes).toBeLessThan(100_000);
    await waitFor('the log line', () => logLine('/watched/wait?mid-body') !== undefined);
    expect(logLine('/watched/wait?mid-body')).toMatchObject({ status: 499, upstream: 'watched' });
    await expectServing();
  });
});
