/**
 * What a store decision means for the client: which rule refused and for how long, and the
 * headers that tell well-behaved clients how to pace themselves (IETF draft
 * httpapi-ratelimit-headers: `RateLimit-Policy: "name";q=N;w=S` and `RateLimit: "name";r=R;t=S`).
 */
import type { ErrorCode } from '../errors.js';
import { CONCURRENCY_WAIT_HINT_MS, type RuleOutcome, type StoreDecision } from '../store/store.js';
import type { LimitRule, RuleSet } from './rules.js';

type RefusalCode = Extract<ErrorCode, 'rate_limited' | 'quota_exceeded' | 'concurrency_limited' | 'queue_full'>;

const CODE_OF_KIND = { rate: 'rate_limited', quota: 'quota_exceeded', concurrency: 'concurrency_limited' } as const;

export interface Refusal {
  admitted: false;
  code: RefusalCode;
  /** The rule that refused (the one that frees last when several do). */
  rule: LimitRule;
  /** Whole ms, at least 1: waiting this long and asking again admits, unless others took the room. */
  retryAfterMs: number;
  /** ms between two requests at the refusing rule's rate, for queue estimates (0: unknown). */
  intervalMs: number;
  /** Exact, or undefined when room comes when a request in flight ends (concurrency). */
  exactWaitMs: number | undefined;
  headers: Record<string, string>;
  /** ms the request waited in the queue before this refusal (queue_timeout); absent when refused at once. */
  queuedMs?: number;
}

/** Shadow rules that would have refused, and the headers for the forwarded response. */
export interface Report {
  headers: Record<string, string>;
  shadowLimited: string[];
}

export function refusalOf(set: RuleSet, decision: StoreDecision): Refusal | undefined {
  if (decision.admitted) return undefined;
  let binding = -1;
  let waitMs = -1;
  set.rules.forEach((rule, i) => {
    const outcome = decision.outcomes[i]!;
    if (rule.shadow || outcome.ok) return;
    const wait = rule.kind === 'concurrency' ? CONCURRENCY_WAIT_HINT_MS : outcome.waitMs;
    if (wait > waitMs) [binding, waitMs] = [i, wait];
  });
  const rule = set.rules[binding]!;
  const retryAfterMs = Math.max(1, Math.ceil(waitMs));
  const onRelease = rule.kind === 'concurrency';
  return {
    admitted: false,
    code: CODE_OF_KIND[rule.kind],
    rule,
    retryAfterMs,
    intervalMs: rule.intervalMs,
    exactWaitMs: onRelease ? undefined : waitMs,
    headers: {
      ...policyHeaders(set, rule, 0, retryAfterMs),
      'x-sluice-limit': rule.name,
    },
  };
}

export function reportOf(set: RuleSet, outcomes: readonly RuleOutcome[]): Report {
  const shadowLimited: string[] = [];
  let tightest = -1;
  let least = Infinity;
  set.rules.forEach((rule, i) => {
    const outcome = outcomes[i]!;
    if (rule.shadow) {
      if (!outcome.ok) shadowLimited.push(rule.name);
      return;
    }
    const left = outcome.remaining / capacityOf(rule);
    if (left < least) [tightest, least] = [i, left];
  });
  const headers: Record<string, string> =
    tightest < 0 ? {} : policyHeaders(set, set.rules[tightest]!, outcomes[tightest]!.remaining, outcomes[tightest]!.resetMs);
  if (shadowLimited.length > 0) headers['x-sluice-shadow-limit'] = shadowLimited.join(', ');
  return { headers, shadowLimited };
}

function capacityOf(rule: LimitRule): number {
  return rule.kind === 'rate' ? rule.burst : rule.limit;
}

function policyHeaders(set: RuleSet, rule: LimitRule, remaining: number, resetMs: number): Record<string, string> {
  return {
    'ratelimit-policy': set.policyHeader,
    ratelimit: `"${rule.name}";r=${remaining};t=${Math.ceil(resetMs / 1000)}`,
  };
}
