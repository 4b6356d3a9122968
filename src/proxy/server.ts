/**
 * The client-facing listener: Node's HTTP server with the limits of `listen:` (header size,
 * header and request timeouts), requests handed to the pipeline, and everything Node cannot hand
 * over as a request — unparseable input, oversized headers, slow clients, CONNECT —
 * answered with the same JSON errors instead of a silently dropped socket.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Config } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { handleRequest, logRefusal, type PipelineContext } from './pipeline.js';
import { asGatewayError, respondOnSocket, respondWithError } from './respond.js';

/** clientError codes that mean the client went away, not that it sent something wrong. */
const CLIENT_LEFT = new Set(['ECONNRESET', 'EPIPE', 'HPE_INVALID_EOF_STATE']);

export interface ProxyContext extends PipelineContext {
  /** True once shutdown began: responses ask clients to close their connections. */
  readonly draining: boolean;
}

export function createProxyServer(ctx: ProxyContext, listen: Config['listen']): Server {
  const server = createServer(
    {
      maxHeaderSize: listen.maxHeaderSize,
      headersTimeout: listen.headersTimeout,
      requestTimeout: listen.requestTimeout,
      keepAliveTimeout: listen.keepAliveTimeout,
      // Node checks the timeouts above on this interval; keep it fine-grained enough for short ones.
      connectionsCheckingInterval: Math.min(1_000, Math.max(100, Math.floor(listen.headersTimeout / 4))),
      // Node would answer a missing Host with a bare 400 of its own; intake answers it in JSON.
      requireHostHeader: false,
    },
    handle,
  );
  function handle(req: IncomingMessage, res: ServerResponse): void {
    if (ctx.draining) res.setHeader('connection', 'close');
    handleRequest(ctx, req, res).catch((err: unknown) => {
      ctx.logger.error({ err }, 'request handler failed');
      respondWithError(res, asGatewayError(err));
    });
  }
  // A client that neither sends nor reads for this long (one that stopped reading its response,
  // say) is cut off, which frees the upstream connection its request holds.
  server.setTimeout(listen.idleTimeout);
  // Expect: 100-continue is answered by the pipeline once the request passed its checks, so that
  // an unauthenticated or oversized upload is refused before its body is sent.
  server.on('checkContinue', handle);
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    // Node's own record of the response in progress on this connection (not in its typings).
    const pending = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (!pending) {
      respondOnSocket(socket, clientErrorFor(err));
    } else if (CLIENT_LEFT.has(err.code ?? '') || !pending.req.complete) {
      // The client left, or its body broke off or came too slowly (listen.requestTimeout): the
      // request cannot be completed, so the connection goes, and with it the upstream request.
      socket.destroy();
    } else {
      // Garbage behind a request still being answered: that answer finishes, then the connection closes.
      pending.shouldKeepAlive = false;
      pending.once('finish', () => socket.destroySoon());
    }
  });
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    const err = new GatewayError('expectation_failed', 'only "Expect: 100-continue" is supported');
    logRefusal(ctx.logger, req, err);
    respondWithError(res, err);
  });
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    const err = new GatewayError('not_implemented', 'CONNECT tunnels (HTTPS_PROXY) are not served yet');
    logRefusal(ctx.logger, req, err);
    respondOnSocket(socket, err);
  });
  return server;
}

function clientErrorFor(err: NodeJS.ErrnoException): GatewayError {
  switch (err.code) {
    case 'HPE_HEADER_OVERFLOW':
      return new GatewayError('headers_too_large', 'the request header section is too large');
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new GatewayError('request_timeout', 'the request was not received in time');
    default:
      return new GatewayError('bad_request', 'the request could not be parsed as HTTP/1.1');
  }
}
