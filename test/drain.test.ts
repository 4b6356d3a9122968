import { connect } from 'node:net';
import { Agent, Client, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, testConfig } from './helpers/gateway.js';
import { spawnGateway, type GatewayProcess } from './helpers/process.js';
import { configWithListen } from './helpers/raw.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

let upstream: FakeUpstream;

beforeAll(async () => {
  upstream = await startUpstream();
});

afterAll(async () => {
  await upstream.close();
});

const upstreams = () => `
  plain:
    match: { prefix: /plain }
    target: ${upstream.url}
    allowPrivate: true
`;

async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves when a TCP connection to 127.0.0.1:port opens (and closes it), rejects with the error otherwise. */
function tryConnect(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve();
    });
    socket.once('error', reject);
  });
}

/** Kills the child if a test left it running. */
async function reap(gw: GatewayProcess): Promise<void> {
  if (gw.child.exitCode === null && gw.child.signalCode === null) gw.child.kill('SIGKILL');
  await gw.exited;
}

describe('graceful shutdown on SIGTERM', () => {
  it('lets a request in flight finish, refuses new connections, and exits 0 without waiting for drainTimeout', async () => {
    const gw = await spawnGateway(configWithListen({ drainTimeout: '10s' }, upstreams()));
    // One connection that is busy at SIGTERM, one that is idle (keep-alive) at SIGTERM.
    const busy = new Client(gw.proxyUrl);
    const idle = new Client(gw.proxyUrl);
    try {
      const warm = await idle.request({ method: 'GET', path: '/plain/warm-up', headers: KEY });
      expect(warm.statusCode).toBe(200);
      await warm.body.dump();

      const inFlight = busy.request({ method: 'GET', path: '/plain/slow/1500', headers: KEY });
      await waitFor('the slow request to reach the upstream', () => upstream.arrivals.some((a) => a.url === '/slow/1500'));
      const signalledAt = Date.now();
      gw.child.kill('SIGTERM');
      await waitFor('the drain to start', () => gw.logs.some((l) => l.msg === 'draining'));

      await expect(tryConnect(gw.port)).rejects.toMatchObject({ code: 'ECONNREFUSED' });

      const res = await inFlight;
      expect(res.statusCode).toBe(200);
      expect(await res.body.json()).toEqual({ slept: 1500 });

      expect(await gw.exited).toBe(0);
      const exitedAfterMs = Date.now() - signalledAt;
      // The drain ended because nothing was left in flight, not because drainTimeout (10 s) ran out.
      expect(exitedAfterMs).toBeLessThan(5_000);
      expect(gw.logs.some((l) => l.msg === 'drain timeout reached; closing the remaining connections')).toBe(false);
      expect(gw.logs.some((l) => l.msg === 'stopped')).toBe(true);
      const line = gw.logs.find((l) => l.msg === 'request' && l.path === '/plain/slow/1500');
      expect(line).toMatchObject({ status: 200, upstream: 'plain' });
    } finally {
      await busy.destroy();
      await idle.destroy();
      await reap(gw);
    }
  });

  it('exits 0 about drainTimeout after SIGTERM when a request hangs', async () => {
    const gw = await spawnGateway(configWithListen({ drainTimeout: '1s' }, upstreams()));
    const client = new Client(gw.proxyUrl);
    try {
      const hanging = client.request({ method: 'GET', path: '/plain/hang?drain', headers: KEY }).then(
        (res) => ({ status: res.statusCode, error: undefined }),
        (err: Error) => ({ status: undefined, error: err }),
      );
      await waitFor('the hanging request to reach the upstream', () => upstream.arrivals.some((a) => a.url === '/hang?drain'));
      const signalledAt = Date.now();
      gw.child.kill('SIGTERM');

      expect(await gw.exited).toBe(0);
      const exitedAfterMs = Date.now() - signalledAt;
      expect(exitedAfterMs).toBeGreaterThanOrEqual(900);
      expect(exitedAfterMs).toBeLessThan(1_000 + 1_500);
      expect(gw.logs.some((l) => l.msg === 'drain timeout reached; closing the remaining connections')).toBe(true);
      // The client's connection was closed under it: no response.
      const outcome = await hanging;
      expect(outcome.status).toBeUndefined();
      expect(outcome.error).toBeInstanceOf(Error);
    } finally {
      await client.destroy();
      await reap(gw);
    }
  });

  it('still exits 0 when its stdout is gone (a log flush cannot hang the stop)', async () => {
    const gw = await spawnGateway(configWithListen({ drainTimeout: '5s' }, upstreams()));
    gw.child.stdout!.destroy();
    const started = Date.now();
    gw.child.kill('SIGTERM');
    expect(await gw.exited).toBe(0);
    expect(Date.now() - started).toBeLessThan(4_000);
  });
});

describe('drain after a client aborted a request', () => {
  it('closes idle keep-alive connections at once (Node alone would wait for their clients)', async () => {
    const gw = await startGateway(testConfig(upstreams()));
    const agent = new Agent({ keepAliveTimeout: 60_000 });
    const gone = new AbortController();
    const aborted = request(`${gw.proxyUrl}/plain/slow/300`, { headers: KEY, dispatcher: agent, signal: gone.signal }).catch(() => 'aborted');
    await new Promise((r) => setTimeout(r, 50));
    gone.abort();
    expect(await aborted).toBe('aborted');
    await (await request(`${gw.proxyUrl}/plain/x`, { headers: KEY, dispatcher: agent })).body.text();
    const started = performance.now();
    await gw.close();
    expect(performance.now() - started).toBeLessThan(1_000);
    await agent.close();
  });
});
