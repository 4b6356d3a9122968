/**
 * The error catalogue: every refusal the gateway can answer, with its stable code and HTTP status.
 * Stages throw a GatewayError built from a code here; `proxy/respond.ts` renders it in one place.
 * The README documents every code (a test checks that), so clients can rely on them.
 */
export const ERRORS = {
  bad_request: { status: 400, doc: 'The request line or target could not be understood.' },
  unauthorized: { status: 401, doc: 'Base-URL request without a valid X-Sluice-Key or Proxy-Authorization.' },
  proxy_auth_required: { status: 407, doc: 'Proxy-form request without valid Proxy-Authorization (Basic tenant:key).' },
  destination_not_allowed: { status: 403, doc: 'No upstream matches the host or prefix: the gateway is not an open relay.' },
  expectation_failed: { status: 417, doc: 'An Expect header other than 100-continue.' },
  payload_too_large: { status: 413, doc: 'The request body is larger than the limit (listen.maxBodySize or the upstream maxBodySize).' },
  headers_too_large: { status: 431, doc: 'The request header section is larger than listen.maxHeaderSize.' },
  request_timeout: { status: 408, doc: 'The client was too slow sending the request headers or body.' },
  not_implemented: { status: 501, doc: 'Upgrade (WebSocket) requests are not served yet.' },
  rate_limited: { status: 429, doc: 'A rate limit of the upstream is used up; Retry-After (and retryAfterMs) says when to ask again.' },
  quota_exceeded: { status: 429, doc: 'A quota (N per calendar hour or day, UTC) is used up; Retry-After points at the next period.' },
  concurrency_limited: { status: 429, doc: 'Too many requests to the upstream are in flight; Retry-After: 1 is a hint, room comes when one ends.' },
  upstream_paused: {
    status: 429,
    doc: 'The upstream asked for a pause (429/503 with Retry-After, a used-up X-RateLimit/RateLimit, a feedback.body rule); Retry-After is the pause left.',
  },
  queue_full: { status: 429, doc: "The upstream's wait queue (onLimit.maxQueue) is full on this instance." },
  tls_unavailable: { status: 503, doc: "The gateway's CA could not be loaded or created, so it cannot intercept; the start-up log says why." },
  shutting_down: { status: 503, doc: 'The gateway is draining for shutdown and opens no new tunnels; Retry-After: 1.' },
  tunnel_limited: { status: 429, doc: "A blind tunnel (intercept: false) would pass the upstream's connections limit on this instance; Retry-After: 1." },
  too_many_tunnels: { status: 503, doc: 'This instance holds listen.maxTunnels CONNECT tunnels already; Retry-After: 1.' },
  store_unavailable: { status: 503, doc: 'The shared limit store (Redis) cannot be reached and store.onError is deny.' },
  credentials_missing: { status: 503, doc: "The upstream's credentials are not set in the environment; see the start-up warning." },
  credentials_unavailable: { status: 503, doc: 'The upstream credential cannot be had right now (e.g. no valid OAuth2 token).' },
  circuit_open: { status: 503, doc: "The upstream's circuit breaker is open after repeated failures; Retry-After is the cooldown left." },
  upstream_unreachable: { status: 502, doc: 'The upstream refused or dropped the connection, or sent an invalid response.' },
  egress_refused: { status: 502, doc: "The upstream's target resolved to a private address and the upstream does not set allowPrivate." },
  upstream_timeout: { status: 504, doc: 'The upstream did not connect, answer or send its body within the configured timeouts.' },
  internal_error: { status: 500, doc: 'An unexpected fault in the gateway; the log line has the details.' },
} as const satisfies Record<string, { status: number; doc: string }>;

export type ErrorCode = keyof typeof ERRORS;

export interface ErrorContext {
  upstream?: string;
  tenant?: string;
  retryAfterMs?: number;
  /** Extra response headers, e.g. Proxy-Authenticate. */
  headers?: Record<string, string>;
  cause?: unknown;
}

/** A refusal or failure with a stable code; its message is safe to show to the client. */
export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly upstream: string | undefined;
  readonly tenant: string | undefined;
  readonly retryAfterMs: number | undefined;
  readonly headers: Record<string, string> | undefined;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.upstream = context.upstream;
    this.tenant = context.tenant;
    this.retryAfterMs = context.retryAfterMs;
    this.headers = context.headers;
  }
}

/** Body of every error response: `{ error, message, upstream?, tenant?, retryAfterMs? }`. */
export interface ErrorBody {
  error: ErrorCode;
  message: string;
  upstream?: string;
  tenant?: string;
  retryAfterMs?: number;
}

export function errorBody(err: GatewayError): ErrorBody {
  const body: ErrorBody = { error: err.code, message: err.message };
  if (err.upstream !== undefined) body.upstream = err.upstream;
  if (err.tenant !== undefined) body.tenant = err.tenant;
  if (err.retryAfterMs !== undefined) body.retryAfterMs = err.retryAfterMs;
  return body;
}
