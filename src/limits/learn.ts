/**
 * The learn stage's ear on one response (forward.ts ResponseListener): a pause the upstream asks
 * for in its headers, or in a small JSON body by a `feedback.body` rule, pauses the request's scope
 * (its pool token, else the upstream) through `Pauses`; the counts left the upstream reports pull
 * the request's rules that count the same thing down to them (`lowerTo`, the admission's: the
 * gateway's own count never runs ahead of the upstream's); and an upstream 429 reaches the client as
 * it is, marked `X-Sluice-Upstream-Limited: true` and with a Retry-After (the upstream's, else the
 * learned pause, else 1 s).
 */
import type { FeedbackConfig } from '../config/schema.js';
import type { ResponseInterest, ResponseListener } from '../upstream/forward.js';
import { decodedBody, pauseFromBody, pauseFromHeaders, reportedCounts, type LearnedPause, type ReportedCount, type ResponseHeaders } from './feedback.js';
import type { Pauses } from './pauses.js';

const LIMITED = { 'x-sluice-upstream-limited': 'true' };
/** What most answers get: nothing to add, no body to read (shared: the common path allocates nothing). */
const NOTHING: ResponseInterest = Object.freeze({});

export class ResponseFeedback implements ResponseListener {
  /** The body's Content-Encoding: a gzipped JSON error is decoded before the rules read it. */
  private encoding: string | string[] | undefined;

  constructor(
    private readonly config: FeedbackConfig,
    private readonly pauses: Pauses,
    /** The pool token the request carried (undefined: no pool; a pause is the upstream's). */
    private readonly member: number | undefined,
    /** The admission's: the upstream reported these counts left. */
    private readonly lowerTo: (counts: readonly ReportedCount[], member: number | undefined) => void,
    private readonly clock: () => number = Date.now,
  ) {}

  started(status: number, headers: ResponseHeaders): ResponseInterest {
    // Most answers say nothing about limits: they are not parsed at all.
    const says = this.config.headers && saysLimits(status, headers);
    const learned = says ? pauseFromHeaders(status, headers, this.clock(), this.config.maxPause) : undefined;
    this.take(learned);
    const counts = says ? reportedCounts(headers, this.clock()) : undefined;
    if (counts && counts.length > 0) this.lowerTo(counts, this.member);
    this.encoding = headers['content-encoding'];
    const readBody = this.config.body.length > 0 && isJson(headers['content-type']);
    if (status !== 429 && !readBody) return NOTHING;
    return {
      headers: status === 429 ? { ...LIMITED, ...(headers['retry-after'] ? {} : { 'retry-after': seconds(learned?.pauseMs ?? 1000) }) } : undefined,
      readBodyUpTo: readBody ? this.config.maxBodySize : undefined,
    };
  }

  ended(body: Buffer): Record<string, string> | undefined {
    // Decoded at most to maxBodySize; corrupt or in an unknown encoding: nothing to learn.
    const decoded = decodedBody(body, this.encoding, this.config.maxBodySize);
    const learned = decoded && pauseFromBody(this.config.body, decoded, this.clock(), this.config.maxPause);
    this.take(learned);
    return learned && LIMITED;
  }

  private take(learned: LearnedPause | undefined): void {
    if (learned) this.pauses.pause(this.member, learned.pauseMs, learned.source);
  }
}

/**
 * Whether the headers hold any that feedback.ts reads (pauseFromHeaders, reportedCounts): a
 * Retry-After on a 429 or 503, or a remaining count in any of its forms. Keep the two in step.
 */
function saysLimits(status: number, headers: ResponseHeaders): boolean {
  return (
    ((status === 429 || status === 503) && headers['retry-after'] !== undefined) ||
    headers['x-ratelimit-remaining'] !== undefined ||
    headers['ratelimit-remaining'] !== undefined ||
    headers.ratelimit !== undefined
  );
}

function isJson(type: string | string[] | undefined): boolean {
  const value = Array.isArray(type) ? type[0] : type;
  return value !== undefined && /^\s*application\/([\w.+-]*\+)?json\s*(;|$)/i.test(value);
}

function seconds(ms: number): string {
  return String(Math.max(1, Math.ceil(ms / 1000)));
}
