import type { FakeApiStats } from './http.mjs';

export interface BaseLinkerOptions {
  /** The API tokens it accepts in X-BLToken. */
  tokens: string[];
  /** Requests per token in any 60 s before the token is blocked (default 100). */
  perMinute?: number;
  /** How long a token stays blocked (default 60 s; rounded up to a whole second). */
  blockMs?: number;
  /** Arrival jitter forgiven by the window (default 50 ms). */
  toleranceMs?: number;
  /** The clock, epoch ms (default Date.now). */
  now?: () => number;
}

export interface BaseLinkerArrival {
  at: number;
  /** X-BLToken as it arrived. */
  token: string | undefined;
  /** Its index in `tokens`, -1 when it is none of them. */
  tokenIndex: number;
  status: number;
  /** Answered ERROR_BLOCKED_TOKEN. */
  blocked: boolean;
}

export interface FakeBaseLinker {
  url: string;
  arrivals: BaseLinkerArrival[];
  stats: FakeApiStats;
  /** How many times a token was blocked (its limit exceeded). */
  blocks: number;
  close(): Promise<void>;
}

/** `YYYY-MM-DD HH:MM:SS` of an epoch ms on Warsaw's wall clock. */
export function warsawTime(epochMs: number): string;
export function startBaseLinker(options: BaseLinkerOptions): Promise<FakeBaseLinker>;
