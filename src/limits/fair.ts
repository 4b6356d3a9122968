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
 *   until it gets a request through (or its window passes); while anyone else is waiting, nobody
 *   borrows. So a flooder takes all the capacity nobody else wants (work-conserving), and is held
 *   to its assured rate the moment another tenant within its share finds no room, which gets that
 *   tenant its share back by its next retry, however hard the flooder pushes.
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

/** The requests per ms assured to `me` out of `capacity`, shared with the other active tenants. */
export function assuredRate(capacity: number, me: ActiveTenant, others: readonly ActiveTenant[]): number {
  if (others.length === 0) return capacity;
  const all = [me, ...others];
  let minWeight = Infinity;
  for (const t of all) minWeight = Math.min(minWeight, t.weight);
  const allocated = (level: number) => {
    let sum = 0;
    for (const t of all) sum += Math.max(t.reserve, t.weight * level);
    return sum;
  };
  let lo = 0;
  let hi = capacity / minWeight;
  for (let i = 0; i < BISECTION_STEPS; i++) {
    const mid = (lo + hi) / 2;
    if (allocated(mid) > capacity) hi = mid;
    else lo = mid;
  }
  return Math.max(me.reserve, me.weight * lo);
}
