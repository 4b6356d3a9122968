/**
 * CONNECT, what HTTPS_PROXY sends, in order:
 *
 *   target → identify → route → hold a tunnel place → intercept (TLS) | blind tunnel → log
 *
 * Intercepted tunnels hand every request inside them to the same pipeline as the other forms
 * (pipeline.ts), with the CONNECT's host and tenant. A refusal is the usual JSON error, written on
 * the socket before any tunnel exists.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { isIPv4, isIPv6, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { GatewayMetrics } from '../observability/metrics.js';
import { routeConnect, type Policy, type UpstreamProfile } from '../policy.js';
import { isHostName } from '../routing/hostname.js';
import type { LeafCertificates } from '../tls/leaf.js';
import { ClientGoneError } from '../upstream/forward.js';
import { spliceTunnel } from './blind-tunnel.js';
import { interceptTls, type InterceptedConnection } from './intercept.js';
import type { TunnelOrigin } from './intake.js';
import { asGatewayError, respondOnSocket } from './respond.js';
import type { Tunnels } from './tunnels.js';

export interface ConnectContext {
  readonly policy: Policy;
  readonly logger: Logger;
  /** Counts refused CONNECTs (the requests inside an intercepted tunnel are the pipeline's). */
  readonly metrics: Pick<GatewayMetrics, 'refused'>;
  readonly tunnels: Tunnels;
  /** True once shutdown began: no new tunnels. */
  readonly draining: boolean;
  /** The leaf certificates of the gateway's CA; undefined while it has none (its log says why). */
  readonly leaves: LeafCertificates | undefined;
  /** listen.idleTimeout: a tunnel with no traffic either way for this long is closed. */
  readonly idleTimeoutMs: number;
  /** listen.headersTimeout: how long a client has to start its TLS handshake. */
  readonly handshakeTimeoutMs: number;
  /** Hands an intercepted tunnel's decrypted connection to the HTTP server that serves its requests. */
  serveIntercepted(connection: InterceptedConnection, origin: TunnelOrigin): void;
}

/** What the tunnel's log line says. */
interface TunnelRecord {
  authority: string;
  tenant?: string;
  upstream?: string;
  mode?: 'intercept' | 'tunnel';
  error?: string;
  status?: number;
}

export async function handleConnect(ctx: ConnectContext, req: IncomingMessage, socket: Socket, head: Buffer): Promise<void> {
  const startedAt = performance.now();
  const record: TunnelRecord = { authority: loggableTarget(req.url ?? '') };
  try {
    if (ctx.draining) throw new GatewayError('shutting_down', 'the gateway is shutting down', { retryAfterMs: 1_000 });
    const { host, port } = connectTarget(req);
    noBody(req);
    const policy = ctx.policy;
    const tenant = policy.tenants.identify(req.headers, 'proxy');
    record.tenant = tenant.name;
    const upstream = routeConnect(policy, host, port);
    record.upstream = upstream.name;
    const credentials = tenantCredentials(req.headers);
    ctx.tunnels.admit(socket, upstream, upstream.intercept ? undefined : (next) => stillAllowed(next, credentials, host, port, upstream));
    if (upstream.intercept) {
      record.mode = 'intercept';
      const leaves = ctx.leaves;
      if (!leaves) throw new GatewayError('tls_unavailable', "the gateway's CA is unavailable (its log says why), so it cannot intercept this host", { upstream: upstream.name });
      const origin: TunnelOrigin = { authority: `${host}:${port}`, credentials };
      await interceptTls(socket, head, {
        host: bareHost(host),
        // The client's SNI names the certificate when it belongs to the same upstream; else the CONNECT host does.
        sameUpstream: (name) => policy.byHost(`${name}:${port}`) === upstream,
        leaves,
        handshakeTimeoutMs: ctx.handshakeTimeoutMs,
        serve: (connection) => ctx.serveIntercepted(connection, origin),
        onHandshakeFailed: (err) => ctx.logger.info({ tenant: tenant.name, upstream: upstream.name, err: err.message }, 'TLS handshake with the client failed'),
      });
    } else {
      record.mode = 'tunnel';
      await spliceTunnel(socket, head, upstream, ctx.idleTimeoutMs);
    }
    record.status = 200;
  } catch (err) {
    if (err instanceof ClientGoneError) {
      record.status = 499; // the client left before its tunnel was open (nginx's convention)
      socket.destroy();
      return logWhenClosed(ctx.logger, record, socket, startedAt);
    }
    const failure = asGatewayError(err);
    record.error = failure.code;
    record.status = failure.status;
    ctx.metrics.refused(record.upstream, record.tenant, failure.code);
    if (failure.code === 'internal_error') ctx.logger.error({ err: failure.cause ?? failure }, 'CONNECT failed inside the gateway');
    respondOnSocket(socket, failure);
  }
  logWhenClosed(ctx.logger, record, socket, startedAt);
}

/** One line per tunnel, when it closes (a refused CONNECT's socket closes at once). */
function logWhenClosed(logger: Logger, record: TunnelRecord, socket: Socket, startedAt: number): void {
  const log = () => logTunnel(logger, record, socket, startedAt);
  if (socket.destroyed) log();
  else socket.once('close', log);
}

/**
 * Whether a reloaded config still allows a blind tunnel: its tenant's key, its host and port, and
 * the target it was spliced to (no request in it is ever checked).
 */
function stillAllowed(policy: Policy, credentials: IncomingHttpHeaders, host: string, port: number, opened: UpstreamProfile): boolean {
  try {
    policy.tenants.identify(credentials, 'proxy');
    const now = routeConnect(policy, host, port);
    return !now.intercept && now.tunnelTo.host === opened.tunnelTo.host && now.tunnelTo.port === opened.tunnelTo.port;
  } catch {
    return false;
  }
}

const CONNECT_TARGET = /^(\[[0-9a-f:.]+\]|[^\s:/?#@[\]]+):(\d{1,5})$/i;

/** `host:port` of the CONNECT (RFC 9110 9.3.6: authority form), lower case, a trailing dot dropped. */
function connectTarget(req: IncomingMessage): { host: string; port: number } {
  const m = CONNECT_TARGET.exec(req.url ?? '');
  const host = m?.[1]!.toLowerCase().replace(/\.$/, '');
  const port = Number(m?.[2]);
  if (!m || !host || port < 1 || port > 65_535) {
    throw new GatewayError('bad_request', 'CONNECT needs a target of the form host:port');
  }
  const literal = host.startsWith('[') ? isIPv6(host.slice(1, -1)) : isIPv4(host);
  if (!literal && !isHostName(host)) {
    throw new GatewayError('bad_request', 'the CONNECT host is not a valid host name or IP address');
  }
  return { host, port };
}

/** A body would be read as the first bytes of the tunnel (RFC 9110 9.3.6: CONNECT has none). */
function noBody(req: IncomingMessage): void {
  const contentLength = req.headers['content-length'];
  if ((contentLength !== undefined && contentLength !== '0') || req.headers['transfer-encoding'] !== undefined) {
    throw new GatewayError('bad_request', 'a CONNECT request has no body');
  }
}

/** The CONNECT target for the log: capped, and without anything before an "@" (a key pasted into it). */
function loggableTarget(target: string): string {
  const at = target.lastIndexOf('@');
  return (at < 0 ? target : `[REDACTED]${target.slice(at)}`).slice(0, 300);
}

/** The host as certificates name it: an IPv6 literal without its brackets. */
function bareHost(host: string): string {
  return host.startsWith('[') ? host.slice(1, -1) : host;
}

/** Only the headers a tenant authenticates with are kept for the tunnel's requests. */
function tenantCredentials(headers: IncomingHttpHeaders): IncomingHttpHeaders {
  const kept: IncomingHttpHeaders = {};
  if (headers['proxy-authorization'] !== undefined) kept['proxy-authorization'] = headers['proxy-authorization'];
  if (headers['x-sluice-key'] !== undefined) kept['x-sluice-key'] = headers['x-sluice-key'];
  return kept;
}

function logTunnel(logger: Logger, record: TunnelRecord, socket: Socket, startedAt: number): void {
  logger.info(
    {
      tenant: record.tenant,
      upstream: record.upstream,
      method: 'CONNECT',
      form: 'connect',
      path: record.authority,
      status: record.status,
      error: record.error,
      mode: record.mode,
      bytesIn: socket.bytesRead,
      bytesOut: socket.bytesWritten,
      durationMs: Math.round(performance.now() - startedAt),
    },
    'tunnel',
  );
}
