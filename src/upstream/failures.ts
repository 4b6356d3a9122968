/**
 * How a failed upstream exchange is told to the client: undici's timeouts as 504
 * upstream_timeout, a connection refused by the egress check as 502 egress_refused, any other as
 * 502 upstream_unreachable. Forwarding (forward.ts) and blind tunnels (proxy/blind-tunnel.ts) share it.
 */
import { GatewayError } from '../errors.js';
import { asEgressRefusal } from './egress.js';

const TIMEOUTS: Record<string, string> = {
  UND_ERR_CONNECT_TIMEOUT: 'connecting to the upstream timed out',
  UND_ERR_HEADERS_TIMEOUT: 'the upstream did not answer in time',
  UND_ERR_BODY_TIMEOUT: 'the upstream stopped sending its response body',
};

/** undici's errors, as the client is told about them. Only error codes are shown, never messages. */
export function upstreamFailure(err: unknown, upstream: string): GatewayError {
  if (err instanceof GatewayError) return err; // e.g. the body counter's 413
  const timeout = TIMEOUTS[errorCode(err)];
  if (timeout) return new GatewayError('upstream_timeout', timeout, { upstream, cause: err });
  return connectFailure(err, upstream);
}

/**
 * A connection to the upstream that failed (through undici, or a blind tunnel's own): refused by
 * the egress check (undici may wrap that error), or unreachable, shown by its error code.
 */
export function connectFailure(err: unknown, upstream: string): GatewayError {
  const refused = asEgressRefusal(err);
  if (refused) {
    return new GatewayError(
      'egress_refused',
      `the upstream's target resolves to a private address (${refused.address}, ${refused.range}); ` +
        'set allowPrivate: true on the upstream if that is intended',
      { upstream, cause: err },
    );
  }
  return new GatewayError('upstream_unreachable', `the upstream connection failed (${errorCode(err)})`, { upstream, cause: err });
}

function errorCode(err: unknown): string {
  return (err as { code?: string } | null)?.code ?? 'UNKNOWN';
}
