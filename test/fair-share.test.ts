/**
 * Fair share (share: fair) measured at a strict upstream, on the memory store with one gateway and
 * on Redis with three gateways sharing it: equal weights split evenly, 2:1 weights split 2:1, a
 * reserve holds against a 100x flood, and capacity one tenant leaves goes to the other. The
 * upstream never sees more than the rule in any window. Shares are measured after the first
 * second, the time the demand estimate takes to see a flood (limits/fair.ts). The light tenants
 * honour Retry-After, as the guarantee assumes: with a burst of 1, a request that arrives just
 * after the flooder's is refused for the few ms until the next slot, and gets it when it asks then.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type TestGateway } from './helpers/gateway.js';
import { jainIndex, rateViolations } from './helpers/limit-check.js';
import { drive } from './helpers/load.js';
import { redisAvailable, sharedRedis, type TestRedis } from './helpers/redis.js';
import { nowMs, startStrictUpstream, type StrictUpstream } from './helpers/strict-upstream.js';

const RATE = 20;
const RUN_MS = 4_000;
const SETTLE_MS = 1_000;

let upstream: StrictUpstream;
beforeAll(async () => {
  upstream = await startStrictUpstream();
});
afterAll(() => upstream.close());

interface Tenant {
  name: string;
  weight: number;
  reserve?: string;
}

function config(tenants: Tenant[], store: string): string {
  const reserves = tenants.filter((t) => t.reserve).map((t) => `${t.name}: ${t.reserve}`);
  return `listen: { proxy: 127.0.0.1:0, admin: 127.0.0.1:0, drainTimeout: 5s }
${store}
tenants:
${tenants.map((t) => `  ${t.name}: { key: ${t.name}-secret-key, weight: ${t.weight} }`).join('\n')}
upstreams:
  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
    limits:
      - name: shared
        rate: ${RATE}/s
        share: fair
${reserves.length > 0 ? `        reserve: { ${reserves.join(', ')} }` : ''}
`;
}

interface Load {
  tenant: string;
  workers: number;
  rps?: number;
  /** Waits what a 429 says before its next request, as a well-behaved client does. */
  polite?: boolean;
}

/** Runs the loads through every gateway at once; returns admitted requests per second by tenant after SETTLE_MS. */
async function share(gateways: TestGateway[], loads: Load[]): Promise<Record<string, number>> {
  upstream.reset();
  const started = nowMs();
  await Promise.all(
    loads.flatMap((load) =>
      gateways.map((gw) =>
        drive({
          gatewayUrl: gw.proxyUrl,
          path: '/api/x',
          tenant: load.tenant,
          key: `${load.tenant}-secret-key`,
          concurrency: Math.max(1, Math.round(load.workers / gateways.length)),
          durationMs: RUN_MS,
          ...(load.rps ? { rps: load.rps / gateways.length } : {}),
          retryOn429: load.polite ?? false,
        }),
      ),
    ),
  );
  const times = upstream.arrivals.map((a) => a.at);
  expect(rateViolations(times, { count: RATE, periodMs: 1_000 })).toBe(0);
  const from = started + SETTLE_MS;
  const seconds = (RUN_MS - SETTLE_MS) / 1_000;
  const rates: Record<string, number> = {};
  // Printed so that a failure shows the shares it got.
  process.stdout.write(`${JSON.stringify(loads.map((l) => l.tenant))} `);
  for (const load of loads) {
    rates[load.tenant] = upstream.arrivals.filter((a) => a.tenant === load.tenant && a.at >= from && a.at <= started + RUN_MS).length / seconds;
  }
  process.stdout.write(`${JSON.stringify(rates)}\n`);
  return rates;
}

const stores = [
  { name: 'memory store, one gateway', instances: 1, redis: false },
  { name: 'Redis store, three gateways', instances: 3, redis: true },
];

describe.each(stores)('fair share on the $name', ({ instances, redis }) => {
  let shared: TestRedis | undefined;
  let store = '';

  beforeAll(async () => {
    if (!redis) return;
    if (!(await redisAvailable())) throw new Error('Redis is not running on 127.0.0.1:6379 (start it, or run .ci/run)');
    shared = await sharedRedis();
    store = `store: { type: redis, url: "${shared.url}", prefix: ${shared.prefix} }`;
  });
  afterAll(() => shared?.cleanup());

  /** Starts the gateways for these tenants, runs the loads through them, and closes them. */
  async function scenario(tenants: Tenant[], loads: Load[]): Promise<Record<string, number>> {
    const gws = await Promise.all(Array.from({ length: instances }, () => startGateway(config(tenants, store))));
    try {
      return await share(gws, loads);
    } finally {
      await Promise.all(gws.map((g) => g.close()));
    }
  }

  it('splits the capacity evenly between tenants of equal weight that both flood', async () => {
    const rates = await scenario([{ name: 'a', weight: 1 }, { name: 'b', weight: 1 }], [{ tenant: 'a', workers: 6 }, { tenant: 'b', workers: 6 }]);
    expect(jainIndex([rates.a!, rates.b!])).toBeGreaterThan(0.98);
    expect(rates.a! + rates.b!).toBeGreaterThan(RATE * 0.9);
  });

  it('splits it 2:1 for weights 2 and 1', async () => {
    const rates = await scenario([{ name: 'a', weight: 2 }, { name: 'b', weight: 1 }], [{ tenant: 'a', workers: 6 }, { tenant: 'b', workers: 6 }]);
    expect(rates.a! / rates.b!).toBeGreaterThan(1.7);
    expect(rates.a! / rates.b!).toBeLessThan(2.3);
  });

  it("keeps a tenant's reserve against a flood of 100 times its share", async () => {
    // b's weight alone would give it 2/s; its reserve guarantees 6/s, and it asks for 8/s.
    const rates = await scenario(
      [{ name: 'a', weight: 9 }, { name: 'b', weight: 1, reserve: '6/s' }],
      [{ tenant: 'a', workers: 12 }, { tenant: 'b', workers: 6, rps: 8, polite: true }],
    );
    // b gets about 5.2/s of its 6/s in this test: a polite client loses the moments between a refusal
    // and its retry, and 3 s count in steps of 0.33/s. 80% is the floor (a known gap, in the notes).
    expect(rates.b!).toBeGreaterThanOrEqual(6 * 0.8);
    // Slots held for b's reserve while its polite clients wait out a Retry-After can go unused
    // (three gateways see that over Redis a little late): 85%, not 90%, of the rate is the floor here.
    expect(rates.a! + rates.b!).toBeGreaterThan(RATE * 0.85);
  });

  it('gives the capacity a light tenant leaves to the busy one', async () => {
    const rates = await scenario(
      [{ name: 'a', weight: 1 }, { name: 'b', weight: 1 }],
      [{ tenant: 'a', workers: 6 }, { tenant: 'b', workers: 3, rps: 3, polite: true }],
    );
    expect(rates.b!).toBeGreaterThanOrEqual(3 * 0.85);
    expect(rates.a!).toBeGreaterThan((RATE - 3) * 0.85);
  });
});
