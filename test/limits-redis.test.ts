/**
 * Several gateways sharing one Redis act as one gateway: the strict upstream never sees more than
 * a rule allows, whichever instance the requests come through. And when Redis dies, store.onError
 * decides (local / deny / allow), and the gateways go back to Redis by themselves when it returns.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { concurrencyViolations, rateViolations } from './helpers/limit-check.js';
import { drive } from './helpers/load.js';
import { ownRedis, redisAvailable, sharedRedis, type OwnRedis, type TestRedis } from './helpers/redis.js';
import { startStrictUpstream, type StrictUpstream } from './helpers/strict-upstream.js';

const ACME = { tenant: 'acme', key: 'acme-secret-key-1' };

let upstream: StrictUpstream;
let redis: TestRedis;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  if (!(await redisAvailable())) throw new Error('Redis is not running on 127.0.0.1:6379 (start it, or run .ci/run)');
  redis = await sharedRedis();
  upstream = await startStrictUpstream();
});
afterAll(async () => {
  await upstream.close();
  await redis.cleanup();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  gateways = [];
  upstream.reset();
});

function config(rules: string, store = `store: { type: redis, url: "${redis.url}", prefix: ${redis.prefix} }`): string {
  return testConfig(
    `  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
    limits:
${rules}`,
    store,
  );
}

async function start(count: number, yaml: string): Promise<TestGateway[]> {
  gateways = await Promise.all(Array.from({ length: count }, () => startGateway(yaml)));
  return gateways;
}

/** The same load through every gateway at once. */
function load(gws: TestGateway[], path: string, workersEach: number, durationMs: number) {
  return Promise.all(gws.map((gw) => drive({ gatewayUrl: gw.proxyUrl, path, ...ACME, concurrency: workersEach, durationMs })));
}

async function get(gw: TestGateway, path = '/api/x') {
  const res = await request(`${gw.proxyUrl}${path}`, { headers: { 'x-sluice-key': `${ACME.tenant}:${ACME.key}` } });
  const body = (await res.body.json()) as Record<string, unknown>;
  return { status: res.statusCode, body };
}

describe('three gateways sharing Redis', () => {
  it('never exceed a rate together', async () => {
    const gws = await start(3, config('      - { name: steady, rate: 20/s, burst: 3 }'));
    const results = await load(gws, '/api/x', 3, 2_000);
    const times = upstream.arrivals.map((a) => a.at);
    expect(results.every((r) => r.refused > 0)).toBe(true);
    expect(rateViolations(times, { count: 20, periodMs: 1_000, burst: 3 })).toBe(0);
    // Used, not wasted: about 2 s at 20/s plus the burst.
    expect(times.length).toBeGreaterThan(38);
  });

  it('never exceed a concurrency limit together', async () => {
    const gws = await start(3, config('      - { name: inflight, concurrency: 4 }'));
    await load(gws, '/api/slow/50', 3, 1_500);
    const intervals = upstream.arrivals.map((a) => ({ start: a.at, end: a.end ?? Infinity }));
    expect(concurrencyViolations(intervals, 4)).toBe(0);
    expect(upstream.inFlightMax()).toBe(4);
  });

  it('share one quota', async () => {
    const gws = await start(3, config('      - { name: daily, quota: 7/day, per: tenant }'));
    const results = await load(gws, '/api/x', 2, 500);
    expect(results.reduce((sum, r) => sum + r.admitted, 0)).toBe(7);
    expect(upstream.arrivals).toHaveLength(7);
    expect(results.flatMap((r) => r.retryAfterMs).every((ms) => ms > 0 && ms <= 86_400_000)).toBe(true);
  });

  it("answer with a Retry-After that holds on every instance", async () => {
    const [one, two, three] = await start(3, config('      - { name: calls, rate: 2/s }'));
    expect((await get(one!)).status).toBe(200);
    const refused = await get(two!);
    expect(refused.status).toBe(429);
    const waitMs = refused.body.retryAfterMs as number;
    expect(waitMs).toBeGreaterThan(400);
    expect(waitMs).toBeLessThanOrEqual(500);
    await sleep(waitMs);
    expect((await get(three!)).status).toBe(200);
  });

  it('take a script refused by Redis for a failed request, not for Redis being down', async () => {
    const { RedisStore } = await import('../src/store/redis.js');
    const { StoreUnavailableError } = await import('../src/store/store.js');
    const store = RedisStore.connect({ url: redis.url, prefix: redis.prefix, timeoutMs: 1_000 });
    try {
      expect(await store.waitReady(2_000)).toBe(true);
      const key = `{${redis.prefix}:odd}:calls:rate`;
      await redis.client.set(key, 'not a hash');
      const rule = { kind: 'rate' as const, keys: [key], limit: 1, periodMs: 1_000, burst: 1, fair: undefined, shadow: false };
      const failure = await store.decide({ rules: [rule], candidates: 1, lease: '-', leaseTtlMs: 30_000 }).catch((err: unknown) => err);
      expect(failure).toBeInstanceOf(Error);
      expect(failure).not.toBeInstanceOf(StoreUnavailableError);
      expect(String(failure)).toContain('WRONGTYPE');
    } finally {
      await redis.client.del(`{${redis.prefix}:odd}:calls:rate`);
      await store.close();
    }
  });

  it('let idle keys expire', async () => {
    const [gw] = await start(1, config('      - { name: quick, rate: 50/s, burst: 5 }\n      - { name: inflight, concurrency: 2 }'));
    for (let i = 0; i < 5; i++) expect((await get(gw!)).status).toBe(200);
    const keys = await redis.keys();
    expect(keys.length).toBeGreaterThan(0);
    // Every key has a lifetime (-1 would be none; -2 is a key already gone: an emptied lease set, a drained bucket).
    for (const key of keys) expect(await redis.client.pttl(key)).not.toBe(-1);
    // The rate bucket drains in 100 ms; the lease set lives as long as its longest lease (leaseTtl).
    await sleep(300);
    expect((await redis.keys()).filter((k) => k.includes(':quick:'))).toEqual([]);
  });
});

describe('store.onError when Redis dies', () => {
  let own: OwnRedis;
  beforeAll(async () => {
    own = await ownRedis();
  });
  afterAll(() => own.kill());

  const ownStore = (onError: string) => `store: { type: redis, url: "${own.url}", timeout: 200ms, onError: ${onError} }`;

  it('local: keeps enforcing in memory, logs it, and returns to Redis by itself', async () => {
    await own.start();
    const [gw] = await start(1, config('      - { name: calls, rate: 2/s }', ownStore('local')));
    expect((await get(gw!)).status).toBe(200);
    await own.kill();
    const asked = performance.now();
    const statuses = [(await get(gw!)).status, (await get(gw!)).status];
    expect(performance.now() - asked).toBeLessThan(1_000); // a dead Redis never hangs a request
    expect(statuses).toEqual([200, 429]); // the local bucket starts empty, then limits
    expect(gw!.logs.some((l) => l.level === 50 && String(l.msg).includes('limit store unavailable'))).toBe(true);
    await own.start();
    for (let i = 0; i < 40 && !gw!.logs.some((l) => String(l.msg).includes('limit store is back')); i++) {
      await get(gw!);
      await sleep(100);
    }
    expect(gw!.logs.some((l) => String(l.msg).includes('limit store is back'))).toBe(true);
  });

  it('deny: answers 503 store_unavailable', async () => {
    await own.start();
    const [gw] = await start(1, config('      - { name: calls, rate: 100/s }', ownStore('deny')));
    expect((await get(gw!)).status).toBe(200);
    await own.kill();
    const refused = await get(gw!);
    expect(refused.status).toBe(503);
    expect(refused.body.error).toBe('store_unavailable');
  });

  it('allow: lets requests through unlimited', async () => {
    await own.start();
    const [gw] = await start(1, config('      - { name: calls, rate: 1/min }', ownStore('allow')));
    expect((await get(gw!)).status).toBe(200);
    expect((await get(gw!)).status).toBe(429);
    await own.kill();
    expect([(await get(gw!)).status, (await get(gw!)).status]).toEqual([200, 200]);
  });

  it('refuses no request for longer than the store timeout when Redis starts without answering', async () => {
    await own.start();
    const [gw] = await start(1, config('      - { name: calls, rate: 100/s }', ownStore('deny')));
    expect((await get(gw!)).status).toBe(200);
    process.kill(own.pid(), 'SIGSTOP'); // alive, connected, silent
    try {
      const asked = performance.now();
      expect((await get(gw!)).status).toBe(503);
      expect(performance.now() - asked).toBeLessThan(600);
    } finally {
      process.kill(own.pid(), 'SIGCONT');
    }
  });
});
