import { describe, expect, it } from 'vitest';
import {
  concurrencyViolations,
  jainIndex,
  maxConcurrent,
  quotaViolations,
  rateViolations,
  utilisation,
} from './helpers/limit-check.js';

/** n arrivals from `from`, `gap` ms apart. */
function evenly(n: number, from: number, gap: number): number[] {
  return Array.from({ length: n }, (_, i) => from + i * gap);
}

describe('rateViolations', () => {
  const tenPerSecond = { count: 10, periodMs: 1000 };

  it('passes a steady stream at exactly the rate', () => {
    expect(rateViolations(evenly(50, 0, 100), tenPerSecond)).toBe(0);
  });

  it('passes arrivals that jitter within the tolerance', () => {
    // Every 100 ms, alternate seconds 5 ms late and 5 ms early: some pairs 10 apart are 990 ms apart.
    const times = evenly(50, 0, 100).map((t, i) => t + (Math.floor(i / 10) % 2 === 0 ? 5 : -5));
    expect(rateViolations(times, tenPerSecond)).toBe(0);
    expect(rateViolations(times, tenPerSecond, 0)).toBeGreaterThan(0);
  });

  it('fails a stream slightly too fast', () => {
    // 11 per second: pairs 10 apart are 909 ms apart, every one a violation.
    const times = evenly(40, 0, 1000 / 11);
    expect(rateViolations(times, tenPerSecond)).toBe(30);
  });

  it('fails the double burst a fixed-window limiter produces at a window edge', () => {
    // 10 in the last 10 ms of window [0, 1000) and 10 in the first 10 ms of [1000, 2000):
    // each window holds 10, but 20 arrive within 20 ms.
    const times = [...evenly(10, 990, 1), ...evenly(10, 1000, 1)];
    expect(rateViolations(times, tenPerSecond)).toBe(10);
  });

  it('allows count + burst - 1 in one period, not one more', () => {
    const rule = { count: 10, periodMs: 1000, burst: 5 };
    expect(rateViolations(evenly(14, 0, 1), rule)).toBe(0);
    expect(rateViolations(evenly(15, 0, 1), rule)).toBe(1);
    // 14 at once, then nothing until a period later, then the steady rate: within the bound.
    const drained = [...evenly(14, 0, 1), ...evenly(20, 1000, 100)];
    expect(rateViolations(drained, rule)).toBe(0);
  });

  it('sorts a copy of unsorted input', () => {
    const times = [500, 0, 100, 250];
    expect(rateViolations(times, { count: 3, periodMs: 1000 })).toBe(1);
    expect(times).toEqual([500, 0, 100, 250]);
  });

  it('treats arrivals exactly one period apart as allowed', () => {
    expect(rateViolations([0, 1000, 2000], { count: 1, periodMs: 1000 }, 0)).toBe(0);
    expect(rateViolations([0, 999, 2000], { count: 1, periodMs: 1000 }, 0)).toBe(1);
  });
});

describe('concurrencyViolations', () => {
  it('from a measured maximum', () => {
    expect(concurrencyViolations(4, 4)).toBe(0);
    expect(concurrencyViolations(6, 4)).toBe(2);
  });

  it('from intervals, with back-to-back intervals not overlapping', () => {
    const chain = [
      { start: 0, end: 100 },
      { start: 100, end: 200 },
      { start: 200, end: 300 },
    ];
    expect(maxConcurrent(chain)).toBe(1);
    expect(concurrencyViolations(chain, 1)).toBe(0);
  });

  it('counts each start that found the limit already in flight', () => {
    const intervals = [
      { start: 0, end: 100 },
      { start: 10, end: 100 },
      { start: 20, end: 30 }, // third at once: over a limit of 2
      { start: 40, end: 50 }, // third again
      { start: 60, end: 70 }, // third again
    ];
    expect(maxConcurrent(intervals)).toBe(3);
    expect(concurrencyViolations(intervals, 2)).toBe(3);
    expect(concurrencyViolations(intervals, 3)).toBe(0);
  });

  it('tolerates a release seen just before the upstream ended', () => {
    const intervals = [
      { start: 0, end: 102 },
      { start: 100, end: 200 },
    ];
    expect(concurrencyViolations(intervals, 1)).toBe(1);
    expect(concurrencyViolations(intervals, 1, 5)).toBe(0);
  });
});

describe('quotaViolations', () => {
  const hourly = { count: 5, periodMs: 3_600_000 };
  const hour = 1_700_000_000_000 - (1_700_000_000_000 % 3_600_000); // a window start

  it('passes the full quota in each calendar window, even back to back at the edge', () => {
    // The double burst that fails a rate check is fine for a calendar quota.
    const times = [...evenly(5, hour - 100, 10), ...evenly(5, hour + 100, 10)];
    expect(quotaViolations(times, hourly)).toBe(0);
  });

  it('fails one over the quota, counting the excess', () => {
    expect(quotaViolations(evenly(6, hour + 1000, 1000), hourly)).toBe(1);
    expect(quotaViolations(evenly(8, hour + 1000, 1000), hourly)).toBe(3);
  });

  it('counts an arrival just after the boundary in the previous window when it has room', () => {
    const times = [...evenly(4, hour - 1000, 100), ...evenly(6, hour + 2, 100)];
    expect(quotaViolations(times, hourly)).toBe(0); // the one at hour+2 belongs to the old window
    expect(quotaViolations(times, hourly, 0)).toBe(1);
    const full = [...evenly(5, hour - 1000, 100), ...evenly(6, hour + 2, 100)];
    expect(quotaViolations(full, hourly)).toBe(1); // the old window had no room
  });
});

describe('jainIndex', () => {
  it('is 1 for equal shares and 1/n when one gets everything', () => {
    expect(jainIndex([10, 10, 10, 10])).toBe(1);
    expect(jainIndex([40, 0, 0, 0])).toBe(0.25);
  });

  it('is in between for uneven shares', () => {
    // (1+2+3)^2 / (3 * (1+4+9)) = 36/42
    expect(jainIndex([1, 2, 3])).toBeCloseTo(36 / 42, 10);
    expect(jainIndex([100, 90])).toBeGreaterThan(0.99);
  });

  it('is 1 for no data', () => {
    expect(jainIndex([])).toBe(1);
    expect(jainIndex([0, 0])).toBe(1);
  });
});

describe('utilisation', () => {
  const rule = { count: 10, periodMs: 1000 };

  it('is 1 for a limiter that uses the whole rate', () => {
    // 100 arrivals in [0, 10 000]: capacity 10 * 10 = 100
    expect(utilisation(evenly(100, 0, 100), rule, 0, 10_000)).toBeCloseTo(1, 5);
  });

  it('is low for an over-cautious limiter', () => {
    expect(utilisation(evenly(50, 0, 200), rule, 0, 10_000)).toBeCloseTo(0.5, 5);
  });

  it('counts only arrivals inside the interval and adds burst - 1 to the capacity', () => {
    const times = [-5, ...evenly(24, 0, 80), 2001];
    // 24 admitted / (10 * 2 + 4) = 1
    expect(utilisation(times, { ...rule, burst: 5 }, 0, 2000)).toBe(1);
  });
});
