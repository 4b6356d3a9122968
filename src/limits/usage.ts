/**
 * How far each limit rule is used right now, read from the store without consuming anything: the
 * status API (`GET /status`, `/status/tenants/<t>`) and the metrics' utilisation and remaining
 * gauges show it. The states to read are chosen by UpstreamLimits (rules.ts): those every tenant
 * shares, and each tenant's per-tenant ones.
 */
import { CONCURRENCY_WAIT_HINT_MS, type LimitStore, type RuleKind } from '../store/store.js';
import type { LimitRule, RuleState } from './rules.js';

export interface RuleUsage {
  rule: string;
  kind: RuleKind;
  per: LimitRule['per'];
  shadow: boolean;
  /** The tenant whose state this is (a rule per tenant), else undefined. */
  tenant: string | undefined;
  /** The pool member whose state this is (a rule per credential), else undefined. */
  credential: number | undefined;
  /** rate: its burst (requests back to back); quota and concurrency: the limit. */
  capacity: number;
  /** Requests the rule would admit right now. */
  remaining: number;
  used: number;
  /** used / capacity, 0..1. */
  utilisation: number;
  /** 0 when the rule would admit a request now; else ms until it would (a hint for concurrency). */
  retryAfterMs: number;
  /** ms until the rule is full again (rate) or its period ends (quota); 0 for concurrency. */
  resetMs: number;
}

/**
 * The usage of each state, in their order, read in one store call: states of one upstream only
 * (they share its Redis Cluster hash tag, which one call needs).
 */
export async function usageOf(store: LimitStore, states: readonly RuleState[]): Promise<RuleUsage[]> {
  if (states.length === 0) return [];
  const outcomes = await store.peek(states.map((s) => s.store));
  return states.map(({ rule, tenant: owner, credential }, i) => {
    const outcome = outcomes[i]!;
    const capacity = rule.kind === 'rate' ? rule.burst : rule.limit;
    const remaining = Math.min(capacity, Math.max(0, Math.floor(outcome.remaining)));
    const used = capacity - remaining;
    return {
      rule: rule.name,
      kind: rule.kind,
      per: rule.per,
      shadow: rule.shadow,
      tenant: owner,
      credential,
      capacity,
      remaining,
      used,
      utilisation: capacity > 0 ? used / capacity : 0,
      retryAfterMs: outcome.ok ? 0 : Math.ceil(rule.kind === 'concurrency' ? CONCURRENCY_WAIT_HINT_MS : outcome.waitMs),
      resetMs: Math.ceil(outcome.resetMs),
    };
  });
}
