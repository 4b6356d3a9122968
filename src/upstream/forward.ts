/**
 * Sends one request upstream and streams the answer to the client, neither body buffered:
 * undici's `stream()` writes the response straight into the ServerResponse, with backpressure,
 * and reads the request body from the IncomingMessage as the upstream takes it.
 */
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { GatewayError } from '../errors.js';
import { clientResponseHeaders } from './headers.js';

export interface UpstreamRequest {
  upstream: string;
  dispatcher: Dispatcher;
  method: string;
  path: string;
  headers: string[];
  body: Readable | null;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  signal: AbortSignal;
}

/** Resolves when the response has been written to the client; rejects with a GatewayError. */
export async function forward(request: UpstreamRequest, res: ServerResponse): Promise<void> {
  try {
    await request.dispatcher.stream(
      {
        method: request.method as Dispatcher.HttpMethod,
        path: request.path,
        headers: request.headers,
        body: request.body,
        headersTimeout: request.headersTimeoutMs,
        bodyTimeout: request.bodyTimeoutMs,
        signal: request.signal,
      },
      ({ statusCode, headers }) => {
        res.writeHead(statusCode, clientResponseHeaders(headers));
        return res;
      },
    );
  } catch (err) {
    throw upstreamFailure(err, request.upstream);
  }
}

const TIMEOUTS: Record<string, string> = {
  UND_ERR_CONNECT_TIMEOUT: 'connecting to the upstream timed out',
  UND_ERR_HEADERS_TIMEOUT: 'the upstream did not answer in time',
  UND_ERR_BODY_TIMEOUT: 'the upstream stopped sending its response body',
};

/** undici's errors, as the client is told about them. Only error codes are shown, never messages. */
export function upstreamFailure(err: unknown, upstream: string): GatewayError {
  if (err instanceof GatewayError) return err;
  if (err instanceof Error && err.cause instanceof GatewayError) return err.cause;
  const code = (err as { code?: string } | null)?.code ?? 'UNKNOWN';
  const timeout = TIMEOUTS[code];
  if (timeout) return new GatewayError('upstream_timeout', timeout, { upstream, cause: err });
  return new GatewayError('upstream_unreachable', `the upstream connection failed (${code})`, { upstream, cause: err });
}
