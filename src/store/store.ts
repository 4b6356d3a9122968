/**
 * The one narrow interface every limit store implements: `decide` checks and consumes all the
 * rules of one request together, atomically (all admit or none consumes), and `release` ends a
 * concurrency lease. The memory store (memory.ts) and the Redis store (redis.ts, running decide.lua.ts)
 * give the same answers for the same state and time; test/store-contract.test.ts runs one suite
 * against both. Rules arrive as plain numbers, derived once per config in limits/rules.ts.
 */

export type RuleKind = 'rate' | 'concurrency' | 'quota';

/** Fair sharing of a rate rule between tenants (limits/fair.ts explains the algorithm). */
export interface FairShare {
  /** The requesting tenant. */
  tenant: string;
  weight: number;
  /** Guaranteed rate of this tenant, in requests per ms (0 without a reserve). */
  reservePerMs: number;
  /** A tenant counts as active this long after its last request, ms. */
  activeWindowMs: number;
}

export interface StoreRule {
  kind: RuleKind;
  /**
   * State keys, whole (prefix and Redis Cluster hash tag included): one per credential candidate
   * when the rule counts per credential, otherwise one shared by every candidate.
   */
  keys: readonly string[];
  /** rate: requests per period; concurrency: requests in flight; quota: requests per calendar period. */
  limit: number;
  /** rate and quota: the period in ms (a quota's periods are aligned to the Unix epoch: UTC hours and days). */
  periodMs: number;
  /** rate: how many requests may go back to back (token bucket size, at least 1). */
  burst: number;
  fair: FairShare | undefined;
  /** Evaluated and reported, never refuses (mode: shadow). */
  shadow: boolean;
}

export interface DecideRequest {
  rules: readonly StoreRule[];
  /** Credential candidates (a token pool's size; 1 otherwise): the store picks the least loaded that admits. */
  candidates: number;
  /** Candidates out of rotation (pool tokens cooling down after a 401/403): never chosen. */
  excluded?: readonly number[] | undefined;
  /** Id of the concurrency lease taken if the request is admitted (unique per request). */
  lease: string;
  /** Lease lifetime in ms: a crashed instance's leases expire after it. */
  leaseTtlMs: number;
}

export interface RuleOutcome {
  /** This rule admits the request. */
  ok: boolean;
  /**
   * When !ok, ms until the rule would admit it (exact for rate and quota); 0 for a concurrency
   * rule, which admits again when a request in flight ends.
   */
  waitMs: number;
  /** Requests the rule would still admit right now, after this one if it was admitted. */
  remaining: number;
  /** ms until the rule is back to its full capacity (rate), the period ends (quota), or 0. */
  resetMs: number;
}

export interface StoreDecision {
  admitted: boolean;
  /** The credential candidate chosen (0 with a single credential). */
  candidate: number;
  /** One per rule, in the request's order, for the chosen candidate. */
  outcomes: RuleOutcome[];
}

/** A rule to pull down to what the upstream reports, and the count left to pull it to. */
export interface Lowering {
  rule: StoreRule;
  remaining: number;
}

export interface Lease {
  key: string;
  id: string;
}

export interface LimitStore {
  /** Throws StoreUnavailableError when the store cannot answer in time. */
  decide(request: DecideRequest): Promise<StoreDecision>;
  /**
   * Reads each rule's state now, consuming nothing (the status API and the metrics): one outcome
   * per rule, each evaluated on its own, with `remaining` the requests it would admit right now.
   * Every rule has a single key here (one per credential is split by the caller).
   * Throws StoreUnavailableError when the store cannot answer in time.
   */
  peek(rules: readonly StoreRule[]): Promise<RuleOutcome[]>;
  /**
   * The upstream reported fewer requests left than the gateway counts: each rate and quota rule is
   * pulled down so that at most its `remaining` more are admitted (until it refills at its own
   * rate, or its period ends); a rule already at or below that, and concurrency rules, are left
   * alone. Single-key rules, as for peek; all in one call. Throws StoreUnavailableError like decide.
   */
  lower(lowerings: readonly Lowering[]): Promise<void>;
  /** Ends leases; never throws (an unreleased lease expires by its TTL). */
  release(leases: readonly Lease[]): Promise<void>;
  /** Extends leases still held to now + ttlMs (requests longer than the TTL keep their lease). */
  renew(leases: readonly Lease[], ttlMs: number): Promise<void>;
  close(): Promise<void>;
}

/** The shared store did not answer (down, unreachable or too slow): store.onError decides what follows. */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** A concurrency refusal has no exact wait; for choosing among candidates it weighs this much. */
export const CONCURRENCY_WAIT_HINT_MS = 1000;

/**
 * Which candidate a decision settles on, identically in both stores: of those not excluded, the
 * least loaded of those that admit (ties: the lowest index), else the one that admits soonest.
 */
export interface CandidateScore {
  ok: boolean;
  load: number;
  waitMs: number;
}

export function chooseCandidate(scores: readonly CandidateScore[], excluded: readonly number[] = []): number {
  let best = -1;
  for (let i = 0; i < scores.length; i++) {
    if (excluded.includes(i)) continue;
    if (best < 0) {
      best = i;
      continue;
    }
    const a = scores[best]!;
    const b = scores[i]!;
    if (b.ok !== a.ok ? b.ok : b.ok ? b.load < a.load : b.waitMs < a.waitMs) best = i;
  }
  return Math.max(best, 0); // all excluded cannot happen: the pool refuses before it asks
}
