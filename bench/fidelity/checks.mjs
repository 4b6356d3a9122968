// Pure checks of recorded traffic against a limit (the logic of test/helpers/limit-check.ts, kept
// bench-local so the benchmark depends on dist/ only). Times are epoch ms, fractional, any order.

const sorted = (times) => [...times].sort((a, b) => a - b);

/**
 * Arrivals over a rate limit: a token bucket of `burst` refilled `count` per `periodMs` admits at
 * most count + burst - 1 in any window shorter than the period, so arrivals i and i + allowed
 * (sorted) must be at least periodMs - toleranceMs apart (the tolerance absorbs the network hop
 * between the gateway's decision and the upstream's clock). Each closer pair is one violation.
 */
export function rateViolations(times, { count, periodMs, burst = 1 }, toleranceMs = 15) {
  const t = sorted(times);
  const allowed = count + burst - 1;
  let violations = 0;
  for (let i = 0; i + allowed < t.length; i++) if (t[i + allowed] - t[i] < periodMs - toleranceMs) violations++;
  return violations;
}

/** The shortest span holding allowed + 1 arrivals (ms): below periodMs means one too many in a period. */
export function tightestSpan(times, { count, burst = 1 }) {
  const t = sorted(times);
  const allowed = count + burst - 1;
  let min = Infinity;
  for (let i = 0; i + allowed < t.length; i++) min = Math.min(min, t[i + allowed] - t[i]);
  return min;
}

/** The most arrivals seen in any window of `periodMs` (closed at the start, open at the end). */
export function maxInWindow(times, periodMs) {
  const t = sorted(times);
  let max = 0;
  let j = 0;
  for (let i = 0; i < t.length; i++) {
    while (t[i] - t[j] >= periodMs) j++;
    max = Math.max(max, i - j + 1);
  }
  return max;
}

/** Intervals [start, end) overlapping at once: the maximum, and how many started with `limit` already in flight. */
export function concurrencySweep(intervals, limit) {
  const events = [];
  for (const i of intervals) events.push([i.start, 1], [i.end, -1]);
  // Ends sort before starts at the same instant (half-open intervals).
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

/** Time-integral of requests in flight within [from, to], in request·ms. */
export function busyMs(intervals, from, to) {
  let sum = 0;
  for (const i of intervals) sum += Math.max(0, Math.min(i.end, to) - Math.max(i.start, from));
  return sum;
}

/**
 * Arrivals over a quota of `count` per calendar window (floor(t / periodMs)); an arrival within
 * toleranceMs after a boundary counts in the previous window when that one still has room.
 */
export function quotaViolations(times, { count, periodMs }, toleranceMs = 15) {
  const perWindow = new Map();
  for (const t of sorted(times)) {
    let w = Math.floor(t / periodMs);
    if (t - w * periodMs < toleranceMs && (perWindow.get(w - 1) ?? 0) < count) w -= 1;
    perWindow.set(w, (perWindow.get(w) ?? 0) + 1);
  }
  let excess = 0;
  for (const n of perWindow.values()) excess += Math.max(0, n - count);
  return { excess, windows: perWindow.size };
}

/** Jain's fairness index (Σx)² / (n·Σx²): 1 when all are equal, 1/n when one gets everything. */
export function jainIndex(values) {
  let sum = 0;
  let squares = 0;
  for (const x of values) {
    sum += x;
    squares += x * x;
  }
  return squares === 0 ? 1 : (sum * sum) / (values.length * squares);
}

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function percentile(xs, p) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}
