/**
 * One contract, two stores: every case below runs against MemoryStore and RedisStore with the
 * same code and the same exact expectations, on a driven clock (the Redis script takes its time
 * from ARGV instead of Redis TIME). Redis-only checks (key TTLs, failure modes, a differential
 * run against the memory store) follow the contract.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MemoryStore } from '../src/store/memory.js';
import { RedisStore } from '../src/store/redis.js';
import { StoreUnavailableError, type DecideRequest, type LimitStore, type RuleOutcome, type StoreDecision, type StoreRule } from '../src/store/store.js';
import { describeWithRedis, redisStoreFixture, type TestRedis } from './helpers/redis.js';
import { relayTo, type Relay } from './helpers/relay.js';

const T0 = 1_700_000_000_000; // 2023-11-14T22:13:20Z: 2_800_000 ms before the hour ends, 6_400_000 before the day
const HOUR = 3_600_000;
const DAY = 86_400_000;
let now = T0;
const clock = () => now;

interface Backend {
  name: string;
  /** Keys of one test share one hash tag (one Redis Cluster slot), unique to the test. */
  tag(): string;
  store(): LimitStore;
  /** The state keys the test wrote live exactly (memory) or about (Redis: real-time TTL) this long. */
  expectLifetimes(expected: Record<string, number>): Promise<void>;
}

// Rules and requests, with the defaults of a plain enforced rule.
const base = { burst: 1, fair: undefined, shadow: false, periodMs: 0 };
const rate = (key: string | string[], limit: number, periodMs: number, burst = 1, more: Partial<StoreRule> = {}): StoreRule => ({
  ...base, kind: 'rate', keys: [key].flat(), limit, periodMs, burst, ...more,
});
const quota = (key: string, limit: number, periodMs: number, more: Partial<StoreRule> = {}): StoreRule => ({
  ...base, kind: 'quota', keys: [key], limit, periodMs, ...more,
});
const concurrency = (key: string | string[], limit: number): StoreRule => ({ ...base, kind: 'concurrency', keys: [key].flat(), limit });
const fairRate = (key: string, limit: number, periodMs: number, burst: number, tenant: string, weight = 1, reservePerMs = 0): StoreRule =>
  rate(key, limit, periodMs, burst, { fair: { tenant, weight, reservePerMs, activeWindowMs: 1000 } });

let leases = 0;
const request = (rules: StoreRule[], more: Partial<DecideRequest> = {}): DecideRequest => ({
  rules, candidates: 1, lease: `lease-${++leases}`, leaseTtlMs: 30_000, ...more,
});
const outcome = (ok: boolean, waitMs: number, remaining: number, resetMs: number) => ({ ok, waitMs, remaining, resetMs });
/** Every rule lowered to the same count. */
const to = (rules: StoreRule[], remaining: number) => rules.map((rule) => ({ rule, remaining }));

function contract(backend: Backend): void {
  const decide = (rules: StoreRule[], more: Partial<DecideRequest> = {}) => backend.store().decide(request(rules, more));
  const one = async (rules: StoreRule[], more: Partial<DecideRequest> = {}) => (await decide(rules, more)).outcomes[0]!;
  let k: string;
  beforeEach(() => {
    now = T0;
    k = backend.tag();
  });

  it('rate, burst 1: one request per interval, exact waits', async () => {
    const r = rate(`${k}:r`, 10, 10_000); // one per 1000 ms
    expect(await one([r])).toEqual(outcome(true, 0, 0, 1000));
    expect(await one([r])).toEqual(outcome(false, 1000, 0, 1000));
    now += 999;
    expect((await one([r])).ok).toBe(false);
    now += 1;
    expect(await one([r])).toEqual(outcome(true, 0, 0, 1000));
  });

  it('rate, burst 5: five back to back, then the rate; wait - 1 refused, wait admitted', async () => {
    const r = rate(`${k}:r`, 10, 10_000, 5);
    for (let i = 1; i <= 5; i++) expect(await one([r])).toEqual(outcome(true, 0, 5 - i, i * 1000));
    const refused = await one([r]);
    expect(refused).toEqual(outcome(false, 1000, 0, 5000));
    now += refused.waitMs - 1;
    expect((await one([r])).ok).toBe(false);
    now += 1;
    expect(await one([r])).toEqual(outcome(true, 0, 0, 5000));
  });

  it('rate: no double burst at a window edge (any 10 s holds at most limit + burst - 1)', async () => {
    const r = rate(`${k}:r`, 10, 10_000, 5);
    const admitted: number[] = [];
    for (let t = 0; t < 30_000; t += 100, now = T0 + t) {
      for (let i = 0; i < 3; i++) if ((await decide([r])).admitted) admitted.push(t);
    }
    expect(admitted.length).toBe(34); // 5 at once, then one a second from t = 1 s
    expect(maxInWindow(admitted, 10_000)).toBe(14);
  });

  it('quota per hour and per day: by calendar period, refused until its end', async () => {
    const hourly = quota(`${k}:h`, 3, HOUR);
    for (let i = 1; i <= 3; i++) expect(await one([hourly])).toEqual(outcome(true, 0, 3 - i, 2_800_000));
    expect(await one([hourly])).toEqual(outcome(false, 2_800_000, 0, 2_800_000));
    now = T0 + 2_800_000 - 1;
    expect(await one([hourly])).toEqual(outcome(false, 1, 0, 1));
    now += 1;
    expect(await one([hourly])).toEqual(outcome(true, 0, 2, HOUR));

    now = T0;
    const daily = quota(`${k}:d`, 1, DAY);
    expect(await one([daily])).toEqual(outcome(true, 0, 0, 6_400_000));
    now = T0 + 6_400_000 - 1;
    expect(await one([daily])).toEqual(outcome(false, 1, 0, 1));
    now += 1;
    expect(await one([daily])).toEqual(outcome(true, 0, 0, DAY));
  });

  it('concurrency: refused at the limit with no wait; release frees a slot', async () => {
    const c = concurrency(`${k}:c`, 2);
    expect(await one([c], { lease: 'a' })).toEqual(outcome(true, 0, 1, 0));
    expect(await one([c], { lease: 'b' })).toEqual(outcome(true, 0, 0, 0));
    expect(await one([c], { lease: 'c' })).toEqual(outcome(false, 0, 0, 0));
    await backend.store().release([{ key: `${k}:c`, id: 'a' }]);
    expect(await one([c], { lease: 'c' })).toEqual(outcome(true, 0, 0, 0));
  });

  it('concurrency: a lease expires after its TTL, unless renewed', async () => {
    const c = concurrency(`${k}:c`, 1);
    const store = backend.store();
    expect((await decide([c], { lease: 'x', leaseTtlMs: 1000 })).admitted).toBe(true);
    now += 999;
    expect((await decide([c])).admitted).toBe(false);
    await store.renew([{ key: `${k}:c`, id: 'x' }], 1000); // now x expires at T0 + 1999
    now = T0 + 1500;
    expect((await decide([c])).admitted).toBe(false);
    now = T0 + 1999;
    expect(await one([c], { lease: 'y', leaseTtlMs: 1000 })).toEqual(outcome(true, 0, 0, 0));
    await store.renew([{ key: `${k}:c`, id: 'gone' }], 1000); // an unknown lease is not created
    now = T0 + 2999;
    expect(await one([c])).toEqual(outcome(true, 0, 0, 0));
  });

  it('peek: each rule read as it stands, nothing consumed', async () => {
    const store = backend.store();
    const r = rate(`${k}:r`, 10, 10_000, 5);
    const q = quota(`${k}:q`, 3, HOUR);
    const c = concurrency(`${k}:c`, 2);
    const f = fairRate(`${k}:f`, 100, 1000, 10, 'a');
    expect(await store.peek([r, q, c, f])).toEqual([outcome(true, 0, 5, 0), outcome(true, 0, 3, 2_800_000), outcome(true, 0, 2, 0), outcome(true, 0, 10, 0)]);
    await decide([r, q, c, f]);
    await decide([r, q, c, f]);
    const peeked = await store.peek([r, q, c, f]);
    expect(peeked).toEqual([outcome(true, 0, 3, 2000), outcome(true, 0, 1, 2_800_000), outcome(false, 0, 0, 0), outcome(true, 0, 8, 20)]);
    expect(await store.peek([r, q, c, f])).toEqual(peeked); // a peek takes nothing
    await decide([q]);
    expect((await store.peek([q]))[0]).toEqual(outcome(false, 2_800_000, 0, 2_800_000));
  });

  it('peek and lower of a fair-shared rule while other tenants are active and waiting', async () => {
    const store = backend.store();
    const a = fairRate(`${k}:f`, 10, 1000, 3, 'a');
    const b = fairRate(`${k}:f`, 10, 1000, 3, 'b', 2, 0.002);
    for (let i = 0; i < 4; i++) await decide([a]); // a takes the burst; its fourth is refused
    expect((await decide([b])).admitted).toBe(false); // b waits now
    const [forA, forB] = [(await store.peek([a]))[0]!, (await store.peek([b]))[0]!];
    expect(forA.ok).toBe(false);
    expect(forB.ok).toBe(false);
    now += 100; // one slot back: b's (it waits, behind its share); a, beyond its own, may not borrow it
    expect((await store.peek([b]))[0]).toMatchObject({ ok: true, remaining: 1 });
    expect((await store.peek([a]))[0]!.ok).toBe(false);
    await store.lower(to([b], 0));
    expect((await store.peek([b]))[0]!.ok).toBe(false);
    expect((await decide([b])).admitted).toBe(false);
  });

  it('lower: rate and quota pulled down to what the upstream reports, never up; concurrency untouched', async () => {
    const store = backend.store();
    const r = rate(`${k}:r`, 10, 10_000, 5);
    const q = quota(`${k}:q`, 100, HOUR);
    const c = concurrency(`${k}:c`, 2);
    const f = fairRate(`${k}:f`, 100, 1000, 10, 'a');
    await decide([r, q, f]);
    await store.lower(to([r, q, c, f], 2));
    expect((await store.peek([r, q, c, f])).map((o) => o.remaining)).toEqual([2, 2, 2, 2]);
    await store.lower(to([r, q, f], 3)); // more than the state allows: nothing changes
    expect((await store.peek([r, q, f])).map((o) => o.remaining)).toEqual([2, 2, 2]);
    expect((await decide([r])).admitted).toBe(true);
    expect((await decide([r])).admitted).toBe(true);
    expect(await one([r])).toEqual(outcome(false, 1000, 0, 5000));
    now += 1000; // a lowered bucket refills at its own rate
    expect((await decide([r])).admitted).toBe(true);
    await store.lower(to([q], 0));
    expect((await one([q])).ok).toBe(false);
  });

  it('lower: each rule to its own count, in one call', async () => {
    const store = backend.store();
    const r = rate(`${k}:r`, 10, 10_000, 5);
    const q = quota(`${k}:q`, 100, HOUR);
    await store.lower([
      { rule: r, remaining: 1 },
      { rule: q, remaining: 40 },
    ]);
    expect((await store.peek([r, q])).map((o) => o.remaining)).toEqual([1, 40]);
  });

  it('all admit or none consumes', async () => {
    const rules = [rate(`${k}:r`, 10, 10_000, 5), concurrency(`${k}:c`, 2), quota(`${k}:q`, 1, HOUR)];
    expect((await decide(rules)).outcomes.map((o) => o.remaining)).toEqual([4, 1, 0]);
    const refused = await decide(rules);
    expect(refused.admitted).toBe(false);
    expect(refused.outcomes.map((o) => o.ok)).toEqual([true, true, false]);
    // Had the refused request consumed, the rate would have 2 left and the concurrency none.
    expect((await decide(rules.slice(0, 2))).outcomes.map((o) => o.remaining)).toEqual([3, 0]);
  });

  it('a full shadow rule is reported, never refuses', async () => {
    const rules = [rate(`${k}:r`, 10, 10_000, 5), quota(`${k}:q`, 1, HOUR, { shadow: true })];
    expect(await decide(rules)).toEqual({ admitted: true, candidate: 0, outcomes: [outcome(true, 0, 4, 1000), outcome(true, 0, 0, 2_800_000)] });
    expect(await decide(rules)).toEqual({
      admitted: true, candidate: 0, outcomes: [outcome(true, 0, 3, 2000), outcome(false, 2_800_000, 0, 2_800_000)],
    });
  });

  it('candidates: the least loaded that admits, else the one that admits soonest', async () => {
    const keys = [0, 1, 2].map((i) => `${k}:cred${i}`);
    const shared = rate(`${k}:shared`, 100, 10_000, 100); // evaluated and consumed once per decision
    const perCredential = rate(keys, 10, 10_000, 2);
    const pick = async () => {
      const d = await decide([shared, perCredential], { candidates: 3 });
      return [d.admitted, d.candidate, d.outcomes[0]!.remaining];
    };
    expect(await pick()).toEqual([true, 0, 99]);
    expect(await pick()).toEqual([true, 1, 98]);
    expect(await pick()).toEqual([true, 2, 97]);
    expect(await pick()).toEqual([true, 0, 96]); // all half full: the lowest index
    expect(await pick()).toEqual([true, 1, 95]); // 0 is full: another one
    expect(await pick()).toEqual([true, 2, 94]);
    expect(await pick()).toEqual([false, 0, 93]); // all full, all free in 1000 ms

    // All full, credential 1 the soonest free: fill 1 at T0, 0 and 2 at T0 + 400.
    const others = [0, 1, 2].map((i) => `${k}:other${i}`);
    for (const i of [1, 0, 2]) {
      now = T0 + (i === 1 ? 0 : 400);
      for (let n = 0; n < 2; n++) expect((await decide([rate(others[i]!, 10, 10_000, 2)])).admitted).toBe(true);
    }
    now = T0 + 500;
    const soonest = await decide([rate(others, 10, 10_000, 2)], { candidates: 3 });
    expect(soonest.admitted).toBe(false);
    expect(soonest.candidate).toBe(1);
    expect(soonest.outcomes[0]!.waitMs).toBeCloseTo(500, 9);
  });

  it('excluded candidates: never chosen, even the least loaded or the soonest free; the choice among the rest is unchanged', async () => {
    const keys = [0, 1, 2].map((i) => `${k}:cred${i}`);
    const shared = rate(`${k}:shared`, 100, 10_000, 100);
    const perCredential = rate(keys, 10, 10_000, 2);
    const pick = async (excluded?: number[]) => {
      const d = await decide([shared, perCredential], { candidates: 3, excluded });
      return [d.admitted, d.candidate, d.outcomes[0]!.remaining, d.outcomes[1]!.remaining];
    };
    // All empty: 0 would win the tie, but it is out.
    expect(await pick([0])).toEqual([true, 1, 99, 1]);
    expect(await pick([0])).toEqual([true, 2, 98, 1]);
    // Excluding one that would not have been chosen changes nothing: 0 is the least loaded.
    expect(await pick([2])).toEqual([true, 0, 97, 1]);
    expect(await pick([])).toEqual([true, 0, 96, 0]); // an empty list excludes nobody
    expect(await pick([0, 2])).toEqual([true, 1, 95, 0]);
    // Only 2 has room, and it is out: refused (on the rest's soonest, the lowest of equals), nothing consumed.
    expect(await pick([2])).toEqual([false, 0, 94, 0]);
    expect(await pick([0, 1])).toEqual([true, 2, 94, 0]);
    expect(await pick([0, 1])).toEqual([false, 2, 93, 0]);
    // The shared rule counted once per admission, refusals none: 6 taken, this 7th leaves 93.
    expect((await decide([shared])).outcomes[0]!.remaining).toBe(93);

    // All full, credential 1 the soonest free, then 2, then 0: fill 1 at T0, 2 at T0 + 200, 0 at T0 + 400.
    const others = [0, 1, 2].map((i) => `${k}:other${i}`);
    for (const [i, at] of [[1, 0], [2, 200], [0, 400]] as const) {
      now = T0 + at;
      for (let n = 0; n < 2; n++) expect((await decide([rate(others[i]!, 10, 10_000, 2)])).admitted).toBe(true);
    }
    now = T0 + 500;
    const soonest = async (excluded?: number[]) => {
      const d = await decide([rate(others, 10, 10_000, 2)], { candidates: 3, excluded });
      expect(d.admitted).toBe(false);
      return [d.candidate, Math.round(d.outcomes[0]!.waitMs)];
    };
    expect(await soonest()).toEqual([1, 500]);
    expect(await soonest([1])).toEqual([2, 700]);
    expect(await soonest([0])).toEqual([1, 500]);
    expect(await soonest([1, 2])).toEqual([0, 900]);
  });

  it('excluded candidates: a rule shared by every candidate (concurrency) still counts once, and its lease is taken once', async () => {
    const keys = [0, 1, 2].map((i) => `${k}:cred${i}`);
    const inFlight = concurrency(`${k}:inflight`, 2);
    const perCredential = rate(keys, 10, 10_000, 5);
    const first = await decide([inFlight, perCredential], { candidates: 3, excluded: [0] });
    expect([first.admitted, first.candidate, first.outcomes[0]!.remaining]).toEqual([true, 1, 1]);
    const second = await decide([inFlight, perCredential], { candidates: 3, excluded: [0, 1] });
    expect([second.admitted, second.candidate, second.outcomes[0]!.remaining]).toEqual([true, 2, 0]);
    // Full: refused on the shared rule, whichever candidates are out.
    const third = await decide([inFlight, perCredential], { candidates: 3, excluded: [1] });
    expect([third.admitted, third.candidate, third.outcomes[0]]).toEqual([false, 0, outcome(false, 0, 0, 0)]);
    // Each per-credential bucket was consumed once, by its own admission only.
    const level = async (i: number) => (await decide([rate(keys[i]!, 10, 10_000, 5)])).outcomes[0]!.remaining;
    expect([await level(0), await level(1), await level(2)]).toEqual([4, 3, 3]);
  });

  describe('fair share of one rate (100/s, burst 10) between tenants, over 20 s', () => {
    const run = (senders: Sender[], capacity = 100, burst = 10, seconds = 20, tickMs = 10) =>
      flood(backend.store(), (s) => fairRate(`${k}:fair`, capacity, 1000, burst, s.tenant, s.weight, s.reservePerMs), senders, seconds * 1000, tickMs);
    // Admitted per second from the second second on, once every tenant has been seen.
    const perSecond = (times: number[] | undefined, seconds = 20) => times!.filter((t) => t >= 1000).length / (seconds - 1);

    it('equal weights, both flooding: equal shares, the whole capacity, never above the global rate', async () => {
      const got = await run([{ tenant: 'a', perTick: 3 }, { tenant: 'b', perTick: 3 }]);
      expect(perSecond(got.a)).toBeCloseTo(50, 0);
      expect(perSecond(got.b)).toBeCloseTo(50, 0);
      expect(maxInWindow(got.all, 1000)).toBeLessThanOrEqual(100 + 10 - 1);
    });

    it('weights 2:1 get 2:1', async () => {
      const got = await run([{ tenant: 'a', perTick: 3, weight: 2 }, { tenant: 'b', perTick: 3 }]);
      expect(perSecond(got.a) / perSecond(got.b)).toBeCloseTo(2, 1);
      expect(maxInWindow(got.all, 1000)).toBeLessThanOrEqual(109);
    });

    it('a reserve holds against a 100x flooder (for a tenant that waits as told)', async () => {
      // 25/s shared; r asks 20/s with 15/s reserved (its weight alone would give it 12.5/s),
      // f asks 2000/s. Ticks of 50 ms.
      const senders = [{ tenant: 'r', perTick: 1, reservePerMs: 0.015, polite: true }, { tenant: 'f', perTick: 100 }];
      const got = await run(senders, 25, 5, 10, 50);
      expect(perSecond(got.r, 10)).toBeGreaterThanOrEqual(15 * 0.97);
      expect(perSecond(got.all, 10)).toBeCloseTo(25, 0);
      expect(maxInWindow(got.all, 1000)).toBeLessThanOrEqual(25 + 5 - 1);
    });

    it('work-conserving: a lone tenant gets the whole capacity, and what a light tenant leaves', async () => {
      const alone = await run([{ tenant: 'a', perTick: 3 }]);
      expect(perSecond(alone.a)).toBeCloseTo(100, 0);
      expect(maxInWindow(alone.all, 1000)).toBeLessThanOrEqual(109);
      k = backend.tag();
      const light = await run([{ tenant: 'a', perTick: 3 }, { tenant: 'b', perTick: 1, every: 10, polite: true }]);
      expect(perSecond(light.b)).toBeCloseTo(10, 0);
      expect(perSecond(light.a)).toBeCloseTo(90, 0);
    });
  });

  it('idle state expires, with the lifetimes of the memory store', async () => {
    const rules = [
      rate(`${k}:r`, 10, 10_000, 5), // 3 requests: drained in 3000 ms, + 1
      fairRate(`${k}:f`, 10, 10_000, 5, 't'), // 5 demand windows of 1000 ms
      quota(`${k}:q`, 5, HOUR), // the period's end + 60 s
      concurrency(`${k}:c`, 5), // the lease's TTL
    ];
    for (let i = 0; i < 3; i++) expect((await decide(rules)).admitted).toBe(true);
    await backend.expectLifetimes({
      [`${k}:r`]: 3001,
      [`${k}:f`]: 5000,
      [`${k}:q:${Math.floor(T0 / HOUR)}`]: 2_800_000 + 60_000,
      [`${k}:c`]: 30_000,
    });
  });
}

interface Sender {
  tenant: string;
  /** New requests per tick (every `every` ticks). */
  perTick: number;
  every?: number;
  weight?: number;
  reservePerMs?: number;
  /** Asks again after the wait a refusal gives; otherwise a refused request is dropped. */
  polite?: boolean;
}

/** Every tenant sends its requests each tick, interleaved, the first sender rotating; polite ones retry. */
async function flood(store: LimitStore, rule: (s: Required<Sender>) => StoreRule, senders: Sender[], durationMs: number, tickMs: number) {
  const got: Record<string, number[]> & { all: number[] } = { all: [] };
  const full = senders.map((s) => ({ every: 1, weight: 1, reservePerMs: 0, polite: false, ...s }));
  for (const s of full) got[s.tenant] = [];
  let retries: { s: Required<Sender>; at: number }[] = [];
  for (let t = 0, tick = 0; t < durationMs; t += tickMs, tick++) {
    now = T0 + t;
    const batch = retries.filter((r) => r.at <= now).map((r) => r.s);
    retries = retries.filter((r) => r.at > now);
    for (let i = 0; i < Math.max(...full.map((s) => s.perTick)); i++) {
      for (let j = 0; j < full.length; j++) {
        const s = full[(j + tick) % full.length]!;
        if (i < s.perTick && tick % s.every === 0) batch.push(s);
      }
    }
    // Sent together (one pipeline to Redis), decided in this order by either store.
    const decisions = await Promise.all(batch.map((s) => store.decide(request([rule(s)]))));
    decisions.forEach((d, i) => {
      const s = batch[i]!;
      if (d.admitted) {
        got[s.tenant]!.push(t);
        got.all.push(t);
      } else if (s.polite) retries.push({ s, at: now + d.outcomes[0]!.waitMs });
    });
  }
  return got;
}

/** The most timestamps (sorted) inside any half-open window [t, t + span). */
function maxInWindow(times: readonly number[], span: number): number {
  let max = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (times[i]! - times[j]! >= span) j++;
    max = Math.max(max, i - j + 1);
  }
  return max;
}

describe('MemoryStore', () => {
  let store: MemoryStore;
  let test = 0;
  beforeEach(() => {
    store = new MemoryStore(clock);
  });
  afterEach(() => store.close());
  contract({
    name: 'memory',
    tag: () => `{mem:${++test}}`,
    store: () => store,
    // Exact: at start + L - 1 the keys living L or longer remain, at start + L only longer ones.
    async expectLifetimes(expected) {
      const start = now;
      const lifetimes = Object.values(expected).sort((a, b) => a - b);
      for (const l of lifetimes) {
        now = start + l - 1;
        expect(store.size()).toBe(lifetimes.filter((x) => x >= l).length);
        now = start + l;
        expect(store.size()).toBe(lifetimes.filter((x) => x > l).length);
      }
      expect(store.size()).toBe(0);
    },
  });
});

await describeWithRedis('RedisStore', () => {
  const fixture = redisStoreFixture(clock);
  let test = 0;
  contract({
    name: 'redis',
    tag: () => `{${fixture().redis.prefix}:${++test}}`,
    store: () => fixture().store,
    // PEXPIRE runs on Redis's real clock, not the driven one: check that the keys are the
    // memory store's keys and that each TTL is what the memory store gives (less the time since).
    async expectLifetimes(expected) {
      const tag = Object.keys(expected)[0]!.split('}')[0]!;
      const { redis } = fixture();
      const keys = (await redis.keys()).filter((key) => key.startsWith(`${tag}}`));
      expect(keys.sort()).toEqual(Object.keys(expected).sort());
      for (const [key, ms] of Object.entries(expected)) {
        const ttl = await redis.client.pttl(key);
        expect(ttl).toBeLessThanOrEqual(ms);
        expect(ttl).toBeGreaterThan(ms - 500);
      }
    },
  });
  redisOnly(fixture);
});

/** Failure modes and a differential run, only meaningful for Redis. */
function redisOnly(ctx: () => { redis: TestRedis; store: RedisStore }): void {
  it('counts the instances sharing the Redis (heartbeat)', async () => {
    const { redis, store } = ctx();
    const other = RedisStore.connect({ url: redis.url, prefix: redis.prefix, timeoutMs: 2000 });
    try {
      expect(await other.waitReady(5000)).toBe(true);
      await expect.poll(() => other.instances(), { timeout: 2000 }).toBe(2);
      expect(store.instances()).toBeGreaterThanOrEqual(1);
    } finally {
      await other.close();
    }
    expect(await redis.client.zcard(`{${redis.prefix}}:instances`)).toBe(1); // the closed one left
  });

  it('survives SCRIPT FLUSH (NOSCRIPT: ioredis loads the script again)', async () => {
    const { redis, store } = ctx();
    await redis.client.script('FLUSH');
    const d = await store.decide(request([rate(`{${redis.prefix}:flush}:r`, 10, 10_000)]));
    expect(d.admitted).toBe(true);
  });

  it('decides exactly as the memory store on a mixed random workload', async () => {
    const { redis, store } = ctx();
    const memory = new MemoryStore(clock);
    const tag = `{${redis.prefix}:diff}`;
    let seed = 42;
    const random = () => ((seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648) / 2_147_483_648);
    const creds = [0, 1, 2].map((i) => `${tag}:cred${i}`);
    const ruleSets: StoreRule[][] = [
      [rate(`${tag}:r`, 20, 1000, 4), concurrency(`${tag}:c`, 3)],
      [rate(creds, 5, 1000, 2), quota(`${tag}:q`, 40, 60_000, { shadow: true })],
      [fairRate(`${tag}:f`, 10, 1000, 3, 'a'), quota(`${tag}:q2`, 200, HOUR)],
      [fairRate(`${tag}:f`, 10, 1000, 3, 'b', 2, 0.002)],
    ];
    const held: { key: string; id: string }[] = [];
    const seen = { admitted: 0, refused: 0, candidates: new Set<number>(), fairRefused: 0, lowered: 0 };
    now = T0;
    for (let i = 0; i < 1500; i++) {
      now += Math.floor(random() * 60);
      const rules = ruleSets[Math.floor(random() * ruleSets.length)]!;
      const req = request(rules, { candidates: rules[0]!.keys.length, leaseTtlMs: 500 });
      const [a, b] = [memory.decideNow(req), await store.decide(req)];
      expectSameDecision(b, a);
      seen[a.admitted ? 'admitted' : 'refused']++;
      seen.candidates.add(a.candidate);
      if (rules[0]!.fair && !a.outcomes[0]!.ok) seen.fairRefused++;
      if (a.admitted && rules[1]?.kind === 'concurrency') held.push({ key: rules[1].keys[0]!, id: req.lease });
      // Now and then a read (the status API's) and a lowering (an upstream's count), on both: the
      // same answers, and the decisions after them stay the same.
      const single = rules.flatMap((rule) => rule.keys.map((key) => ({ ...rule, keys: [key] })));
      if (random() < 0.1) expectSamePeek(await store.peek(single), await memory.peek(single));
      if (random() < 0.05) {
        const remaining = Math.floor(random() * 4);
        await Promise.all([memory.lower(to(single, remaining)), store.lower(to(single, remaining))]);
        seen.lowered++;
      }
      if (held.length > 0 && random() < 0.3) {
        const lease = held.splice(Math.floor(random() * held.length), 1);
        await Promise.all([memory.release(lease), store.release(lease)]);
      }
    }
    await memory.close();
    // The workload is worth its name: it admits and refuses, by fair share and by other rules.
    expect(seen.admitted).toBeGreaterThan(800);
    expect(seen.fairRefused).toBeGreaterThan(60);
    expect(seen.refused - seen.fairRefused).toBeGreaterThan(20);
    expect([...seen.candidates].sort()).toEqual([0, 1, 2]);
    expect(seen.lowered).toBeGreaterThan(30);
  });

  it('fails fast with StoreUnavailableError while Redis hangs, and answers again when it resumes', async () => {
    const { redis } = ctx();
    await withRelay(redis, async (relay, store, req) => {
      relay.pause(); // bytes wait in the socket buffers, as with a stopped Redis process
      const started = Date.now();
      await expect(store.decide(req())).rejects.toBeInstanceOf(StoreUnavailableError);
      expect(Date.now() - started).toBeLessThan(200 + 150);
      await store.release([{ key: `{${redis.prefix}:relay}:c`, id: 'x' }]); // never throws
      relay.resume();
      expect((await store.decide(req())).admitted).toBe(true);
    });
  });

  it('drops a half-open connection (bytes vanish) and reconnects by itself', async () => {
    const { redis } = ctx();
    await withRelay(redis, async (relay, store, req) => {
      relay.blackhole(); // the current connection only: a new one goes through
      await expect(store.decide(req())).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect.poll(async () => (await store.decide(req()).catch(() => undefined))?.admitted, { timeout: 5000, interval: 100 }).toBe(true);
    });
  });
}

async function withRelay(redis: TestRedis, body: (relay: Relay, store: RedisStore, req: () => DecideRequest) => Promise<void>) {
  const relay = await relayTo(6379);
  const store = RedisStore.connect({ url: `redis://127.0.0.1:${relay.port}`, prefix: redis.prefix, timeoutMs: 200, clock });
  try {
    expect(await store.waitReady(5000)).toBe(true);
    const req = () => request([rate(`{${redis.prefix}:relay}:r`, 1000, 1000, 1000)]);
    expect((await store.decide(req())).admitted).toBe(true);
    await body(relay, store, req);
  } finally {
    await store.close();
    await relay.close();
  }
}

function expectSameDecision(actual: StoreDecision, expected: StoreDecision): void {
  expect([actual.admitted, actual.candidate]).toEqual([expected.admitted, expected.candidate]);
  actual.outcomes.forEach((o, i) => {
    const e = expected.outcomes[i]!;
    expect([o.ok, o.remaining]).toEqual([e.ok, e.remaining]);
    expect(Math.abs(o.waitMs - e.waitMs)).toBeLessThanOrEqual(1e-6 * Math.max(1, e.waitMs));
    expect(Math.abs(o.resetMs - e.resetMs)).toBeLessThanOrEqual(1e-6 * Math.max(1, e.resetMs));
  });
}

function expectSamePeek(actual: readonly RuleOutcome[], expected: readonly RuleOutcome[]): void {
  expectSameDecision({ admitted: true, candidate: 0, outcomes: [...actual] }, { admitted: true, candidate: 0, outcomes: [...expected] });
}

describe('RedisStore without a reachable Redis', () => {
  const unreachable = [
    ['a closed port', 'redis://127.0.0.1:1'],
    ['a cluster of closed ports', 'redis://127.0.0.1:1,redis://127.0.0.1:2'],
  ];
  it.each(unreachable)('rejects decide with StoreUnavailableError within the timeout (%s)', async (_, url) => {
    const store = RedisStore.connect({ url, timeoutMs: 300 });
    const events: string[] = [];
    store.on('unavailable', () => events.push('unavailable'));
    try {
      for (let i = 0; i < 3; i++) {
        const started = Date.now();
        await expect(store.decide(request([rate('{x}:r', 1, 1000)]))).rejects.toBeInstanceOf(StoreUnavailableError);
        expect(Date.now() - started).toBeLessThan(300 + 150);
      }
      await store.release([{ key: '{x}:c', id: 'a' }]);
      await store.renew([{ key: '{x}:c', id: 'a' }], 1000);
      expect(store.ready()).toBe(false);
      expect(store.instances()).toBe(1);
      await expect.poll(() => events, { timeout: 3000 }).toEqual(['unavailable']);
    } finally {
      await store.close();
    }
  });
});
