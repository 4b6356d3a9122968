/**
 * Circuit breakers (`breaker:`), against real fake upstreams on 127.0.0.1: the breaker opens after
 * the configured failures (5xx, refused connections, timeouts; a 4xx is no failure), fails fast
 * with 503 circuit_open and Retry-After = the cooldown left while the upstream sees nothing,
 * half-opens after the cooldown letting only `probes` requests through, closes on a good probe
 * (with a fresh count) and reopens on a failed one; a pool token's breaker moves traffic to the
 * other token; and over Redis an opening spreads to a second gateway, which then probes on its own.
 */
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { getAnswer } from './helpers/answer.js';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { describeWithRedis, sharedRedisPerBlock } from './helpers/redis.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

const get = (gw: TestGateway, path: string) => getAnswer(gw, path, KEY);

async function breakers(gw: TestGateway): Promise<Record<string, Record<string, unknown>>> {
  const res = await request(`${gw.adminUrl}/status`);
  return ((await res.body.json()) as { breakers: Record<string, Record<string, unknown>> }).breakers;
}

function logged(gw: TestGateway, msg: string): Record<string, unknown>[] {
  return gw.logs.filter((l) => l.msg === msg);
}

/** Waits until `check` holds, or fails after `ms`. */
async function until(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

function upstreamConfig(name: string, target: string, breaker: string, extra = ''): string {
  return `  ${name}:
    match: { prefix: /${name} }
    target: ${target}
    allowPrivate: true
    breaker: ${breaker}
${extra}`;
}

let upstream: FakeUpstream;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  upstream = await startUpstream();
});
afterAll(async () => {
  await upstream.close();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  gateways = [];
});

async function start(yaml: string): Promise<TestGateway> {
  const gw = await startGateway(yaml);
  gateways.push(gw);
  return gw;
}

describe('circuit breaker per upstream', () => {
  it('opens after the configured 5xx (not 4xx), then fails fast with Retry-After while the upstream sees nothing', async () => {
    const gw = await start(testConfig(upstreamConfig('api', upstream.url, '{ failures: 3, window: 10s, cooldown: 800ms }')));
    for (let i = 0; i < 5; i++) expect((await get(gw, '/api/status/404')).status).toBe(404);
    expect((await get(gw, '/api/status/500')).status).toBe(500);
    expect((await get(gw, '/api/status/502')).status).toBe(502);
    expect((await get(gw, '/api/echo')).status).toBe(200); // two failures: still closed
    expect((await breakers(gw)).api).toMatchObject({ per: 'upstream', state: 'closed', failures: 2 });
    expect((await get(gw, '/api/status/503')).status).toBe(503); // the third: it opens

    const seen = upstream.arrivals.length;
    const refused = await get(gw, '/api/echo');
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: 'circuit_open', upstream: 'api' });
    expect(refused.body.retryAfterMs).toBeGreaterThan(300);
    expect(refused.body.retryAfterMs).toBeLessThanOrEqual(800);
    expect(refused.retryAfter).toBe('1');
    expect(upstream.arrivals.length).toBe(seen);
    expect((await breakers(gw)).api).toMatchObject({ state: 'open' });
    expect(logged(gw, 'circuit breaker opened')).toEqual([expect.objectContaining({ upstream: 'api', learned: false })]);
    // Refused before the limits: the log line names the error, and no limit.
    expect(gw.logs.filter((l) => l.msg === 'request' && l.error === 'circuit_open').length).toBeGreaterThan(0);
  });

  it('counts refused connections and timeouts as failures', async () => {
    const closed = createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as AddressInfo).port;
    closed.close();
    const gw = await start(
      testConfig(
        upstreamConfig('down', `http://127.0.0.1:${port}`, '{ failures: 2, cooldown: 800ms }') +
          upstreamConfig('slow', upstream.url, '{ failures: 1, cooldown: 800ms }', '    timeouts: { headers: 200ms }\n'),
      ),
    );
    expect((await get(gw, '/down/x')).body.error).toBe('upstream_unreachable');
    expect((await get(gw, '/down/x')).body.error).toBe('upstream_unreachable');
    expect((await get(gw, '/down/x')).body.error).toBe('circuit_open');

    expect((await get(gw, '/slow/hang')).body.error).toBe('upstream_timeout');
    expect((await get(gw, '/slow/echo')).body.error).toBe('circuit_open');
  });

  it('half-opens after the cooldown with `probes` requests through; a failed probe reopens, a good one closes with a fresh count', async () => {
    const gw = await start(testConfig(upstreamConfig('api', upstream.url, '{ failures: 2, window: 20s, cooldown: 1s, probes: 2 }')));
    await get(gw, '/api/status/500');
    await get(gw, '/api/status/500');
    expect((await get(gw, '/api/echo')).body.error).toBe('circuit_open');

    // Half-open: a failed probe opens it again, for a whole cooldown.
    await sleep(1_200);
    expect((await breakers(gw)).api).toMatchObject({ state: 'halfOpen' });
    expect((await get(gw, '/api/status/500')).status).toBe(500);
    const reopened = await get(gw, '/api/echo');
    expect(reopened.body.error).toBe('circuit_open');
    expect(reopened.body.retryAfterMs).toBeGreaterThan(500); // a whole new cooldown, not the old one's rest

    // Half-open again: two probes go (slowly), a third is refused meanwhile.
    await sleep(1_200);
    const seen = upstream.arrivals.length;
    const probes = [get(gw, '/api/slow/1000'), get(gw, '/api/slow/1000')];
    await until(() => upstream.arrivals.length === seen + 2, 2_000, 'two probes at the upstream');
    const third = await get(gw, '/api/echo');
    expect(third.body.error).toBe('circuit_open');
    expect(third.retryAfter).toBe('1');
    expect((await Promise.all(probes)).map((a) => a.status)).toEqual([200, 200]);
    expect((await breakers(gw)).api).toMatchObject({ state: 'closed', failures: 0 });
    expect(logged(gw, 'circuit breaker half-open: probing the upstream').length).toBe(2);
    expect(logged(gw, 'circuit breaker closed').length).toBe(1);

    // Closed with a fresh window: the failures that opened it are forgotten.
    expect((await get(gw, '/api/status/500')).status).toBe(500);
    expect((await get(gw, '/api/echo')).status).toBe(200);
  });
});

/** A fake BaseLinker: 503 to the tokens in `failing`, 200 to the others; records each token. */
async function startPoolUpstream(): Promise<{ url: string; tokens: string[]; failing: Set<string>; close(): Promise<void> }> {
  const tokens: string[] = [];
  const failing = new Set<string>();
  const server: Server = createServer((req, res) => {
    const token = String(req.headers['x-bltoken']);
    tokens.push(token);
    req.resume();
    res.writeHead(failing.has(token) ? 503 : 200, { 'content-type': 'application/json' });
    res.end('{}');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    tokens,
    failing,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

describe('circuit breakers across a reload', () => {
  it('a request queued before a reload that changed the breaker settings still goes (no spurious circuit_open)', async () => {
    const config = (cooldown: string) =>
      testConfig(
        upstreamConfig('api', upstream.url, `{ failures: 3, window: 10s, cooldown: ${cooldown} }`, `    limits:
      - { name: one-at-a-time, concurrency: 1 }
    onLimit: { queue: 5s }
`),
      );
    const gw = await start(config('30s'));
    const first = get(gw, '/api/slow/600');
    await until(() => upstream.arrivals.some((a) => a.url === '/slow/600'), 2_000, 'the first request upstream');
    const queued = get(gw, '/api/echo'); // waits for the concurrency slot
    await sleep(100);
    writeFileSync(gw.configPath, config('20s'));
    expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    expect((await first).status).toBe(200);
    expect((await queued).status).toBe(200);
  });
});

describe('circuit breaker per pool token', () => {
  it('takes a failing token out of the choice, brings it back after a good probe, and refuses when every token is out', async () => {
    const bl = await startPoolUpstream();
    try {
      const gw = await start(
        testConfig(
          upstreamConfig(
            'bl',
            bl.url,
            '{ failures: 2, window: 20s, cooldown: 600ms }',
            '    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111, tok-b-2222] }\n',
          ),
        ),
      );
      bl.failing.add('tok-a-1111');
      for (let i = 0; i < 4; i++) await get(gw, '/bl/x'); // round robin: a, b, a, b: a fails twice
      expect(bl.tokens.filter((t) => t === 'tok-a-1111').length).toBe(2);
      expect((await breakers(gw)).bl).toMatchObject({
        per: 'credential',
        members: [expect.objectContaining({ index: 0, state: 'open' }), expect.objectContaining({ index: 1, state: 'closed' })],
      });
      const before = bl.tokens.length;
      for (let i = 0; i < 4; i++) expect((await get(gw, '/bl/x')).status).toBe(200);
      expect(bl.tokens.slice(before)).toEqual(Array(4).fill('tok-b-2222'));
      expect(logged(gw, 'circuit breaker opened')).toEqual([expect.objectContaining({ upstream: 'bl', credential: 0 })]);

      // After the cooldown token a is probed again; it works now, so its breaker closes.
      bl.failing.clear();
      await sleep(750);
      for (let i = 0; i < 3; i++) expect((await get(gw, '/bl/x')).status).toBe(200);
      expect(bl.tokens.slice(-3)).toContain('tok-a-1111');
      expect(logged(gw, 'circuit breaker closed')).toEqual([expect.objectContaining({ credential: 0 })]);

      // Every token failing: both open, and the next request is refused without reaching the upstream.
      bl.failing.add('tok-a-1111').add('tok-b-2222');
      for (let i = 0; i < 4; i++) expect((await get(gw, '/bl/x')).status).toBe(503);
      const seen = bl.tokens.length;
      const refused = await get(gw, '/bl/x');
      expect(refused.body.error).toBe('circuit_open');
      expect(refused.body.retryAfterMs).toBeGreaterThan(0);
      expect(bl.tokens.length).toBe(seen);
      expect(JSON.stringify(gw.logs)).not.toContain('tok-a-1111');
    } finally {
      await bl.close();
    }
  });
});

await describeWithRedis('circuit breaker across instances (Redis)', () => {
  const redis = sharedRedisPerBlock();

  it('an opening on one gateway opens the other for the cooldown left; each then probes on its own', async () => {
    const yaml = testConfig(
      upstreamConfig('api', upstream.url, '{ failures: 2, window: 20s, cooldown: 3s }'),
      `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix} }`,
    );
    const one = await start(yaml);
    const two = await start(yaml);
    await get(one, '/api/status/500');
    await get(one, '/api/status/500');
    expect((await get(one, '/api/echo')).body.error).toBe('circuit_open');

    // The other gateway learns it within a sync (a second), without a request of its own.
    await until(async () => (await breakers(two)).api?.state === 'open', 2_500, 'the second gateway to open');
    const seen = upstream.arrivals.length;
    const refused = await get(two, '/api/echo');
    expect(refused.body.error).toBe('circuit_open');
    expect(refused.body.retryAfterMs).toBeGreaterThan(500);
    expect(refused.body.retryAfterMs).toBeLessThan(3_000);
    expect(upstream.arrivals.length).toBe(seen);
    expect(logged(two, 'circuit breaker opened by another instance')).toEqual([expect.objectContaining({ upstream: 'api', learned: true })]);
    // Its own opening read back from Redis is not taken for another.
    expect(logged(one, 'circuit breaker opened by another instance')).toEqual([]);

    // Both half-open around the same time; the second probes and closes on its own.
    await until(async () => (await breakers(two)).api?.state === 'halfOpen', 4_000, 'the second gateway to half-open');
    expect((await get(two, '/api/echo')).status).toBe(200);
    expect((await breakers(two)).api).toMatchObject({ state: 'closed' });
    expect((await breakers(one)).api?.state).not.toBe('closed');
    expect(await redis().keys()).toEqual(expect.arrayContaining([expect.stringContaining(':breaker:api')]));
  });
});
