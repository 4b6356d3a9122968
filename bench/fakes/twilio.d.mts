import type { FakeApiStats } from './http.mjs';

/** A per-second limit of the fake Twilio: requests of `method` to paths matching `path`. */
export interface TwilioRate {
  name: string;
  method: string;
  path: RegExp;
  perSecond: number;
  /** Default 1. */
  burst?: number;
}

export interface TwilioOptions {
  accountSid: string;
  authToken: string;
  /** Requests in flight at once before 429 code 20429 (default 100, Twilio's account default). */
  concurrency?: number;
  /** Default TWILIO_RATES (routes.yaml's calls and messages). */
  rates?: TwilioRate[];
  /** How long each accepted request takes (default 0). */
  latencyMs?: number;
  /** Arrival jitter forgiven by the per-second limits (default 50 ms). */
  toleranceMs?: number;
  /** The clock, epoch ms (default Date.now). */
  now?: () => number;
}

export interface TwilioArrival {
  at: number;
  method: string;
  path: string;
  authorization: string | undefined;
  /** The status answered (0 while in flight). */
  status: number;
  /** The limit that refused it: 'concurrency' or a rate's name. */
  limit: string | undefined;
}

export interface FakeTwilio {
  url: string;
  arrivals: TwilioArrival[];
  stats: FakeApiStats;
  /** The most requests that were in flight at once. */
  inFlightMax: number;
  close(): Promise<void>;
}

export const TWILIO_RATES: TwilioRate[];
export function startTwilio(options: TwilioOptions): Promise<FakeTwilio>;
