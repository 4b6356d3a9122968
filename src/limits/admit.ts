/**
 * The admit stage: may this request go now, wait, or must it be refused? Every rule that applies
 * is decided together in one store call. A refusal is a value (STYLE #4); with onLimit: queue the
 * request waits in the WaitQueue when it has a chance to be admitted in time, and is refused at
 * once when it has none. An admission holds its concurrency leases until `release()`, and the
 * leases are renewed while held, so that only a crashed instance's leases ever expire.
 */
import { randomBytes } from 'node:crypto';
import type { Tenant } from '../tenants/identify.js';
import type { Lease, LimitStore, StoreDecision } from '../store/store.js';
import { WaitQueue, type Attempt } from './queue.js';
import type { RuleSet, UpstreamLimits } from './rules.js';
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
};

export class Limiter {
  private readonly queue = new WaitQueue<Verdict>((verdict) => verdict.admitted && verdict.release());
  /** Leases held by requests in flight on this instance, renewed every third of their TTL. */
  private readonly held = new Map<string, Lease[]>();
  private readonly renewer: NodeJS.Timeout;
  private readonly instance = randomBytes(6).toString('base64url');
  private sequence = 0;

  constructor(
    private readonly store: LimitStore,
    private readonly leaseTtlMs: number,
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
    if (this.queue.sizeOf(request.limits.upstream) >= onLimit.maxQueue) return { ...refusal, code: 'queue_full' };
    // Hopeless: those ahead in the lane go first, one interval of the refusing rule each.
    const estimateMs = refusal.retryAfterMs + this.queue.ahead(set.key, request.rank) * refusal.intervalMs;
    if (refusal.exactWaitMs !== undefined && estimateMs > onLimit.queueMs) return { ...refusal, retryAfterMs: Math.ceil(estimateMs) };

    const enqueuedAt = performance.now();
    const result = await this.queue.wait({
      group: request.limits.upstream,
      lane: set.key,
      rank: request.rank,
      deadline: enqueuedAt + onLimit.queueMs,
      signal: request.clientGone(),
      attempt,
    });
    const verdict = result.value ?? refusal;
    return verdict.admitted ? { ...verdict, queuedMs: performance.now() - enqueuedAt } : verdict;
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
    return {
      admitted: true,
      credential: set.candidates > 1 ? decision.candidate : undefined,
      headers: report.headers,
      shadowLimited: report.shadowLimited,
      queuedMs: 0,
      release: () => {
        if (!this.held.delete(lease)) return;
        this.store.release(leases).then(
          () => this.queue.released(),
          () => undefined, // a lease not released expires by its TTL
        );
      },
    };
  }

  private async renew(): Promise<void> {
    if (this.held.size === 0) return;
    await this.store.renew([...this.held.values()].flat(), this.leaseTtlMs);
  }
}
