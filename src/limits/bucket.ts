/**
 * The rate algorithm: a leaky bucket, which is GCRA in another notation. The bucket holds
 * `level` requests and drains `ratePerMs`; a request fits when level + 1 <= capacity (the burst).
 * Unlike a fixed window there is no edge where two windows' worth can pass back to back: in any
 * span of one period at most burst - 1 + count requests pass, and with burst 1 they are spaced
 * exactly one interval apart. The wait it reports is exact: a request asking again after
 * `waitMs` fits, unless someone else took the room first. decide.lua holds the same arithmetic.
 */

/** Float slack so that a client waiting exactly the reported time is not refused by rounding. */
export const EPSILON = 1e-9;

export interface BucketState {
  level: number;
  /** When `level` was measured, ms. */
  at: number;
}

export interface BucketCheck {
  ok: boolean;
  waitMs: number;
  /** The level drained to `now`, before this request. */
  level: number;
  remaining: number;
  resetMs: number;
}

export function checkBucket(state: BucketState | undefined, now: number, ratePerMs: number, capacity: number): BucketCheck {
  const level = state === undefined ? 0 : Math.max(0, state.level - Math.max(0, now - state.at) * ratePerMs);
  const ok = level + 1 <= capacity + EPSILON;
  const after = ok ? level + 1 : level;
  return {
    ok,
    waitMs: ok ? 0 : (level + 1 - capacity) / ratePerMs,
    level,
    remaining: Math.max(0, Math.floor(capacity - after + EPSILON)),
    resetMs: after / ratePerMs,
  };
}

/** ms until a bucket at `level` has drained empty: how long its state is worth keeping. */
export function drainMs(level: number, ratePerMs: number): number {
  return level / ratePerMs;
}
