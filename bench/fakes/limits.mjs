// The limit algorithms the fake APIs enforce, as the real APIs describe theirs. Each takes the
// arrival time (epoch ms) from its caller, so a fake's clock can be injected.
//
// Tolerance: a gateway spaces requests by its own clock, and the loopback hop between it and the
// fake adds a little jitter (a request sent 1,000 ms after the previous one can arrive 998 ms after
// it). A real API measures at its edge with slack of its own; the fakes allow `toleranceMs` of it,
// so that a limit hit means the gateway sent too much, not that the kernel scheduled a socket late.

/**
 * "At most `count` requests in any `windowMs`" (BaseLinker's 100 per minute, a token endpoint's
 * 10 refreshes per 10 minutes): a log of the admitted arrivals of the last window.
 */
export class SlidingWindow {
  /** @param {{ count: number, windowMs: number, toleranceMs?: number }} options */
  constructor({ count, windowMs, toleranceMs = 0 }) {
    this.count = count;
    this.windowMs = windowMs;
    this.toleranceMs = toleranceMs;
    /** @type {number[]} */
    this.arrivals = [];
  }

  /** Counts the arrival and says true when it fits; a refused one is not counted. */
  take(at) {
    const since = at - this.windowMs + this.toleranceMs;
    while (this.arrivals.length > 0 && this.arrivals[0] <= since) this.arrivals.shift();
    if (this.arrivals.length >= this.count) return false;
    this.arrivals.push(at);
    return true;
  }

  /** Milliseconds until the oldest counted arrival leaves the window (0 when there is room). */
  waitMs(at) {
    if (this.arrivals.length < this.count) return 0;
    return Math.max(0, this.arrivals[0] + this.windowMs - this.toleranceMs - at);
  }
}

/**
 * "N per second with bursts of B" (Twilio's per-second limits): a leaky bucket in its GCRA form,
 * the theoretical arrival time of the next request moving 1/rate per admitted request.
 */
export class LeakyBucket {
  /** @param {{ perSecond: number, burst?: number, toleranceMs?: number }} options */
  constructor({ perSecond, burst = 1, toleranceMs = 0 }) {
    this.intervalMs = 1000 / perSecond;
    this.burst = burst;
    this.toleranceMs = toleranceMs;
    this.tat = -Infinity;
  }

  /** Counts the arrival and says true when it fits; a refused one is not counted. */
  take(at) {
    const tat = Math.max(this.tat, at);
    // The bucket holds `burst` requests: the next may come while tat is within (burst-1) intervals.
    if (tat - at > (this.burst - 1) * this.intervalMs + this.toleranceMs) return false;
    this.tat = tat + this.intervalMs;
    return true;
  }

  /** Milliseconds until a request would fit. */
  waitMs(at) {
    return Math.max(0, Math.max(this.tat, at) - at - (this.burst - 1) * this.intervalMs - this.toleranceMs);
  }
}
