/**
 * The forward and learn stages of one attempt: the request goes upstream, the answer streams to
 * the client while the learn stage listens, unless the retry policy takes the answer (or the
 * failure) for another attempt. The decision is made when the upstream's status arrives, before a
 * byte of it goes to the client; once the client got the head, nothing is retried.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Credential, CredentialProvider } from '../credentials/provider.js';
import { ResponseFeedback } from '../limits/learn.js';
import type { Admission } from '../limits/admit.js';
import type { Logger } from '../observability/logger.js';
import type { UpstreamProfile } from '../policy.js';
import type { Trial } from '../upstream/breaker.js';
import { forward, type KeptAnswer, type ResponseListener, type UpstreamRequest } from '../upstream/forward.js';
import { upstreamRequestHeaders } from '../upstream/headers.js';
import type { RetryRun } from '../upstream/retry.js';
import { keepBody, requestBody } from './body.js';

export interface Attempt {
  req: IncomingMessage;
  res: ServerResponse;
  upstream: UpstreamProfile;
  /** Path and query on the upstream. */
  path: string;
  body: UpstreamRequest['body'];
  credentials: CredentialProvider | undefined;
  credential: Credential | undefined;
  /** The pool member the credential is (undefined: no pool). */
  member: number | undefined;
  trial: Trial | undefined;
  /** The admission's headers for the client (RateLimit, X-Sluice-Shadow-Limit). */
  responseHeaders: Record<string, string>;
  /** The admission's: pulls its limits down to the counts the upstream reports. */
  lowerTo: Admission['lowerTo'];
  retries: RetryRun | undefined;
}

/**
 * Sends one attempt. Resolves to undefined when the client has its answer, or to the ms to wait
 * before the next attempt; rejects with what the client is to be told.
 */
export async function sendAttempt(attempt: Attempt): Promise<number | undefined> {
  const { req, res, upstream, credentials, credential, trial, retries } = attempt;
  retries?.sending(); // a retry counts (attempts, the log) once it goes, not when decided
  let waitMs: number | undefined;
  let answered = false;
  try {
    const intercepted = await forward(
      {
        upstream: upstream.name,
        dispatcher: upstream.dispatcher,
        method: req.method ?? '',
        path: attempt.path,
        headers: upstreamRequestHeaders(req.rawHeaders, req.headers, {
          host: upstream.hostHeader,
          clientIp: req.socket.remoteAddress,
          credential,
          idempotencyKey: retries?.idempotencyKey,
        }),
        body: attempt.body,
        headersTimeoutMs: upstream.headersTimeoutMs,
        bodyTimeoutMs: upstream.bodyIdleTimeoutMs,
        responseHeaders: attemptHeaders(attempt.responseHeaders, retries),
        // learn: a 401 makes an OAuth2 token suspect, a 401/403 takes a pool token out of rotation,
        // a 5xx counts against the circuit breaker, and a pause the upstream asks for pauses the token
        // (or the upstream) everywhere; retried answers teach the same.
        listener: learner(attempt, (status) => {
          answered = true;
          trial?.answered(status);
          if (credential) credentials!.answered(credential, status);
        }),
        // retry: an answer worth another attempt never reaches the client.
        intercept: retries && ((status, headers) => (waitMs = retries.afterStatus(status, headers)) !== undefined),
      },
      res,
    );
    if (!intercepted) return undefined;
    retries!.keep(intercepted.answer); // the client's answer, should the retry be refused
    return waitMs;
  } catch (err) {
    waitMs = retries?.afterError(err, answered || res.headersSent);
    if (waitMs === undefined) throw err;
    trial?.failed(err); // a connection failure or timeout counts against the breaker, retried or not
    return waitMs;
  }
}

/**
 * A retry was refused before it went: the client gets the answer it was to replace, as it would
 * have had it then (kept whole by forward.ts), rather than the gateway's refusal.
 */
export function replayAnswer(res: ServerResponse, answer: KeptAnswer): void {
  res.writeHead(answer.status, answer.headers);
  res.end(answer.body);
}

/**
 * The request body, read once. Every check passed: now the client may send the body it is holding
 * back (server.ts). A request that may be retried has its body kept in memory to be sent again,
 * when it is small enough; a larger one streams, and the request is not retried.
 */
export async function firstBody(
  req: IncomingMessage,
  res: ServerResponse,
  upstream: UpstreamProfile,
  retries: RetryRun | undefined,
  logger: Logger,
): Promise<UpstreamRequest['body']> {
  const body = requestBody(req, upstream.maxBodySize, upstream.name);
  if (req.headers.expect?.toLowerCase() === '100-continue' && req.httpVersionMinor >= 1) res.writeContinue();
  if (!body || !retries || retries.never !== undefined) return body;
  const kept = await keepBody(body, retries.maxBodySize);
  if (!kept.kept) {
    retries.never = `the body is larger than retry.maxBodySize (${retries.maxBodySize} bytes)`;
    logger.debug({ upstream: upstream.name, reason: retries.never }, 'request not retried');
  }
  return kept.body;
}

/** The learn stage's listener of the response: `answered` hears the status; pauses are learned from status, headers and body. */
function learner(attempt: Attempt, answered: (status: number) => void): ResponseListener {
  const feedback = new ResponseFeedback(attempt.upstream.feedback, attempt.upstream.pauses, attempt.member, attempt.lowerTo);
  return {
    started: (status, headers) => {
      answered(status);
      return feedback.started(status, headers);
    },
    ended: (body) => feedback.ended(body),
  };
}

/** The admission's headers, and how many attempts the answer took when more than one. */
function attemptHeaders(headers: Record<string, string>, retries: RetryRun | undefined): Record<string, string> {
  return retries && retries.attempts > 1 ? { ...headers, 'x-sluice-attempts': String(retries.attempts) } : headers;
}
