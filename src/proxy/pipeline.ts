/**
 * One request's path through the gateway, in order:
 *
 *   intake → identify → route → authorize → forward → log
 *
 * Each stage is a small function that either returns what the next one needs or throws a
 * GatewayError; refusals are rendered in one place (respond.ts) and every request, refused or
 * not, ends in exactly one log line.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { Credential } from '../credentials/inject.js';
import { GatewayError } from '../errors.js';
import { loggablePath, type Logger } from '../observability/logger.js';
import type { Policy, UpstreamProfile } from '../policy.js';
import { ClientGoneError, forward } from '../upstream/forward.js';
import { upstreamRequestHeaders } from '../upstream/headers.js';
import { requestBody } from './body.js';
import { intake } from './intake.js';
import { asGatewayError, respondWithError } from './respond.js';

export interface PipelineContext {
  /** The policy in force; read once per request so that a reload never splits one. */
  readonly policy: Policy;
  readonly logger: Logger;
}

/** What the request's log line says; filled in as the stages learn it. */
interface RequestRecord {
  method: string;
  path: string;
  tenant?: string;
  upstream?: string;
  error?: string;
  /** The client left before its response was complete. */
  clientGone: boolean;
  /** When the request was sent upstream; upstream time runs from here to the end of the response. */
  sentAt?: number;
}

export async function handleRequest(ctx: PipelineContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const startedAt = performance.now();
  const policy = ctx.policy;
  const record: RequestRecord = { method: req.method ?? '', path: '', clientGone: false };

  try {
    const target = intake(req);
    record.path = loggablePath(target.path);
    const tenant = policy.tenants.identify(req.headers, target.form);
    record.tenant = tenant.name;
    const { upstream, path } = policy.route(target);
    record.upstream = upstream.name;
    const credential = authorize(upstream);
    const body = requestBody(req, upstream.maxBodySize, upstream.name);
    // Every check passed: now the client may send the body it is holding back (server.ts).
    if (req.headers.expect?.toLowerCase() === '100-continue' && req.httpVersionMinor >= 1) res.writeContinue();

    record.sentAt = performance.now();
    await forward(
      {
        upstream: upstream.name,
        dispatcher: upstream.dispatcher,
        method: record.method,
        path,
        headers: upstreamRequestHeaders(req.rawHeaders, req.headers, {
          host: upstream.hostHeader,
          clientIp: req.socket.remoteAddress,
          credential,
        }),
        body,
        headersTimeoutMs: upstream.headersTimeoutMs,
        bodyTimeoutMs: upstream.bodyIdleTimeoutMs,
      },
      res,
    );
  } catch (err) {
    if (err instanceof ClientGoneError || req.socket.destroyed) {
      record.clientGone = true; // nobody left to answer
    } else {
      const failure = asGatewayError(err);
      record.error = failure.code;
      if (failure.code === 'internal_error') ctx.logger.error({ err: failure.cause }, 'request failed inside the gateway');
      respondWithError(res, failure);
    }
  }
  // One line per request, once the response is done with (finished, cut, or abandoned).
  const log = () => logRequest(ctx.logger, record, res, startedAt);
  if (res.closed) log();
  else res.once('close', log);
}

function authorize(upstream: UpstreamProfile): Credential | undefined {
  if (upstream.credentialsMissing) {
    throw new GatewayError('credentials_missing', 'the gateway has no credentials configured for this upstream', {
      upstream: upstream.name,
    });
  }
  return upstream.credentials?.next();
}

/** The log line for a request refused before the pipeline could take it (CONNECT, Expect). */
export function logRefusal(logger: Logger, req: IncomingMessage, err: GatewayError): void {
  logger.info({ method: req.method, path: loggablePath(req.url ?? ''), status: err.status, error: err.code }, 'request');
}

function logRequest(logger: Logger, record: RequestRecord, res: ServerResponse, startedAt: number): void {
  const now = performance.now();
  const upstreamMs = record.sentAt === undefined ? undefined : now - record.sentAt;
  logger.info(
    {
      tenant: record.tenant,
      upstream: record.upstream,
      method: record.method,
      path: record.path,
      // 499: the client closed the connection before the response was complete (nginx's convention).
      status: record.clientGone ? 499 : res.statusCode,
      error: record.error,
      upstreamMs: upstreamMs === undefined ? undefined : round(upstreamMs),
      gatewayMs: round(now - startedAt - (upstreamMs ?? 0)),
    },
    'request',
  );
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
