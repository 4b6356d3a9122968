/**
 * store.onError: what the gateway does while the shared store (Redis) cannot answer.
 *   local: keep enforcing, in memory, this instance's share of every limit (the limit divided by
 *          the number of instances last seen in Redis); counted per instance until Redis is back.
 *   deny:  refuse with 503 store_unavailable.
 *   allow: let requests through unlimited.
 * A failure is logged once when it starts (error) and once when it ends (info), with the count of
 * decisions taken without Redis. While degraded, one request (or status read) per PROBE_EVERY_MS
 * asks Redis again, so a hung Redis costs at most one store timeout per probe, never one per request.
 */
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { MemoryStore } from './memory.js';
import {
  StoreUnavailableError,
  type DecideRequest,
  type Lease,
  type LimitStore,
  type Lowering,
  type RuleOutcome,
  type StoreDecision,
  type StoreRule,
} from './store.js';

export type OnStoreError = 'local' | 'deny' | 'allow';

/** A store shared by several instances. */
export interface SharedStore extends LimitStore {
  /** Instances seen recently (this one included). */
  instances(): number;
}

const PROBE_EVERY_MS = 1_000;

export class ResilientStore implements LimitStore {
  private readonly local = new MemoryStore();
  private readonly localLeases = new Set<string>();
  private degradedSince: number | undefined;
  private degradedDecisions = 0;
  private lastProbe = 0;
  private readonly scaled = new WeakMap<readonly StoreRule[], { share: number; rules: StoreRule[] }>();

  constructor(
    private readonly shared: SharedStore,
    private readonly onError: OnStoreError,
    private readonly logger: Logger,
    /** Each call to the shared store that failed (metrics: sluice_store_errors_total). */
    private readonly unavailable: () => void = () => undefined,
  ) {}

  async decide(request: DecideRequest): Promise<StoreDecision> {
    const shared = await this.viaShared(() => this.shared.decide(request));
    if (shared) return shared.answer;
    this.degradedDecisions++;
    switch (this.onError) {
      case 'deny':
        throw new GatewayError('store_unavailable', 'the shared limit store cannot be reached; try again shortly', {
          retryAfterMs: PROBE_EVERY_MS,
        });
      case 'allow':
        return {
          admitted: true,
          candidate: 0,
          outcomes: request.rules.map((rule) => ({ ok: true, waitMs: 0, remaining: rule.limit, resetMs: 0 })),
        };
      case 'local': {
        const decision = await this.local.decide({ ...request, rules: this.share(request.rules) });
        if (decision.admitted) this.localLeases.add(request.lease);
        return decision;
      }
    }
  }

  /**
   * Reads the state that decides now: Redis's, or, while it is away with onError: local, this
   * instance's share in memory. With deny or allow no state decides, and the store is unavailable.
   * A read while degraded probes Redis as a decision does, so a scrape sees it back without traffic.
   */
  async peek(rules: readonly StoreRule[]): Promise<RuleOutcome[]> {
    const shared = await this.viaShared(() => this.shared.peek(rules));
    if (shared) return shared.answer;
    if (this.onError !== 'local') throw new StoreUnavailableError('the shared limit store cannot be reached');
    // This instance's share, read as the whole: the same part used, so usage against the
    // configured capacity reads as it would from Redis.
    const instances = Math.max(1, this.shared.instances());
    return (await this.local.peek(this.share(rules))).map((o) => ({ ...o, remaining: o.remaining * instances }));
  }

  /** As peek: the state that decides now is the one lowered. */
  async lower(lowerings: readonly Lowering[]): Promise<void> {
    if (await this.viaShared(() => this.shared.lower(lowerings))) return;
    if (this.onError !== 'local') return;
    // The upstream's count is for the whole cluster; this instance's share of it is its part.
    const instances = Math.max(1, this.shared.instances());
    const scaled = this.share(lowerings.map((l) => l.rule));
    await this.local.lower(lowerings.map((l, i) => ({ rule: scaled[i]!, remaining: Math.floor(l.remaining / instances) })));
  }

  /** The limit store cannot be reached and store.onError applies (metrics and status). */
  get degraded(): boolean {
    return this.degradedSince !== undefined;
  }

  async release(leases: readonly Lease[]): Promise<void> {
    const [local] = this.split(leases);
    for (const lease of local) this.localLeases.delete(lease.id);
    // Shared too, whichever store admitted: a decision that timed out here may still have taken a
    // lease in Redis, and removing a lease that is not there is harmless.
    await Promise.all([this.local.release(local), this.shared.release(leases)]);
  }

  async renew(leases: readonly Lease[], ttlMs: number): Promise<void> {
    const [local, shared] = this.split(leases);
    await Promise.all([this.local.renew(local, ttlMs), this.shared.renew(shared, ttlMs)]);
  }

  async close(): Promise<void> {
    await Promise.all([this.local.close(), this.shared.close()]);
  }

  private split(leases: readonly Lease[]): [Lease[], Lease[]] {
    const local: Lease[] = [];
    const shared: Lease[] = [];
    for (const lease of leases) (this.localLeases.has(lease.id) ? local : shared).push(lease);
    return [local, shared];
  }

  /**
   * Asks the shared store while it answers, and while it does not when a probe is due; undefined
   * when it was not asked or did not answer (store.onError applies). Every failed call is counted;
   * one that Redis answered with an error (a bug, not an outage) is thrown.
   */
  private async viaShared<T>(call: () => Promise<T>): Promise<{ answer: T } | undefined> {
    if (this.degradedSince !== undefined && !this.probeDue()) return undefined;
    try {
      const answer = await call();
      if (this.degradedSince !== undefined) this.recovered();
      return { answer };
    } catch (err) {
      this.unavailable();
      if (!(err instanceof StoreUnavailableError)) throw err;
      if (this.degradedSince === undefined) this.failed(err);
      return undefined;
    }
  }

  private probeDue(): boolean {
    const now = Date.now();
    if (now - this.lastProbe < PROBE_EVERY_MS) return false;
    this.lastProbe = now;
    return true;
  }

  private failed(err: StoreUnavailableError): void {
    this.degradedSince = Date.now();
    this.lastProbe = this.degradedSince;
    this.degradedDecisions = 0;
    const consequence = {
      local: `enforcing this instance's share (1/${this.shared.instances()}) of every limit in memory`,
      deny: 'refusing limited requests with 503 store_unavailable',
      allow: 'letting requests through without limits',
    }[this.onError];
    this.logger.error({ err: err.message, onError: this.onError }, `limit store unavailable: ${consequence} until it is back`);
  }

  private recovered(): void {
    const downMs = Date.now() - this.degradedSince!;
    this.logger.info({ downMs, decisionsWithoutStore: this.degradedDecisions }, 'limit store is back; limits are shared again');
    this.degradedSince = undefined;
  }

  /** This instance's part of each limit, while it cannot coordinate with the others. */
  private share(rules: readonly StoreRule[]): StoreRule[] {
    const instances = Math.max(1, this.shared.instances());
    const cached = this.scaled.get(rules);
    if (cached && cached.share === instances) return cached.rules;
    const scaled = rules.map((rule) => ({
      ...rule,
      limit: rule.kind === 'rate' ? rule.limit / instances : Math.max(1, Math.floor(rule.limit / instances)),
      burst: Math.max(1, Math.floor(rule.burst / instances)),
      fair: rule.fair && { ...rule.fair, reservePerMs: rule.fair.reservePerMs / instances },
    }));
    this.scaled.set(rules, { share: instances, rules: scaled });
    return scaled;
  }
}
