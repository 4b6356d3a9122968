/**
 * One contract, two credential stores: every case runs against MemoryTokenStore and the Redis
 * store (RedisStore.tokens()) with the same code and the same exact expectations, on a driven
 * clock (the scripts take their time from ARGV instead of Redis TIME). Redis-only checks (key
 * lifetimes, failure modes, a differential run against the memory store) follow the contract.
 */
import { beforeEach, describe, expect, it } from 'vitest';
import { MemoryTokenStore } from '../src/store/memory-tokens.js';
import { RedisStore } from '../src/store/redis.js';
import { StoreUnavailableError } from '../src/store/store.js';
import { CREDENTIAL_STATE_TTL_MS, type RefreshBudget, type RefreshGrant, type RefreshRequest, type RefuseReason, type TokenStore } from '../src/store/tokens.js';
import { describeWithRedis, redisStoreFixture, type TestRedis } from './helpers/redis.js';

const T0 = 1_700_000_000_000;
const HOUR = 3_600_000;
let now = T0;
const clock = () => now;

interface Backend {
  /** A credential key unique to the test, hash-tagged as the gateway's are. */
  key(): string;
  store(): TokenStore;
}

/** A budget that never refuses in these cases unless a case says otherwise. */
const LOOSE: RefreshBudget = { max: 100, perMs: HOUR, everyMs: 0 };
const budget = (max: number, perMs: number, everyMs = 0): RefreshBudget => ({ max, perMs, everyMs });
const granted = (fence: number) => ({ granted: true, fence });
const refused = (reason: RefuseReason, retryAfterMs: number) => ({ granted: false, reason, retryAfterMs });
const EMPTY = { token: undefined, refreshesInWindow: 0, lastRefreshAgoMs: undefined, blockedForMs: 0, revoked: undefined, lockedForMs: 0 };

function contract(backend: Backend): void {
  let k: string;
  let s: TokenStore;
  const acquire = (more: Partial<RefreshRequest> = {}) =>
    s.acquire({ key: k, replacing: 0, dueWithinMs: 60_000, lockTtlMs: 10_000, budget: LOOSE, force: false, ...more });
  const read = (b: RefreshBudget = LOOSE) => s.read(k, b);
  beforeEach(() => {
    now = T0;
    k = backend.key();
    s = backend.store();
  });

  it('an unknown credential reads empty, with no member cooling', async () => {
    expect(await read()).toEqual(EMPTY);
    expect(await s.cooling(k)).toEqual(new Map());
  });

  it('grant, publish, read: the token with its exact time left and fence 1', async () => {
    expect(await acquire()).toEqual(granted(1));
    expect(await read()).toEqual({ ...EMPTY, refreshesInWindow: 1, lastRefreshAgoMs: 0, lockedForMs: 10_000 });
    now += 250;
    expect(await s.publish(k, 1, 'sealed-1', HOUR)).toBe(true);
    now += 1000;
    expect(await read()).toEqual({
      ...EMPTY, token: { sealed: 'sealed-1', expiresInMs: HOUR - 1000, fence: 1 }, refreshesInWindow: 1, lastRefreshAgoMs: 1250,
    });
  });

  it("'newer' while a newer token is not due; a grant when it is due, or when replacing is its fence", async () => {
    expect(await acquire()).toEqual(granted(1));
    expect(await s.publish(k, 1, 'a', HOUR)).toBe(true);
    expect(await acquire()).toEqual(refused('newer', 0));
    now = T0 + HOUR - 60_001; // 60_001 ms left: more than dueWithinMs
    expect(await acquire()).toEqual(refused('newer', 0));
    now += 1;
    expect(await acquire()).toEqual(granted(2));
    expect(await s.publish(k, 2, 'b', HOUR)).toBe(true);
    expect(await acquire({ replacing: 2 })).toEqual(granted(3));
    // 'newer' is checked before the lock grant 3 holds.
    expect(await acquire({ replacing: 1 })).toEqual(refused('newer', 0));
    expect(await acquire({ replacing: 2 })).toEqual(refused('locked', 10_000));
  });

  it("'locked' with the exact time left while a grant holds the lock, a grant after lockTtlMs", async () => {
    expect(await acquire()).toEqual(granted(1));
    now += 3000;
    expect(await acquire()).toEqual(refused('locked', 7000));
    expect(await acquire({ force: true })).toEqual(refused('locked', 7000)); // never past the lock
    expect((await read()).lockedForMs).toBe(7000);
    now = T0 + 9999;
    expect(await acquire()).toEqual(refused('locked', 1));
    now += 1;
    expect((await read()).lockedForMs).toBe(0);
    expect(await acquire()).toEqual(granted(2));
  });

  it("a stalled holder's late publish is refused and leaves the newer token; its fail leaves the newer lock", async () => {
    expect(await acquire()).toEqual(granted(1)); // A
    now += 10_000;
    expect(await acquire()).toEqual(granted(2)); // B
    await s.fail(k, 1, {});
    expect(await acquire()).toEqual(refused('locked', 10_000));
    now += 500;
    expect(await s.publish(k, 2, 'from-b', HOUR)).toBe(true);
    expect(await s.publish(k, 1, 'from-a', 2 * HOUR)).toBe(false);
    expect((await read()).token).toEqual({ sealed: 'from-b', expiresInMs: HOUR, fence: 2 });
  });

  it('the latest fence publishes after its lock expired when nobody was granted since', async () => {
    expect(await acquire()).toEqual(granted(1));
    now += 60_000;
    expect(await s.publish(k, 1, 'late', HOUR)).toBe(true);
    expect((await read()).token).toEqual({ sealed: 'late', expiresInMs: HOUR, fence: 1 });
  });

  it('budget: max calls per window, refused exactly until the oldest leaves', async () => {
    const b = budget(2, 60_000);
    expect(await acquire({ budget: b })).toEqual(granted(1));
    await s.fail(k, 1, {});
    now += 1000;
    expect(await acquire({ budget: b })).toEqual(granted(2));
    await s.fail(k, 2, {});
    now += 1000;
    expect(await acquire({ budget: b })).toEqual(refused('budget', 58_000));
    now = T0 + 59_999;
    expect(await acquire({ budget: b })).toEqual(refused('budget', 1));
    now += 1;
    expect(await acquire({ budget: b })).toEqual(granted(3));
    await s.fail(k, 3, {});
    expect(await acquire({ budget: b })).toEqual(refused('budget', 1000)); // the call at T0 + 1000 is the oldest now
    expect(await read(b)).toEqual({ ...EMPTY, refreshesInWindow: 2, lastRefreshAgoMs: 0 });
  });

  it('budget: everyMs apart', async () => {
    const b = budget(10, HOUR, 5000);
    expect(await acquire({ budget: b })).toEqual(granted(1));
    await s.fail(k, 1, {});
    now += 1000;
    expect(await acquire({ budget: b })).toEqual(refused('budget', 4000));
    now = T0 + 5000;
    expect(await acquire({ budget: b })).toEqual(granted(2));
  });

  it('budget: a call that failed counts', async () => {
    const b = budget(1, 60_000);
    expect(await acquire({ budget: b })).toEqual(granted(1));
    now += 100;
    await s.fail(k, 1, {});
    expect(await acquire({ budget: b })).toEqual(refused('budget', 59_900));
    expect(await read(b)).toEqual({ ...EMPTY, refreshesInWindow: 1, lastRefreshAgoMs: 100 });
  });

  it('force goes past the budget, a block, a revocation and a newer token, never past the lock', async () => {
    const b = budget(1, 60_000);
    expect(await acquire({ budget: b })).toEqual(granted(1));
    await s.fail(k, 1, {});
    expect(await acquire({ budget: b })).toEqual(refused('budget', 60_000));
    expect(await acquire({ budget: b, force: true })).toEqual(granted(2));
    expect(await acquire({ budget: b, force: true })).toEqual(refused('locked', 10_000));
    await s.fail(k, 2, { blockMs: 30_000 });
    expect(await acquire({ budget: b })).toEqual(refused('blocked', 30_000));
    expect(await acquire({ budget: b, force: true })).toEqual(granted(3));
    await s.fail(k, 3, { revoked: 'invalid_grant' });
    expect(await acquire({ budget: b })).toEqual(refused('revoked', 0));
    expect(await acquire({ budget: b, force: true })).toEqual(granted(4));
    expect(await s.publish(k, 4, 't4', HOUR)).toBe(true);
    expect(await acquire({ budget: b, force: true })).toEqual(granted(5));
  });

  it('a block stops every caller for exactly its length; a shorter one does not shorten it', async () => {
    expect(await acquire()).toEqual(granted(1));
    now += 100;
    await s.fail(k, 1, { blockMs: 30_000 });
    expect((await read()).blockedForMs).toBe(30_000);
    expect(await acquire({ replacing: 7 })).toEqual(refused('blocked', 30_000));
    await s.fail(k, 99, { blockMs: 1000 });
    now = T0 + 100 + 29_999;
    expect(await acquire()).toEqual(refused('blocked', 1));
    now += 1;
    expect((await read()).blockedForMs).toBe(0);
    expect(await acquire()).toEqual(granted(2));
  });

  it("'revoked' until a forced grant publishes (publish clears the revocation and the block)", async () => {
    expect(await acquire()).toEqual(granted(1));
    await s.fail(k, 1, { revoked: 'invalid_grant', blockMs: HOUR });
    expect(await read()).toEqual({ ...EMPTY, refreshesInWindow: 1, lastRefreshAgoMs: 0, blockedForMs: HOUR, revoked: 'invalid_grant' });
    now += 2 * HOUR;
    expect(await acquire()).toEqual(refused('revoked', 0));
    await s.fail(k, 1, { blockMs: 1000 });
    expect(await acquire({ force: true })).toEqual(granted(2));
    await s.fail(k, 2, {}); // the forced refresh failed too: still revoked
    expect(await acquire()).toEqual(refused('revoked', 0));
    expect(await acquire({ force: true })).toEqual(granted(3));
    expect(await s.publish(k, 3, 'fresh', HOUR)).toBe(true);
    const after = await read();
    expect([after.revoked, after.blockedForMs, after.lockedForMs]).toEqual([undefined, 0, 0]);
    expect(await acquire({ replacing: 3 })).toEqual(granted(4));
  });

  it('read reports the window, the last call, the block, the revocation and the lock exactly', async () => {
    const b = budget(5, 2000);
    expect(await acquire({ budget: b, lockTtlMs: 4000 })).toEqual(granted(1));
    now += 1500;
    expect(await read(b)).toEqual({ ...EMPTY, refreshesInWindow: 1, lastRefreshAgoMs: 1500, lockedForMs: 2500 });
    now += 500; // the call at T0 left a 2000 ms window; the last call is still remembered
    await s.fail(k, 1, { blockMs: 5000, revoked: 'unauthorized_client' });
    expect(await read(b)).toEqual({ ...EMPTY, lastRefreshAgoMs: 2000, blockedForMs: 5000, revoked: 'unauthorized_client' });
    expect((await read(budget(5, 2001))).refreshesInWindow).toBe(1);
  });

  it('coolDown takes a member out for its ms, never shortens it; cooling reports the ms left', async () => {
    await s.coolDown(k, 2, 5000);
    await s.coolDown(k, 0, 1000);
    now += 400;
    expect(await s.cooling(k)).toEqual(new Map([[2, 4600], [0, 600]]));
    await s.coolDown(k, 2, 100);
    expect(await s.cooling(k)).toEqual(new Map([[2, 4600], [0, 600]]));
    now = T0 + 1000;
    expect(await s.cooling(k)).toEqual(new Map([[2, 4000]]));
    now = T0 + 5000;
    expect(await s.cooling(k)).toEqual(new Map());
    expect(await read()).toEqual(EMPTY); // cooling is no refresh state
  });
}

describe('MemoryTokenStore', () => {
  let store: MemoryTokenStore;
  let test = 0;
  beforeEach(() => {
    store = new MemoryTokenStore(clock);
  });
  contract({ key: () => `{mem:up${++test}}:cred:x`, store: () => store });
});

await describeWithRedis('RedisTokenStore', () => {
  const fixture = redisStoreFixture(clock);
  let test = 0;
  contract({ key: () => `{${fixture().redis.prefix}:up${++test}}:cred:x`, store: () => fixture().store.tokens() });
  redisOnly(fixture);
});

/** Lifetimes, failure modes and a differential run, only meaningful for Redis. */
function redisOnly(ctx: () => { redis: TestRedis; store: RedisStore }): void {
  const request = (key: string, more: Partial<RefreshRequest> = {}): RefreshRequest => ({
    key, replacing: 0, dueWithinMs: 0, lockTtlMs: 10_000, budget: LOOSE, force: false, ...more,
  });

  it('every write keeps the state at least CREDENTIAL_STATE_TTL_MS, longer for what outlives it, never shorter', async () => {
    const { redis, store } = ctx();
    const s = store.tokens();
    const key = `{${redis.prefix}:ttl}:cred:x`;
    const pttl = () => redis.client.pttl(key);
    const about = async (ms: number) => {
      const ttl = await pttl();
      expect(ttl).toBeLessThanOrEqual(ms);
      expect(ttl).toBeGreaterThan(ms - 1000);
    };
    now = T0;
    await s.coolDown(key, 0, 1000);
    await about(CREDENTIAL_STATE_TTL_MS);
    await redis.client.pexpire(key, 5000); // as if a day had passed since
    expect(await s.acquire(request(key))).toEqual(granted(1));
    await about(CREDENTIAL_STATE_TTL_MS);
    await redis.client.pexpire(key, 5000);
    await s.fail(key, 1, { blockMs: 1000 });
    await about(CREDENTIAL_STATE_TTL_MS);
    expect(await s.acquire(request(key, { force: true, budget: budget(1, 3 * CREDENTIAL_STATE_TTL_MS) }))).toEqual(granted(2));
    await about(3 * CREDENTIAL_STATE_TTL_MS); // the budget window is remembered that long
    expect(await s.publish(key, 2, 'long', 5 * CREDENTIAL_STATE_TTL_MS)).toBe(true);
    await about(5 * CREDENTIAL_STATE_TTL_MS); // the token too
    await s.coolDown(key, 1, 1000);
    await about(5 * CREDENTIAL_STATE_TTL_MS);
    // Reads and refusals write nothing, so they create no key.
    const other = `{${redis.prefix}:ttl}:cred:y`;
    await s.read(other, LOOSE);
    await s.cooling(other);
    expect(await s.publish(other, 3, 'x', HOUR)).toBe(false);
    await s.fail(other, 1, {});
    expect(await redis.client.exists(other)).toBe(0);
  });

  it('takes its time from Redis TIME without a test clock', async () => {
    const { redis } = ctx();
    const real = RedisStore.connect({ url: redis.url, prefix: redis.prefix, timeoutMs: 2000 });
    try {
      expect(await real.waitReady(5000)).toBe(true);
      const s = real.tokens();
      const key = `{${redis.prefix}:time}:cred:x`;
      expect(await s.acquire(request(key, { lockTtlMs: 5000 }))).toEqual(granted(1));
      const { lockedForMs, lastRefreshAgoMs } = await s.read(key, LOOSE);
      expect(lockedForMs).toBeGreaterThan(4000);
      expect(lockedForMs).toBeLessThanOrEqual(5000);
      expect(lastRefreshAgoMs).toBeGreaterThanOrEqual(0);
      expect(lastRefreshAgoMs).toBeLessThan(1000);
    } finally {
      await real.close();
    }
  });

  it('a key of another type fails that call with a plain Error, not StoreUnavailableError', async () => {
    const { redis, store } = ctx();
    const key = `{${redis.prefix}:wrong}:cred:x`;
    await redis.client.set(key, 'a string', 'PX', 60_000);
    const error = await store.tokens().acquire(request(key)).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(StoreUnavailableError);
    expect((error as Error).message).toMatch(/WRONGTYPE/);
  });

  it('survives SCRIPT FLUSH (ioredis loads the scripts again)', async () => {
    const { redis, store } = ctx();
    await redis.client.script('FLUSH');
    now = T0;
    expect(await store.tokens().acquire(request(`{${redis.prefix}:flush}:cred:x`))).toEqual(granted(1));
  });

  it('answers exactly as the memory store on a random workload', async () => {
    const { redis, store } = ctx();
    const [memory, shared] = [new MemoryTokenStore(clock), store.tokens()];
    const keys = [0, 1].map((i) => `{${redis.prefix}:diff}:cred:${i}`);
    const budgets = [budget(3, 5000, 300), budget(1, 2000), budget(5, 60_000, 1000)];
    let seed = 7;
    const random = (n: number) => Math.floor((seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648) / 2_147_483_648 * n);
    const seen = new Map<string, number>();
    // Fences near the last granted one: the latest, and stalled holders' older ones.
    const last = new Map<string, number>();
    now = T0;
    for (let i = 0; i < 1500; i++) {
      now += random(400);
      const key = keys[random(keys.length)]!;
      const b = budgets[random(budgets.length)]!;
      const near = () => Math.max(0, (last.get(key) ?? 0) - random(3));
      const fence = near();
      const op = random(7);
      const run = (s: TokenStore): Promise<unknown> => {
        if (op === 0) return s.read(key, b);
        if (op <= 2) {
          return s.acquire({ key, replacing: near(), dueWithinMs: random(3000), lockTtlMs: 200 + random(2000), budget: b, force: random(6) === 0 });
        }
        if (op === 3) return s.publish(key, fence, `t${i}`, random(8000));
        if (op === 4) return s.fail(key, fence, [{}, {}, { blockMs: random(3000) }, { revoked: 'invalid_grant' }][random(4)]!);
        if (op === 5) return s.coolDown(key, random(3), random(3000));
        return s.cooling(key);
      };
      const saved = seed; // both stores draw the same arguments
      const expected = await run(memory);
      seed = saved;
      expect(await run(shared), `step ${i}`).toEqual(expected);
      if (op === 1 || op === 2) {
        const grant = expected as RefreshGrant;
        if (grant.granted) last.set(key, grant.fence);
        const label = grant.granted ? 'granted' : grant.reason;
        seen.set(label, (seen.get(label) ?? 0) + 1);
      }
      if (op === 3) seen.set(`published ${String(expected)}`, (seen.get(`published ${String(expected)}`) ?? 0) + 1);
    }
    // The workload is worth its name: every answer acquire and publish can give occurs.
    for (const label of ['granted', 'newer', 'locked', 'blocked', 'budget', 'revoked', 'published true', 'published false']) {
      expect(seen.get(label), label).toBeGreaterThan(10);
    }
  });
}

describe('RedisTokenStore without a reachable Redis', () => {
  it('throws StoreUnavailableError within the timeout, from every call', async () => {
    const store = RedisStore.connect({ url: 'redis://127.0.0.1:1', timeoutMs: 300 });
    const s = store.tokens();
    const key = '{x}:cred:x';
    const calls: (() => Promise<unknown>)[] = [
      () => s.read(key, LOOSE),
      () => s.acquire({ key, replacing: 0, dueWithinMs: 0, lockTtlMs: 1000, budget: LOOSE, force: false }),
      () => s.publish(key, 1, 't', 1000),
      () => s.fail(key, 1, { blockMs: 1000 }),
      () => s.coolDown(key, 0, 1000),
      () => s.cooling(key),
    ];
    try {
      for (const call of calls) {
        const started = Date.now();
        await expect(call()).rejects.toBeInstanceOf(StoreUnavailableError);
        expect(Date.now() - started).toBeLessThan(300 + 150);
      }
    } finally {
      await store.close();
    }
  });
});
