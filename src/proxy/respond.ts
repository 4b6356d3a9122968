/** The one place a refusal becomes an HTTP response: status, headers, and the JSON error body. */
import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { errorBody, GatewayError } from '../errors.js';

export function respondWithError(res: ServerResponse, err: GatewayError): void {
  if (res.headersSent) {
    // Bytes already went to the client: the only honest signal left is a cut connection.
    res.destroy(err);
    return;
  }
  const body = JSON.stringify(errorBody(err));
  res.writeHead(err.status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...errorHeaders(err),
  });
  res.end(body);
}

/** A CONNECT's answer when the tunnel is open (RFC 9110 9.3.6): what follows is the tunnel's. */
export const CONNECTION_ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';

/** The refusal's own headers, and Retry-After in whole seconds (at least 1) when it has one. */
function errorHeaders(err: GatewayError): Record<string, string> {
  const headers = { ...err.headers };
  if (err.retryAfterMs !== undefined) headers['retry-after'] = String(Math.max(1, Math.ceil(err.retryAfterMs / 1000)));
  return headers;
}

/** An unknown throw becomes a 500 without its message (it could hold anything). */
export function asGatewayError(err: unknown): GatewayError {
  return err instanceof GatewayError ? err : new GatewayError('internal_error', 'the gateway failed to handle the request', { cause: err });
}

/**
 * For the moments Node gives us a bare socket instead of a response (a request it could not
 * parse, CONNECT, Upgrade): the same JSON error, written as a whole HTTP/1.1 response, then close.
 */
export function respondOnSocket(socket: Socket, err: GatewayError): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const body = JSON.stringify(errorBody(err));
  const extra = Object.entries(errorHeaders(err))
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  socket.write(
    `HTTP/1.1 ${err.status} ${STATUS_CODES[err.status] ?? ''}\r\n` +
      'content-type: application/json; charset=utf-8\r\n' +
      `content-length: ${Buffer.byteLength(body)}\r\n${extra}connection: close\r\n\r\n${body}`,
  );
  // Closed once the answer is out, whatever the client does: an HTTP server's sockets allow half-open
  // connections, and a client that never closes must not keep the socket (nor a tunnel place).
  socket.destroySoon();
}
