/**
 * What became of a request, in the small fixed set the metrics count (`sluice_requests_total`'s
 * `outcome`): the error catalogue's codes folded into what an operator asks ("refused by our
 * limits, by the upstream, or the client's own fault?"). A Record over every ErrorCode, so that a
 * new code cannot be added without saying which outcome it is.
 */
import type { ErrorCode } from '../errors.js';

export type RequestOutcome =
  | 'forwarded'
  | 'queued_then_forwarded'
  | 'rate_limited'
  | 'quota_exceeded'
  | 'concurrency_limited'
  | 'queue_full'
  | 'queue_timeout'
  | 'upstream_paused'
  | 'circuit_open'
  | 'upstream_limited'
  | 'upstream_error'
  | 'credentials_unavailable'
  | 'store_unavailable'
  | 'client_gone'
  | 'rejected'
  | 'gateway_error';

const OUTCOME_OF_ERROR: Record<ErrorCode, RequestOutcome> = {
  bad_request: 'rejected',
  unauthorized: 'rejected',
  proxy_auth_required: 'rejected',
  destination_not_allowed: 'rejected',
  expectation_failed: 'rejected',
  payload_too_large: 'rejected',
  headers_too_large: 'rejected',
  request_timeout: 'rejected',
  not_implemented: 'rejected',
  rate_limited: 'rate_limited',
  quota_exceeded: 'quota_exceeded',
  concurrency_limited: 'concurrency_limited',
  upstream_paused: 'upstream_paused',
  queue_full: 'queue_full',
  tls_unavailable: 'gateway_error',
  shutting_down: 'gateway_error',
  tunnel_limited: 'gateway_error',
  too_many_tunnels: 'gateway_error',
  store_unavailable: 'store_unavailable',
  credentials_missing: 'credentials_unavailable',
  credentials_unavailable: 'credentials_unavailable',
  circuit_open: 'circuit_open',
  upstream_unreachable: 'upstream_error',
  egress_refused: 'upstream_error',
  upstream_timeout: 'upstream_error',
  internal_error: 'gateway_error',
};

/** The limit refusals: their rule is a label, and after a wait in the queue they are queue_timeout. */
const LIMIT_REFUSALS: ReadonlySet<RequestOutcome> = new Set(['rate_limited', 'quota_exceeded', 'concurrency_limited']);

export interface Ending {
  /** The error code the client was answered with; undefined when the upstream's answer went through. */
  error: ErrorCode | undefined;
  /** The status the client got (the upstream's, when forwarded). */
  status: number;
  clientGone: boolean;
  /** The request waited in the queue (admitted or not). */
  queued: boolean;
}

export function outcomeOf(ending: Ending): RequestOutcome {
  if (ending.clientGone) return 'client_gone';
  if (ending.error !== undefined) {
    const outcome = OUTCOME_OF_ERROR[ending.error];
    return ending.queued && LIMIT_REFUSALS.has(outcome) ? 'queue_timeout' : outcome;
  }
  if (ending.status === 429) return 'upstream_limited';
  if (ending.status >= 500) return 'upstream_error';
  return ending.queued ? 'queued_then_forwarded' : 'forwarded';
}

/** Whether the outcome names the limit rule that refused (the `rule` label). */
export function namesRule(outcome: RequestOutcome): boolean {
  return LIMIT_REFUSALS.has(outcome) || outcome === 'queue_timeout';
}

const CLASSES = ['1xx', '1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** 2xx, 4xx, ...: the `class` label of an upstream's status (no string built per request). */
export function statusClass(status: number): (typeof CLASSES)[number] {
  return CLASSES[Math.min(Math.max(Math.floor(status / 100), 1), 5)]!;
}

/** A retried attempt's outcome (a status, or the error code of a failure) as the `reason` label. */
export function retryReason(outcome: number | string, unprocessed: readonly number[] | undefined): 'status' | 'unprocessed' | 'connection' | 'timeout' {
  if (typeof outcome === 'number') return unprocessed?.includes(outcome) ? 'unprocessed' : 'status';
  return outcome === 'upstream_timeout' ? 'timeout' : 'connection';
}
