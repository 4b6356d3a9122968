/**
 * Limits learned from the upstream's answers (`feedback:`): what a response says about when the
 * upstream will take requests again, as "pause for N ms". Pure functions of the response and the
 * clock, so that every header variant is tested in a table (test/feedback.test.ts).
 *
 * Upstream input is untrusted: garbage headers, invalid JSON, dates in the past or centuries ahead
 * never throw and never pause for more than `maxPauseMs` (a pause of 0 or less is no pause).
 */
import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from 'node:zlib';

/** Response headers as undici gives them: lower-case names. */
export type ResponseHeaders = Readonly<Record<string, string | string[] | undefined>>;

export type PauseSource = 'retry-after' | 'x-ratelimit' | 'ratelimit' | 'body';

export interface LearnedPause {
  /** ms from now on which the upstream takes requests again (1 ≤ pauseMs ≤ maxPauseMs). */
  pauseMs: number;
  source: PauseSource;
}

/** A `feedback.body` rule, compiled at load. */
export interface BodyRule {
  /** Dot path into the JSON body (`error.code`). */
  path: readonly string[];
  equals: string | number | boolean;
  /** Finds the time until which to pause in the body's text: the group `until`, else the first group. */
  until: RegExp | undefined;
  /** IANA time zone of a time without an offset (BaseLinker: Europe/Warsaw). */
  timezone: string;
  /** The pause when `until` finds no usable time. */
  pauseMs: number;
}

/** A reset above this is an epoch time, not a delta: 10^9 s is 2001, and no delta is 31 years. */
const EPOCH_SECONDS = 1e9;
/** Above this, epoch milliseconds. */
const EPOCH_MS = 1e12;

/**
 * What the headers say: a 429 or 503 with Retry-After, or a remaining count of 0 with its reset
 * (X-RateLimit-*, IETF RateLimit in either draft's shape, RateLimit-Remaining/-Reset), on any status.
 */
export function pauseFromHeaders(status: number, headers: ResponseHeaders, nowMs: number, maxPauseMs: number): LearnedPause | undefined {
  if (status === 429 || status === 503) {
    const ms = retryAfterMs(first(headers['retry-after']), nowMs);
    if (ms !== undefined) return capped(ms, 'retry-after', maxPauseMs);
  }
  if (isZero(first(headers['x-ratelimit-remaining']))) {
    const ms = resetMs(first(headers['x-ratelimit-reset']), nowMs);
    if (ms !== undefined) return capped(ms, 'x-ratelimit', maxPauseMs);
  }
  const ietf = ietfRateLimit(first(headers.ratelimit)) ?? {
    remaining: first(headers['ratelimit-remaining']),
    reset: first(headers['ratelimit-reset']),
  };
  if (isZero(ietf.remaining)) {
    const ms = resetMs(ietf.reset, nowMs);
    if (ms !== undefined) return capped(ms, 'ratelimit', maxPauseMs);
  }
  return undefined;
}

/** A count the upstream reports: this many requests left until its window resets, in ms from now. */
export interface ReportedCount {
  remaining: number;
  resetMs: number;
}

/**
 * The counts the upstream reports, each with its reset: X-RateLimit-Remaining with
 * X-RateLimit-Reset, RateLimit-Remaining with RateLimit-Reset, IETF RateLimit (draft 6 and before
 * `remaining=N, reset=S`; draft 7 on every policy's `r` with its `t`). A count without a usable
 * reset says nothing about which window it is, and is left out; so is garbage.
 */
export function reportedCounts(headers: ResponseHeaders, nowMs: number): ReportedCount[] {
  const counts: ReportedCount[] = [];
  const take = (remaining: string | undefined, reset: string | undefined) => {
    if (remaining === undefined || !/^\s*\d{1,12}\s*$/.test(remaining)) return;
    const ms = resetMs(reset, nowMs);
    if (ms !== undefined && ms > 0) counts.push({ remaining: Number(remaining), resetMs: ms });
  };
  take(first(headers['x-ratelimit-remaining']), first(headers['x-ratelimit-reset']));
  take(first(headers['ratelimit-remaining']), first(headers['ratelimit-reset']));
  const ietf = first(headers.ratelimit);
  if (ietf !== undefined) {
    const items = policyItems(ietf);
    if (items.some((p) => p.has('r'))) for (const p of items) take(p.get('r'), p.get('t'));
    else {
      const legacy = ietfRateLimit(ietf);
      take(legacy?.remaining, legacy?.reset);
    }
  }
  return counts;
}

/** Retry-After: delta seconds or an HTTP-date (RFC 9110 §10.2.3). */
export function retryAfterMs(value: string | undefined, nowMs: number): number | undefined {
  if (value === undefined) return undefined;
  const text = value.trim();
  if (/^\d{1,10}$/.test(text)) return Number(text) * 1000;
  // An HTTP-date names its weekday and GMT; Date.parse would take far looser text.
  if (!/^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(text)) return undefined;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : at - nowMs;
}

/** A reset: delta seconds, epoch seconds (> 10^9) or epoch ms (> 10^12); fractions allowed. */
export function resetMs(value: string | undefined, nowMs: number): number | undefined {
  if (value === undefined || !/^\s*\d{1,16}(\.\d+)?\s*$/.test(value)) return undefined;
  const n = Number(value);
  if (n > EPOCH_MS) return n - nowMs;
  if (n > EPOCH_SECONDS) return n * 1000 - nowMs;
  return n * 1000;
}

/**
 * The IETF header: draft 6 and before `limit=100, remaining=0, reset=30` (one policy: the first
 * value of each key); draft 7 on a structured-field list `"name";r=0;t=30, "other";r=5;t=1` (several
 * policies: the longest `t` among those with `r=0`, as each of them must be waited out).
 */
function ietfRateLimit(value: string | undefined): { remaining: string | undefined; reset: string | undefined } | undefined {
  if (value === undefined) return undefined;
  const items = policyItems(value);
  const policies = items.filter((p) => p.has('r') || p.has('t'));
  if (policies.length > 0) {
    let reset: string | undefined;
    for (const p of policies) {
      const t = p.get('t');
      if (isZero(p.get('r')) && t !== undefined && resetMs(t, 0) !== undefined && (reset === undefined || Number(t) > Number(reset))) reset = t;
    }
    return { remaining: reset === undefined ? undefined : '0', reset };
  }
  const params = new Map<string, string>();
  for (const part of value.split(/[;,]/)) {
    const m = /^\s*([a-z]+)\s*=\s*"?([^"\s]*)"?\s*$/i.exec(part);
    if (m && !params.has(m[1]!.toLowerCase())) params.set(m[1]!.toLowerCase(), m[2]!);
  }
  return { remaining: params.get('remaining'), reset: params.get('reset') };
}

/** A structured-field list's items, each as its parameters. */
function policyItems(value: string): Map<string, string>[] {
  // Quoted names may hold commas and semicolons: blank them before splitting into items and parameters.
  return value.replace(/"(?:[^"\\]|\\.)*"?/g, '""').split(',').map(parameters);
}

/** An item's `key=value` parameters (its first value each). */
function parameters(item: string): Map<string, string> {
  const params = new Map<string, string>();
  for (const part of item.split(';')) {
    const m = /^\s*([a-z]+)\s*=\s*([^\s]*)\s*$/i.exec(part);
    if (m && !params.has(m[1]!.toLowerCase())) params.set(m[1]!.toLowerCase(), m[2]!);
  }
  return params;
}

/**
 * A body as the upstream encoded it (`Content-Encoding`), decoded for the body rules: gzip, deflate
 * (zlib or raw), br, and several of them in turn. At most `maxBytes` once decoded (a zip bomb stops
 * there); undefined when it is larger, corrupt or in an encoding the gateway does not know.
 */
export function decodedBody(body: Buffer, encoding: string | string[] | undefined, maxBytes: number): Buffer | undefined {
  const codings = (Array.isArray(encoding) ? encoding.join(',') : (encoding ?? ''))
    .split(',')
    .map((c) => c.trim().toLowerCase())
    .filter((c) => c !== '' && c !== 'identity');
  let decoded = body;
  try {
    for (const coding of codings.reverse()) {
      const bounded = { maxOutputLength: maxBytes };
      if (coding === 'gzip' || coding === 'x-gzip') decoded = gunzipSync(decoded, bounded);
      else if (coding === 'br') decoded = brotliDecompressSync(decoded, bounded);
      else if (coding === 'deflate') decoded = inflated(decoded, bounded);
      else return undefined;
    }
  } catch {
    return undefined; // corrupt, or more than maxBytes once decoded
  }
  return decoded.length <= maxBytes ? decoded : undefined;
}

/** `deflate` is zlib-wrapped by the letter of HTTP, raw from some servers. */
function inflated(body: Buffer, options: { maxOutputLength: number }): Buffer {
  try {
    return inflateSync(body, options);
  } catch {
    return inflateRawSync(body, options);
  }
}

/**
 * What a small JSON body says, by the first rule that matches (e.g. BaseLinker's 200 with
 * `error_code: ERROR_BLOCKED_TOKEN`): the time its `until` pattern finds, or the rule's `pause`.
 */
export function pauseFromBody(rules: readonly BodyRule[], body: Buffer, nowMs: number, maxPauseMs: number): LearnedPause | undefined {
  let parsed: unknown;
  const text = body.toString('utf8');
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined; // not JSON after all: nothing to learn
  }
  const rule = rules.find((r) => at(parsed, r.path) === r.equals);
  if (!rule) return undefined;
  const found = rule.until?.exec(text);
  const when = found ? (found.groups?.until ?? found[1]) : undefined;
  const until = when === undefined ? undefined : timeIn(when, rule.timezone);
  const ms = until === undefined || until - nowMs <= 0 ? rule.pauseMs : until - nowMs;
  return capped(ms, 'body', maxPauseMs);
}

function at(value: unknown, path: readonly string[]): unknown {
  let here = value;
  for (const key of path) {
    if (here === null || typeof here !== 'object' || !Object.hasOwn(here, key)) return undefined;
    here = (here as Record<string, unknown>)[key];
  }
  return here;
}

/**
 * A time as text: epoch seconds or ms, a time with an offset or Z (ISO 8601), or a local
 * `YYYY-MM-DD HH:MM[:SS]` in `timezone`. Undefined when it is none of these.
 */
export function timeIn(text: string, timezone: string): number | undefined {
  const t = text.trim();
  if (/^\d{9,16}$/.test(t)) {
    const n = Number(t);
    return n > EPOCH_MS ? n : n * 1000;
  }
  const m = /^(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(?:\.\d+)?)?\s*(Z|[+-]\d\d:?\d\d)?$/i.exec(t);
  if (!m) return undefined;
  if (m[7] !== undefined) {
    const parsed = Date.parse(t.replace(' ', 'T'));
    return Number.isNaN(parsed) ? undefined : parsed;
  }
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map((x) => Number(x ?? 0)) as [number, number, number, number, number, number];
  const wall = Date.UTC(y, mo - 1, d, h, mi, s);
  // Date.UTC rolls 2024-13-45 over into 2025; such a time is no time.
  const check = new Date(wall);
  if (check.getUTCMonth() !== mo - 1 || check.getUTCDate() !== d || check.getUTCHours() !== h || check.getUTCMinutes() !== mi) return undefined;
  // The zone's offset at that time; asked again at the result for a time near a DST change.
  const guess = wall - offsetMs(timezone, wall);
  return wall - offsetMs(timezone, guess);
}

/** How far `timezone`'s wall clock is ahead of UTC at `instant`. */
function offsetMs(timezone: string, instant: number): number {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone: timezone,
    hourCycle: 'h23',
    year: 'numeric',
    month: 'numeric',
    day: 'numeric',
    hour: 'numeric',
    minute: 'numeric',
    second: 'numeric',
  }).formatToParts(instant);
  const n = (type: Intl.DateTimeFormatPartTypes) => Number(parts.find((p) => p.type === type)?.value ?? 0);
  return Date.UTC(n('year'), n('month') - 1, n('day'), n('hour'), n('minute'), n('second')) - Math.floor(instant / 1000) * 1000;
}

function capped(ms: number, source: PauseSource, maxPauseMs: number): LearnedPause | undefined {
  if (!Number.isFinite(ms) || ms <= 0) return undefined;
  return { pauseMs: Math.min(Math.ceil(ms), maxPauseMs), source };
}

function isZero(value: string | undefined): boolean {
  return value !== undefined && /^\s*0+\s*$/.test(value);
}

function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}
