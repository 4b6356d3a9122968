/**
 * The admit stage: may this request go now, wait, or must it be refused? Every rule that applies
 * is decided together in one store call. A refusal is a value (STYLE #4); with onLimit: queue the
 * request waits in the WaitQueue when it has a chance to be admitted in time, and is refused at
 * once when it has none. An admission holds its concurrency leases until `release()`, and the
 * leases are renewed while held, so that only a crashed instance's leases ever expire.
 */
import { randomBytes } from 'node:crypto';
import type { Tenant } from '../tenants/identify.js';
import type { Logger } from '../observability/logger.js';
import { StoreUnavailableError, type Lease, type LimitStore, type Lowering, type RuleOutcome, type StoreDecision } from '../store/store.js';
import type { ReportedCount } from './feedback.js';
import { WaitQueue, type Attempt } from './queue.js';
import type { LimitRule, RuleSet, RuleState, UpstreamLimits } from './rules.js';
import { usageOf, type RuleUsage } from './usage.js';
import { refusalOf, reportOf, type Refusal } from './verdict.js';

export interface Admission {
  admitted: true;
  /** Index of the credential to use when the upstream has a pool; 0 otherwise. */
  credential: number | undefined;
  /** RateLimit headers for the response, and X-Sluice-Shadow-Limit when a shadow rule would have refused. */
  headers: Record<string, string>;
  shadowLimited: string[];
  /** ms the request waited in the queue (0 when admitted at once). */
  queuedMs: number;
  /** Ends the request's concurrency leases; safe to call more than once. */
  release(): void;
  /**
   * The upstream reported counts left (X-RateLimit-Remaining, RateLimit): the request's rules that
   * speak for the same thing are pulled down to them in the store (see `countsFor`). `pooled`: the
   * `member`: the pool token the request carried (whose count the upstream reports), which may not
   * be the one the limits chose if that one went out of rotation meanwhile. One store call, fire
   * and forget.
   */
  lowerTo(counts: readonly ReportedCount[], member: number | undefined): void;
}

export type Verdict = Admission | Refusal;

export interface AdmitRequest {
  limits: UpstreamLimits;
  tenant: Tenant;
  method: string;
  /** Path on the upstream, without the query. */
  path: string;
  /** X-Sluice-Priority rank (queue order). */
  rank: number;
  /** Pool members out of rotation, asked at every attempt: a rule per credential never picks them. */
  outOfRotation?: (() => readonly number[] | undefined) | undefined;
  /** Aborts when the client leaves (asked for only when the request queues): it leaves the queue. */
  clientGone: () => AbortSignal;
  /** The longest it may queue when less than onLimit.queue: a retry's time left (retry.within). */
  maxWaitMs?: number | undefined;
}

/** The lease id of a request no concurrency rule counts (the store takes no lease for it). */
const NO_LEASE = '-';

const NO_LIMITS: Admission = {
  admitted: true,
  credential: undefined,
  headers: {},
  shadowLimited: [],
  queuedMs: 0,
  release: () => undefined,
  lowerTo: () => undefined,
};

export class Limiter {
  private readonly queue = new WaitQueue<Verdict>((verdict) => verdict.admitted && verdict.release());
  /** Leases held by requests in flight on this instance, renewed every third of their TTL. */
  private readonly held = new Map<string, Lease[]>();
  private readonly renewer: NodeJS.Timeout;
  private readonly instance = randomBytes(6).toString('base64url');
  private sequence = 0;

  /** A lowering failed other than by the store being away (a script error): said once. */
  private loweringFailed = false;

  constructor(
    private readonly store: LimitStore,
    private readonly leaseTtlMs: number,
    private readonly logger?: Logger,
  ) {
    this.renewer = setInterval(() => void this.renew(), leaseTtlMs / 3).unref();
  }

  async admit(request: AdmitRequest): Promise<Verdict> {
    const set = request.limits.forRequest(request.method, request.path, request.tenant);
    if (!set) return NO_LIMITS;
    const lease = set.concurrencyRules.length > 0 ? `${this.instance}:${(this.sequence++).toString(36)}` : NO_LEASE;
    const attempt = () => this.attempt(set, lease, set.candidates > 1 ? request.outOfRotation?.() : undefined);
    const first = (await attempt()).value;
    const onLimit = request.limits.onLimit;
    if (first.admitted || !onLimit) return first;

    const refusal = first;
    const queueMs = Math.min(onLimit.queueMs, request.maxWaitMs ?? Infinity);
    if (queueMs <= 0) return refusal;
    if (this.queue.sizeOf(request.limits.upstream) >= onLimit.maxQueue) return { ...refusal, code: 'queue_full' };
    // Hopeless: those ahead in the lane go first, one interval of the refusing rule each.
    const estimateMs = refusal.retryAfterMs + this.queue.ahead(set.key, request.rank) * refusal.intervalMs;
    if (refusal.exactWaitMs !== undefined && estimateMs > queueMs) return { ...refusal, retryAfterMs: Math.ceil(estimateMs) };

    const enqueuedAt = performance.now();
    const result = await this.queue.wait({
      group: request.limits.upstream,
      tenant: request.tenant.name,
      lane: set.key,
      rank: request.rank,
      deadline: enqueuedAt + queueMs,
      signal: request.clientGone(),
      attempt,
    });
    const verdict = result.value ?? refusal;
    // Either way the wait is the request's (metrics: queue wait, and queue_timeout for a refusal).
    return { ...verdict, queuedMs: performance.now() - enqueuedAt };
  }

  /** Requests waiting now on this instance: upstream → tenant → count (the status API and the metrics). */
  queueDepths(): Map<string, Map<string, number>> {
    return this.queue.depths();
  }

  /**
   * The usage now of states of one upstream's rules (UpstreamLimits.sharedStates, tenantStates),
   * read in one store call, consuming nothing. Throws StoreUnavailableError when the store is down.
   */
  usage(states: readonly RuleState[]): Promise<RuleUsage[]> {
    return usageOf(this.store, states);
  }

  async close(): Promise<void> {
    clearInterval(this.renewer);
    await this.store.close();
  }

  private async attempt(set: RuleSet, lease: string, excluded: readonly number[] | undefined): Promise<Attempt<Verdict>> {
    const decision = await this.store.decide({
      rules: set.storeRules,
      candidates: set.candidates,
      excluded,
      lease,
      leaseTtlMs: this.leaseTtlMs,
    });
    const refusal = refusalOf(set, decision);
    if (refusal) return { admitted: false, waitMs: refusal.exactWaitMs, value: refusal };
    return { admitted: true, waitMs: 0, value: this.admission(set, decision, lease) };
  }

  private admission(set: RuleSet, decision: StoreDecision, lease: string): Admission {
    const leases: Lease[] = [];
    for (const i of set.concurrencyRules) {
      const rule = set.storeRules[i]!;
      // A shadow rule that would have refused took no lease.
      if (decision.outcomes[i]!.ok) leases.push({ key: rule.keys[rule.keys.length > 1 ? decision.candidate : 0]!, id: lease });
    }
    if (leases.length > 0) this.held.set(lease, leases);
    const report = reportOf(set, decision.outcomes);
    const admittedAt = performance.now();
    return {
      admitted: true,
      credential: set.candidates > 1 ? decision.candidate : undefined,
      headers: report.headers,
      shadowLimited: report.shadowLimited,
      queuedMs: 0,
      lowerTo: (counts, member) => {
        const elapsedMs = performance.now() - admittedAt;
        const lowerings: Lowering[] = [];
        set.rules.forEach((rule, i) => {
          const store = set.storeRules[i]!;
          const token = store.keys.length > 1 ? (member ?? decision.candidate) : 0;
          // What the rule counted left is known for the token the limits chose; for another, the store compares.
          const counted = token === decision.candidate || store.keys.length === 1 ? decision.outcomes[i]! : { ...decision.outcomes[i]!, remaining: Infinity };
          const remaining = countFor(rule, counted, counts, member !== undefined, elapsedMs);
          if (remaining !== undefined) lowerings.push({ rule: { ...store, keys: [store.keys[token]!] }, remaining });
        });
        if (lowerings.length > 0) void this.lower(lowerings);
      },
      release: () => {
        if (!this.held.delete(lease)) return;
        this.store.release(leases).then(
          () => this.queue.released(),
          () => undefined, // a lease not released expires by its TTL
        );
      },
    };
  }

  /** A store that cannot answer now misses one hint (the next response brings another); any other failure is a fault to show. */
  private async lower(lowerings: readonly Lowering[]): Promise<void> {
    try {
      await this.store.lower(lowerings);
    } catch (err) {
      if (err instanceof StoreUnavailableError || this.loweringFailed) return;
      this.loweringFailed = true;
      this.logger?.error({ err: String(err) }, 'pulling limits down to an upstream\'s count failed; said once, until a restart');
    }
  }

  private async renew(): Promise<void> {
    if (this.held.size === 0) return;
    await this.store.renew([...this.held.values()].flat(), this.leaseTtlMs);
  }
}

/**
 * What an upstream's reported counts mean for one rule of an admitted request: the count to pull it
 * down to, or undefined to leave it. A count speaks for a rule when
 * - the rule is an enforced rate or quota rule that counts what the upstream counts: per credential
 *   when the request carried a pool token (one token's count says nothing of the pool's sum), per
 *   upstream otherwise (the upstream knows no tenants, and concurrency is not a count of this kind);
 * - the count's window lasts at least as long as the rule needs to recover: a rate rule's time to
 *   refill its burst, a quota's period left. A count of a shorter window (a per-second limit
 *   reporting 0) must not empty a longer one (a daily quota) until long after the upstream forgot;
 * - and it is below what the rule counted left when it admitted the request (still in the same
 *   quota period: a period that ended since has a fresh count the old answer says nothing about).
 */
function countFor(rule: LimitRule, outcome: RuleOutcome, counts: readonly ReportedCount[], pooled: boolean, elapsedMs: number): number | undefined {
  if (rule.shadow || rule.kind === 'concurrency' || rule.per !== (pooled ? 'credential' : 'upstream')) return undefined;
  const recoverMs = rule.kind === 'rate' ? rule.burst * rule.intervalMs : outcome.resetMs - elapsedMs;
  if (recoverMs <= 0) return undefined;
  let least: number | undefined;
  for (const count of counts) {
    if (count.resetMs >= recoverMs && count.remaining < outcome.remaining && (least === undefined || count.remaining < least)) least = count.remaining;
  }
  return least;
}
