/**
 * The textual units of routes.yaml, turned into numbers once at load time so that the hot path
 * never parses a string. Each parser returns undefined for text it does not accept; the schema
 * turns that into a message that says what would have been accepted.
 */

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const RATE_PERIODS_MS: Record<string, number> = { s: 1_000, min: 60_000, h: 3_600_000, day: 86_400_000 };
const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

export const DURATION_HINT = 'use a number with ms, s, m, h or d, like "250ms", "2s" or "5m"';
export const RATE_HINT = 'use N/s, N/min, N/h or N/day';
export const SIZE_HINT = 'use bytes or a number with kb, mb or gb, like "64kb" or "10mb"';

/** "250ms", "2s", "5m", "1h", "1d" (or a plain number of milliseconds) to milliseconds. */
export function parseDuration(text: string | number): number | undefined {
  if (typeof text === 'number') return Number.isFinite(text) && text >= 0 ? Math.round(text) : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(text);
  if (!m) return undefined;
  // Whole milliseconds: Node's timers and server timeouts take integers ("1.1s" is 1100, not 1100.0000000000002).
  return Math.round(Number(m[1]) * DURATION_UNITS_MS[m[2]!]!);
}

export interface Rate {
  /** Requests allowed per period. */
  count: number;
  periodMs: number;
  /** The text as written, for messages and headers. */
  text: string;
}

/**
 * "100/min" to { count: 100, periodMs: 60000 }. Exactly the documented units (N/s, N/min, N/h,
 * N/day): one spelling per unit keeps configs greppable, and "1/sec" is reported, not guessed at.
 */
export function parseRate(text: string): Rate | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*\/\s*(s|min|h|day)\s*$/.exec(text);
  if (!m) return undefined;
  const count = Number(m[1]);
  if (count <= 0) return undefined;
  return { count, periodMs: RATE_PERIODS_MS[m[2]!]!, text: text.trim() };
}

/** "64kb", "10mb", "1gb" or a number of bytes. */
export function parseSize(text: string | number): number | undefined {
  if (typeof text === 'number') return Number.isInteger(text) && text >= 0 ? text : undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(text);
  if (!m) return undefined;
  return Math.floor(Number(m[1]) * SIZE_UNITS[(m[2] ?? 'b').toLowerCase()]!);
}
