/**
 * Pure checks of recorded traffic against a configured limit. Times are in ms (any epoch, sorted
 * or not: the functions sort a copy). Each check returns a number of violations, so a test can
 * `expect(...).toBe(0)` and print the count when it fails.
 */

export interface RateRule {
  count: number;
  periodMs: number;
  /** Token-bucket burst size; defaults to 1 (no burst beyond the steady rate). */
  burst?: number;
}

export interface QuotaRule {
  count: number;
  periodMs: number;
}

export interface Interval {
  start: number;
  end: number;
}

function sorted(times: readonly number[]): number[] {
  return [...times].sort((a, b) => a - b);
}

/**
 * Arrivals that exceed a rate limit.
 *
 * Why `count + burst - 1`: a token bucket holding at most `burst` tokens and refilled with
 * `count` tokens per `periodMs` (continuously) can, over any half-open window of length T <
 * periodMs, admit at most the `burst` tokens it held at the start plus the fewer than `count`
 * whole tokens refilled during T, i.e. burst + count - 1. With burst = 1 that is `count` per
 * sliding period, which is also what a sliding-log limiter allows.
 *
 * So arrivals i and i + allowed (sorted) must be at least periodMs apart. Arrivals are measured at
 * the upstream, after a network hop whose latency varies; two admissions exactly periodMs apart
 * at the gateway can land a few ms closer at the upstream. `toleranceMs` absorbs that: a pair
 * counts as a violation only when it is closer than periodMs - toleranceMs. Each such pair is one
 * violation (a burst k arrivals over the limit gives about k violations). The default, 40 ms, is
 * what the hop varies by on a 2-core machine running several test files at once; an extra
 * request over the limit would be a whole interval early, which is far more at the rates tested.
 *
 * A fixed-window limiter fails this: it admits `count` at the end of one window and `count` more
 * at the start of the next, 2·count within a few ms.
 */
export function rateViolations(times: readonly number[], rule: RateRule, toleranceMs = 40): number {
  const t = sorted(times);
  const allowed = rule.count + (rule.burst ?? 1) - 1;
  const minGap = rule.periodMs - toleranceMs;
  let violations = 0;
  for (let i = 0; i + allowed < t.length; i++) {
    if (t[i + allowed]! - t[i]! < minGap) violations++;
  }
  return violations;
}

/** Most intervals overlapping at one instant. Intervals are half-open [start, end): one that ends
 * exactly when another starts does not overlap it. */
export function maxConcurrent(intervals: readonly Interval[]): number {
  return concurrencySweep(intervals, Infinity).max;
}

/**
 * Violations of a concurrency limit.
 * - Given the measured maximum in flight (StrictUpstream.inFlightMax()): how far it went over.
 * - Given intervals [start, end): how many requests started while `limit` were already in flight.
 *   `toleranceMs` trims each interval's end, for a release seen at the gateway slightly before the
 *   upstream's own end of the response (the upstream closes, then the gateway learns of it).
 */
export function concurrencyViolations(measured: number | readonly Interval[], limit: number, toleranceMs = 0): number {
  if (typeof measured === 'number') return Math.max(0, measured - limit);
  const trimmed = measured.map((i) => ({ start: i.start, end: Math.max(i.start, i.end - toleranceMs) }));
  return concurrencySweep(trimmed, limit).over;
}

function concurrencySweep(intervals: readonly Interval[], limit: number): { max: number; over: number } {
  // Ends sort before starts at the same instant (half-open intervals).
  const events: Array<[number, 1 | -1]> = [];
  for (const i of intervals) events.push([i.start, 1], [i.end, -1]);
  events.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let max = 0;
  let over = 0;
  for (const [, d] of events) {
    now += d;
    if (d === 1 && now > limit) over++;
    if (now > max) max = now;
  }
  return { max, over };
}

/**
 * Arrivals over a quota of `count` per calendar-aligned window (window = floor(t / periodMs), with
 * t in epoch ms, so a daily quota resets at 00:00 UTC). Returns the total excess over all windows.
 *
 * `toleranceMs`: an arrival within toleranceMs after a window boundary may have been admitted by
 * the gateway just before it (network latency); it is counted in the previous window when that
 * window still has room.
 */
export function quotaViolations(times: readonly number[], rule: QuotaRule, toleranceMs = 15): number {
  const perWindow = new Map<number, number>();
  for (const t of sorted(times)) {
    let w = Math.floor(t / rule.periodMs);
    const intoWindow = t - w * rule.periodMs;
    // Sorted, so the previous window's count is final by the time we look at it.
    if (intoWindow < toleranceMs && (perWindow.get(w - 1) ?? 0) < rule.count) w -= 1;
    perWindow.set(w, (perWindow.get(w) ?? 0) + 1);
  }
  let excess = 0;
  for (const n of perWindow.values()) excess += Math.max(0, n - rule.count);
  return excess;
}

/**
 * Jain's fairness index, (Σx)² / (n·Σx²): 1 when all shares are equal, 1/n when one gets all.
 * An empty list or all zeros is 1 (nobody got more than anyone else).
 */
export function jainIndex(values: readonly number[]): number {
  let sum = 0;
  let squares = 0;
  for (const x of values) {
    sum += x;
    squares += x * x;
  }
  return squares === 0 ? 1 : (sum * sum) / (values.length * squares);
}

/**
 * Admitted arrivals in [fromMs, toMs] over the capacity of that interval, taken as
 * count·(to − from)/periodMs + (burst − 1): the steady refill during the interval plus the burst
 * the bucket may hold beyond one token at the start. A limiter that keeps the upstream busy scores
 * close to 1; one that is over-cautious scores well below. (Can slightly exceed 1 over short
 * intervals, since the whole `count + burst - 1` may land in one period.)
 */
export function utilisation(times: readonly number[], rule: RateRule, fromMs: number, toMs: number): number {
  let admitted = 0;
  for (const t of times) if (t >= fromMs && t <= toMs) admitted++;
  const capacity = (rule.count * (toMs - fromMs)) / rule.periodMs + ((rule.burst ?? 1) - 1);
  return capacity > 0 ? admitted / capacity : 0;
}
