/**
 * One request's path through the gateway, in order:
 *
 *   intake → identify → route → breaker → paused → admit → authorize → forward → learn → log
 *                                   ▲                                         │
 *                                   └──────── retry (upstream/retry.ts) ◄─────┘
 *
 * Each stage is a small function that either returns what the next one needs or throws a
 * GatewayError (admit returns its refusal as a value, which becomes one here); refusals are
 * rendered in one place (respond.ts) and every request, refused or not, ends in exactly one log line.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CredentialProvider } from '../credentials/provider.js';
import { GatewayError, type ErrorCode } from '../errors.js';
import type { Admission, Limiter } from '../limits/admit.js';
import { priorityRank, QueueAbortedError } from '../limits/queue.js';
import type { Refusal } from '../limits/verdict.js';
import { loggablePath, type Logger } from '../observability/logger.js';
import type { GatewayMetrics } from '../observability/metrics.js';
import type { Policy, UpstreamProfile } from '../policy.js';
import type { Tenant } from '../tenants/identify.js';
import type { Trial } from '../upstream/breaker.js';
import { ClientGoneError, type UpstreamRequest } from '../upstream/forward.js';
import type { RetryRun } from '../upstream/retry.js';
import { firstBody, replayAnswer, sendAttempt } from './attempt.js';
import { intake, type TunnelOrigin } from './intake.js';
import { asGatewayError, respondWithError } from './respond.js';

export interface PipelineContext {
  /** The policy in force; read once per request so that a reload never splits one. */
  readonly policy: Policy;
  readonly logger: Logger;
  readonly limiter: Limiter;
  /** Told of every request once it ends (the counters and histograms of /metrics). */
  readonly metrics: Pick<GatewayMetrics, 'request' | 'refused'>;
}

/** What the request's log line says; filled in as the stages learn it. */
interface RequestRecord {
  /** base-url, proxy (HTTP_PROXY) or tunnel (inside an intercepted HTTPS_PROXY tunnel). */
  form?: string;
  method: string;
  path: string;
  tenant?: string;
  upstream?: string;
  error?: ErrorCode;
  /** The limit rule that refused, or the shadow rules that would have. */
  limit?: string;
  shadowLimited?: string[];
  queuedMs?: number;
  /** The client left before its response was complete. */
  clientGone: boolean;
  /** When the request was first sent upstream; upstream time runs from here to the end of the response (retries included). */
  sentAt?: number;
  /** The request's retries (attempts, and the outcomes retried). */
  retries?: RetryRun | undefined;
  /** Why a retry was not sent after all (the client got the answer it was to replace). */
  retryRefused?: ErrorCode;
}

/** `tunnel`: the request came inside an intercepted CONNECT tunnel, which established its host and tenant. */
export async function handleRequest(ctx: PipelineContext, req: IncomingMessage, res: ServerResponse, tunnel?: TunnelOrigin): Promise<void> {
  const startedAt = performance.now();
  const policy = ctx.policy;
  const record: RequestRecord = { method: req.method ?? '', path: '', clientGone: false };
  let trial: Trial | undefined;

  try {
    const target = intake(req, tunnel);
    record.form = target.form;
    record.path = loggablePath(target.path);
    const tenant = policy.tenants.identify(tunnel?.credentials ?? req.headers, target.form);
    record.tenant = tenant.name;
    const { upstream, path, rulePath } = policy.route(target);
    record.upstream = upstream.name;
    const credentials = credentialsOf(upstream);
    const clientGone = clientGoneSignal(res);
    let retries: RetryRun | undefined;
    let body: UpstreamRequest['body'] | undefined; // read on the first attempt, kept for retries when small
    // Each attempt, retries included, passes the breaker, the pause and the limits like a new request.
    for (;;) {
      credentials?.check(); // every attempt: a retry's wait may have cooled every pool token
      // breaker: an open one refuses here, before the limits are used; pool members it holds out are skipped.
      trial = upstream.breakers?.check(credentials?.outOfRotation?.());
      // paused: the upstream (or every pool token) asked for a pause; wait it out within the queue time, or 429.
      // A retry waits out a pause that ends within its time left (the upstream's Retry-After made it).
      await pausedFor(upstream, trial, clientGone, retries ? retries.leftMs() : (upstream.limits.onLimit?.queueMs ?? 0));
      // A retry queues for the limits only within its time left, not the whole onLimit.queue.
      const admission = await admit(ctx.limiter, req, res, upstream, tenant, rulePath, record, trial, clientGone, retries?.leftMs());
      const credential = await credentials?.next(admission.credential, union(trial?.refusing(), upstream.pauses.members()));
      const member = credential && credentials?.memberOf?.(credential);
      trial?.use(member);
      if (body === undefined) {
        // The first attempt to go upstream counts in the retry budget's requests.
        retries = record.retries = upstream.retry?.begin(record.method, req.headers, startedAt);
        body = await firstBody(req, res, upstream, retries, ctx.logger);
      }
      record.sentAt ??= performance.now();
      // forward → learn; or, for an answer or failure worth another attempt, the wait before it.
      const waitMs = await sendAttempt({ req, res, upstream, path, body, credentials, credential, member, trial, responseHeaders: admission.headers, lowerTo: admission.lowerTo, retries });
      if (waitMs === undefined) break;
      // The attempt is over: its breaker trial and its admission end before the wait, not after it.
      trial?.end();
      admission.release();
      res.off('close', admission.release);
      await waitUnlessGone(waitMs, clientGone);
    }
  } catch (err) {
    trial?.failed(err); // a connection failure or timeout counts against the breaker
    // A retry refused before it went gives its budget place back; the answer it was to replace, if
    // kept, is the client's rather than the refusal (a 503 with its Retry-After says more).
    const replaced = record.retries?.refused();
    if (err instanceof ClientGoneError || err instanceof QueueAbortedError || req.socket.destroyed) {
      record.clientGone = true; // nobody left to answer; a half-closed connection is not kept waiting
      res.destroy();
    } else if (replaced && err instanceof GatewayError) {
      record.retryRefused = err.code;
      replayAnswer(res, replaced);
    } else {
      const failure = asGatewayError(err);
      record.error = failure.code;
      // Inside a tunnel, host and key are the CONNECT's and cannot change: once refused, always refused.
      if (tunnel && (failure.code === 'proxy_auth_required' || failure.code === 'destination_not_allowed')) res.shouldKeepAlive = false;
      if (failure.code === 'internal_error') ctx.logger.error({ err: failure.cause }, 'request failed inside the gateway');
      respondWithError(res, failure);
    }
  }
  trial?.end();
  // One line per request, once the response is done with (finished, cut, or abandoned).
  const log = () => logRequest(ctx, record, res, startedAt);
  if (res.closed) log();
  else res.once('close', log);
}

/**
 * Decides every limit rule of the request at once; a queued request waits here. The admission's
 * leases are released when the response is done with, however it ends.
 */
async function admit(
  limiter: Limiter,
  req: IncomingMessage,
  res: ServerResponse,
  upstream: UpstreamProfile,
  tenant: Tenant,
  path: string,
  record: RequestRecord,
  trial: Trial | undefined,
  clientGone: () => AbortSignal,
  maxWaitMs: number | undefined,
): Promise<Admission> {
  const rank = priorityRank(req.headers['x-sluice-priority']);
  // Pool members out of the choice: cooling tokens, paused ones, and those whose circuit breaker refuses.
  const outOfRotation = () => union(union(upstream.credentials?.outOfRotation?.(), upstream.pauses.members()), trial?.refusing());
  const verdict = await limiter.admit({ limits: upstream.limits, tenant, method: record.method, path, rank, outOfRotation, clientGone, maxWaitMs });
  if (!verdict.admitted) {
    record.limit = verdict.rule.name;
    if (verdict.queuedMs !== undefined) record.queuedMs = round(verdict.queuedMs); // refused after a wait: queue_timeout
    throw refusalError(verdict, upstream, tenant);
  }
  if (verdict.queuedMs > 0) record.queuedMs = round(verdict.queuedMs);
  if (verdict.shadowLimited.length > 0) record.shadowLimited = verdict.shadowLimited;
  if (res.closed) verdict.release();
  else res.once('close', verdict.release);
  return verdict;
}

/**
 * A pause the upstream asked for (limits/pauses.ts): a paused upstream, or a pool whose every token
 * is out with at least one paused, refuses with 429 upstream_paused and the time left; with
 * onLimit: queue a pause that ends within the queue time is waited out here (then the request is
 * admitted like any other, and may queue again there); so is, for a retry, one that ends within
 * the time left for retries.
 */
async function pausedFor(upstream: UpstreamProfile, trial: Trial | undefined, clientGone: () => AbortSignal, waitUpToMs: number): Promise<void> {
  const poolSize = upstream.poolSize;
  const out = () => union(upstream.credentials?.outOfRotation?.(), trial?.refusing());
  const deadline = Date.now() + waitUpToMs;
  // Asked again after each wait: a pause that grew meanwhile past the deadline refuses then, and a
  // timer may fire a few ms before the wall clock says the pause is over (it counts from the event
  // loop's cached time), which the next round waits out.
  for (let waitMs = upstream.pauses.check(poolSize, out(), waitUpToMs); waitMs > 0; ) {
    await waitUnlessGone(waitMs, clientGone);
    waitMs = upstream.pauses.check(poolSize, out(), Math.max(deadline - Date.now(), 0) + TIMER_SLACK_MS);
  }
}

/** How much earlier than asked a timer may fire, by the wall clock. */
const TIMER_SLACK_MS = 50;

/** Waits, unless the client leaves first (then the request ends as abandoned). */
async function waitUnlessGone(ms: number, clientGone: () => AbortSignal): Promise<void> {
  await sleep(ms, undefined, { signal: clientGone() }).catch(() => {
    throw new QueueAbortedError();
  });
}

/** Only a request that waits needs to hear that its client left; most never ask. */
function clientGoneSignal(res: ServerResponse): () => AbortSignal {
  let gone: AbortController | undefined;
  return () => {
    if (!gone) {
      const controller = (gone = new AbortController());
      if (res.closed) controller.abort();
      else res.once('close', () => controller.abort());
    }
    return gone.signal;
  };
}

function refusalError(refusal: Refusal, upstream: UpstreamProfile, tenant: Tenant): GatewayError {
  const message =
    refusal.code === 'queue_full'
      ? `the queue for upstream "${upstream.name}" is full`
      : `limit "${refusal.rule.name}" of upstream "${upstream.name}" reached`;
  return new GatewayError(refusal.code, message, {
    upstream: upstream.name,
    tenant: tenant.name,
    retryAfterMs: refusal.retryAfterMs,
    headers: refusal.headers,
  });
}

/**
 * The upstream's credential provider (undefined: it takes none). Its check() runs before the
 * admission, so a request that could get no credential uses up no limit; the credential itself is
 * taken after it (authorize), for the pool member the limits chose.
 */
function credentialsOf(upstream: UpstreamProfile): CredentialProvider | undefined {
  if (upstream.credentialsMissing) {
    throw new GatewayError('credentials_missing', 'the gateway has no credentials configured for this upstream', {
      upstream: upstream.name,
    });
  }
  return upstream.credentials;
}

/** The log line (and count) of a request refused before the pipeline could take it (CONNECT, Expect). */
export function logRefusal(ctx: Pick<PipelineContext, 'logger' | 'metrics'>, req: IncomingMessage, err: GatewayError): void {
  ctx.logger.info({ method: req.method, path: loggablePath(req.url ?? ''), status: err.status, error: err.code }, 'request');
  ctx.metrics.refused(undefined, undefined, err.code);
}

function logRequest(ctx: PipelineContext, record: RequestRecord, res: ServerResponse, startedAt: number): void {
  const now = performance.now();
  const upstreamMs = record.sentAt === undefined ? undefined : now - record.sentAt;
  const status = record.clientGone ? 499 : res.statusCode;
  ctx.metrics.request({
    upstream: record.upstream,
    tenant: record.tenant,
    error: record.error,
    limit: record.limit,
    status,
    clientGone: record.clientGone,
    // Headers sent without a gateway error: they were the upstream's.
    upstreamAnswered: record.error === undefined && record.sentAt !== undefined && res.headersSent,
    queuedMs: record.queuedMs,
    upstreamMs,
    totalMs: now - startedAt,
    retried: record.retries?.retried.length ? record.retries.retried : undefined,
  });
  ctx.logger.info(
    {
      tenant: record.tenant,
      upstream: record.upstream,
      form: record.form,
      method: record.method,
      path: record.path,
      // 499: the client closed the connection before the response was complete (nginx's convention).
      status,
      error: record.error,
      limit: record.limit,
      shadowLimited: record.shadowLimited,
      queuedMs: record.queuedMs,
      attempts: record.retries && record.retries.attempts > 1 ? record.retries.attempts : undefined,
      retried: record.retries?.retried.length ? record.retries.retried : undefined,
      retryRefused: record.retryRefused,
      upstreamMs: upstreamMs === undefined ? undefined : round(upstreamMs),
      gatewayMs: round(now - startedAt - (upstreamMs ?? 0)),
    },
    'request',
  );
}

function union(a: readonly number[] | undefined, b: readonly number[] | undefined): readonly number[] | undefined {
  return a && b ? [...new Set([...a, ...b])] : (a ?? b);
}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000;
}
