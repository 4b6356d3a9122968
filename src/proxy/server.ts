/**
 * The client-facing listener: Node's HTTP server with the limits of `listen:` (header size,
 * header and request timeouts), requests handed to the pipeline, and everything Node cannot hand
 * over as a request — unparseable input, oversized headers, slow clients — answered with the same
 * JSON errors instead of a silently dropped socket. CONNECT goes to connect.ts; the connections of
 * intercepted tunnels are served by a second HTTP server of the same settings that never listens.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Config } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { handleConnect, type ConnectContext } from './connect.js';
import type { InterceptedConnection } from './intercept.js';
import type { TunnelOrigin } from './intake.js';
import { handleRequest, logRefusal, type PipelineContext } from './pipeline.js';
import { asGatewayError, respondOnSocket, respondWithError } from './respond.js';

/** clientError codes that mean the client went away, not that it sent something wrong. */
const CLIENT_LEFT = new Set(['ECONNRESET', 'EPIPE', 'HPE_INVALID_EOF_STATE']);

/** What the listener needs; once `draining`, responses ask clients to close their connections and CONNECTs are refused. */
export type ProxyContext = PipelineContext & Omit<ConnectContext, 'serveIntercepted' | 'idleTimeoutMs' | 'handshakeTimeoutMs'>;

/**
 * The proxy listener. Its closeIdleConnections() and closeAllConnections() also reach the
 * connections inside intercepted tunnels, and the latter cuts the blind tunnels too (drain).
 */
export function createProxyServer(ctx: ProxyContext, listen: Config['listen']): Server {
  const server = httpServer(ctx, listen);
  const tunnelled = new WeakMap<InterceptedConnection, TunnelOrigin>();
  const inner = httpServer(ctx, listen, (req) => tunnelled.get(req.socket));
  // Node starts tracking a server's connections (header and request timeouts, idle closing) when it
  // listens; this one never does, so it is told it did, and stops with the listener.
  inner.emit('listening');
  server.once('close', () => inner.close());
  const connectContext: ConnectContext = {
    get policy() {
      return ctx.policy;
    },
    logger: ctx.logger,
    metrics: ctx.metrics,
    tunnels: ctx.tunnels,
    get draining() {
      return ctx.draining;
    },
    get leaves() {
      return ctx.leaves;
    },
    idleTimeoutMs: listen.idleTimeout,
    handshakeTimeoutMs: listen.headersTimeout,
    serveIntercepted(connection, origin) {
      tunnelled.set(connection, origin);
      inner.emit('connection', connection);
    },
  };
  server.on('connect', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    keepErrorsOnSocket(socket, ctx);
    handleConnect(connectContext, req, socket, head).catch((err: unknown) => {
      ctx.logger.error({ err }, 'CONNECT handler failed');
      socket.destroy();
    });
  });
  inner.on('connect', (req: IncomingMessage, socket: Socket) => {
    keepErrorsOnSocket(socket, ctx);
    const err = new GatewayError('bad_request', 'a CONNECT inside a tunnel is not served');
    logRefusal(ctx, req, err);
    respondOnSocket(socket, err);
  });
  const closeIdle = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    closeIdle();
    inner.closeIdleConnections();
  };
  const closeAll = server.closeAllConnections.bind(server);
  server.closeAllConnections = () => {
    closeAll();
    inner.closeAllConnections();
    ctx.tunnels.destroyAll();
  };
  return server;
}

/**
 * Node takes its own error listener off a socket it hands over with 'connect': without one of
 * ours, a client that resets its connection would crash the process.
 */
function keepErrorsOnSocket(socket: Socket, ctx: ProxyContext): void {
  socket.on('error', (err: NodeJS.ErrnoException) => {
    ctx.logger.debug({ err: err.code ?? err.message }, 'CONNECT client connection failed');
    socket.destroy();
  });
}

/** An HTTP server with the limits of `listen:`; `tunnelOf` tells which tunnel a request came in. */
function httpServer(
  ctx: ProxyContext,
  listen: Config['listen'],
  tunnelOf: (req: IncomingMessage) => TunnelOrigin | undefined = () => undefined,
): Server {
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
  const closeIdle = trackIdleConnections(server);
  function handle(req: IncomingMessage, res: ServerResponse): void {
    closeIdle.busy(res);
    if (ctx.draining) res.setHeader('connection', 'close');
    handleRequest(ctx, req, res, tunnelOf(req)).catch((err: unknown) => {
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
    logRefusal(ctx, req, err);
    respondWithError(res, err);
  });
  const closeIdleByNode = server.closeIdleConnections.bind(server);
  server.closeIdleConnections = () => {
    closeIdleByNode();
    closeIdle.run();
  };
  return server;
}

/**
 * Node's own closeIdleConnections() misses connections after a client aborted a request on
 * another connection (Node 20: a reused parser keeps the aborted request's start mark), so a
 * drain would wait on idle keep-alive connections until their clients close them. We also close,
 * ourselves, every connection with no request in progress that has sent nothing since its last
 * response (one in the middle of sending a request is left alone).
 */
function trackIdleConnections(server: Server): { busy(res: ServerResponse): void; run(): void } {
  /** Per open connection: requests in progress, and the bytes it had sent when the last one ended. */
  const open = new Map<Socket, { active: number; readAtRest: number }>();
  server.on('connection', (socket: Socket) => {
    open.set(socket, { active: 0, readAtRest: 0 });
    socket.once('close', () => open.delete(socket));
  });
  return {
    busy(res) {
      const socket = res.socket as Socket | null;
      const state = socket ? open.get(socket) : undefined;
      if (!socket || !state) return;
      state.active++;
      res.once('close', () => {
        state.active--;
        state.readAtRest = socket.bytesRead;
      });
    },
    run() {
      for (const [socket, state] of open) if (state.active === 0 && socket.bytesRead === state.readAtRest) socket.destroy();
    },
  };
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
