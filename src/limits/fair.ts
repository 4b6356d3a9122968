/**
 * Fair share of one rate limit between tenants: assured rates with borrowing, in the manner of
 * hierarchical token buckets, with the state in the store so that every instance sees it.
 *
 * - A tenant is active while it has sent a request within the rule's active window.
 * - Each active tenant has an assured rate: the capacity split by weight among the active tenants,
 *   with reserves as floors (water-filling: Σ max(reserve_i, weight_i·λ) = capacity). Its own bucket
 *   drains at that rate; a request within it is assured.
 * - Every request also needs room in the rule's global bucket, so the upstream never sees more
 *   than the rule, whoever asks.
 * - A request beyond the tenant's assured rate borrows: it may take room in the global bucket that
 *   nobody else is waiting for. A tenant refused while within its assured rate is marked waiting
 *   until it gets a request through (or its window passes); while anyone else waits, nobody borrows.
 * - A tenant's bucket holds ASSURED_BURST requests, so a slot it lost to a collision is made up;
 *   but not while another tenant waits that is behind (admitted less than BEHIND of its assured
 *   rate over the window): then slots lost to collisions go to the tenant that is behind, not to
 *   the one that is always there when a slot opens.
 *
 * So a flooder takes all the capacity nobody else wants (work-conserving), and is held to its
 * plain assured rate the moment another tenant below its share finds no room, which gets that
 * tenant its share back by its next retry, however hard the flooder pushes.
 *
 * memory.ts and decide.lua both call this arithmetic (the Lua holds a copy of it).
 */

export interface ActiveTenant {
  weight: number;
  /** Guaranteed requests per ms. */
  reserve: number;
}

export const BISECTION_STEPS = 40;
/** Fair-share tenants are kept this many active windows after their last request. */
export const FAIR_STATE_WINDOWS = 5;
/** A tenant's assured bucket holds at least two requests, so one delayed by a collision is made up. */
export const ASSURED_BURST = 2;
/** A tenant admitted less than this part of its assured rate over the window is behind. */
export const BEHIND = 0.95;

/** A count decayed exponentially over `windowMs`, from `at` to `now`. */
export function decayedCount(count: number, at: number, now: number, windowMs: number): number {
  return count * Math.exp(-Math.max(0, now - at) / windowMs);
}

/**
 * The fair level λ of the active tenants: Σ max(reserve_i, weight_i·λ) = capacity (water-filling,
 * by bisection). A tenant's assured rate is then `assuredAt(tenant, λ)`.
 */
export function fairLevel(capacity: number, tenants: readonly ActiveTenant[]): number {
  let minWeight = Infinity;
  for (const t of tenants) minWeight = Math.min(minWeight, t.weight);
  if (tenants.length === 1) return capacity / minWeight;
  const allocated = (level: number) => {
    let sum = 0;
    for (const t of tenants) sum += Math.max(t.reserve, t.weight * level);
    return sum;
  };
  let lo = 0;
  let hi = capacity / minWeight;
  for (let i = 0; i < BISECTION_STEPS; i++) {
    const mid = (lo + hi) / 2;
    if (allocated(mid) > capacity) hi = mid;
    else lo = mid;
  }
  return lo;
}

/** Reserves may add up to the whole rate: the others then keep a token share, never 0 (a rate of 0 has no wait). */
export const MIN_ASSURED_SHARE = 1e-6;

/** The requests per ms assured to a tenant at fair level λ, out of `capacity`. */
export function assuredAt(tenant: ActiveTenant, level: number, capacity: number): number {
  return Math.max(tenant.reserve, tenant.weight * level, capacity * MIN_ASSURED_SHARE);
}
