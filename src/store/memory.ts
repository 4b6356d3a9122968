/**
 * The embedded store (store.type: memory, the default): one instance's limit state in maps.
 * Same arithmetic and same answers as decide.lua; decisions are synchronous, so they are atomic
 * by construction. Time comes from the injected clock, so tests drive it instead of sleeping.
 */
import { checkBucket, drainMs, type BucketState } from '../limits/bucket.js';
import { ASSURED_BURST, assuredAt, BEHIND, decayedCount, FAIR_STATE_WINDOWS, fairLevel, type ActiveTenant } from '../limits/fair.js';
import {
  chooseCandidate,
  CONCURRENCY_WAIT_HINT_MS,
  type CandidateScore,
  type DecideRequest,
  type Lease,
  type LimitStore,
  type Lowering,
  type RuleOutcome,
  type StoreDecision,
  type StoreRule,
} from './store.js';

export type Clock = () => number;

/** Quota counts are kept this long past their period's end. */
export const QUOTA_GRACE_MS = 60_000;
const SWEEP_EVERY_MS = 10_000;

interface TenantState {
  /** Its assured bucket. */
  bucket: BucketState | undefined;
  /** Its last request. */
  seen: number;
  /** Since when it has been refused within its assured rate (0: not waiting). */
  waitingSince: number;
  /** Its admissions, as a count decayed over the active window, measured at `admittedAt`. */
  admitted: number;
  admittedAt: number;
  weight: number;
  reserve: number;
}

interface FairState {
  global: BucketState | undefined;
  tenants: Map<string, TenantState>;
}

type Entry =
  | { kind: 'rate'; bucket: BucketState; expires: number }
  | { kind: 'fair'; state: FairState; expires: number }
  | { kind: 'quota'; count: number; expires: number }
  | {
      kind: 'concurrency';
      leases: Map<string, number>;
      /** No lease expires before this (it may be earlier than the true first expiry, never later). */
      firstExpiry: number;
      expires: number;
    };

/** One rule evaluated against one state key: the outcome, and how to consume it if admitted. */
interface Evaluation {
  outcome: RuleOutcome;
  load: number;
  commit(): void;
  /** Rate and quota rules: pull the state down so that at most `remaining` more are admitted. */
  lower?(remaining: number): void;
  /** Fair rules record that the tenant asked (and whether it now waits), admitted or not. */
  observe?(): void;
}

export class MemoryStore implements LimitStore {
  private readonly entries = new Map<string, Entry>();
  private readonly sweeper: NodeJS.Timeout;

  constructor(private readonly clock: Clock = Date.now) {
    this.sweeper = setInterval(() => this.sweep(), SWEEP_EVERY_MS).unref();
  }

  decide(request: DecideRequest): Promise<StoreDecision> {
    return Promise.resolve(this.decideNow(request));
  }

  decideNow(request: DecideRequest): StoreDecision {
    const now = this.clock();
    // A rule shared by every candidate is evaluated once: it must not be consumed twice.
    const evaluations = request.rules.map((rule) => rule.keys.map((key) => this.evaluate(rule, key, now, request)));
    const per = (c: number) => request.rules.map((rule, i) => evaluations[i]![rule.keys.length > 1 ? c : 0]!);

    let candidate = 0;
    let admitted: boolean;
    if (request.candidates === 1) {
      admitted = score(request.rules, per(0)).ok;
    } else {
      const scores: CandidateScore[] = [];
      for (let c = 0; c < request.candidates; c++) scores.push(score(request.rules, per(c)));
      candidate = chooseCandidate(scores, request.excluded);
      admitted = scores[candidate]!.ok;
    }
    const chosen = per(candidate);
    for (const evaluation of chosen) evaluation.observe?.();
    if (admitted) for (const evaluation of chosen) if (evaluation.outcome.ok) evaluation.commit();
    return { admitted, candidate, outcomes: chosen.map((e) => e.outcome) };
  }

  peek(rules: readonly StoreRule[]): Promise<RuleOutcome[]> {
    const now = this.clock();
    return Promise.resolve(rules.map((rule) => available(rule, this.evaluate(rule, rule.keys[0]!, now, READ_ONLY).outcome)));
  }

  lower(lowerings: readonly Lowering[]): Promise<void> {
    const now = this.clock();
    for (const { rule, remaining } of lowerings) this.evaluate(rule, rule.keys[0]!, now, READ_ONLY).lower?.(remaining);
    return Promise.resolve();
  }

  release(leases: readonly Lease[]): Promise<void> {
    for (const { key, id } of leases) {
      const entry = this.entries.get(key);
      if (entry?.kind === 'concurrency') entry.leases.delete(id);
    }
    return Promise.resolve();
  }

  renew(leases: readonly Lease[], ttlMs: number): Promise<void> {
    const now = this.clock();
    const expires = now + ttlMs;
    for (const { key, id } of leases) {
      const entry = this.live(key, now);
      // An expired lease stays expired, as in Redis (its slot may be someone else's by now).
      if (entry?.kind === 'concurrency' && (entry.leases.get(id) ?? 0) > now) {
        entry.leases.set(id, expires);
        entry.expires = Math.max(entry.expires, expires);
      }
    }
    return Promise.resolve();
  }

  close(): Promise<void> {
    clearInterval(this.sweeper);
    return Promise.resolve();
  }

  /** How many state keys are held (tests check that idle ones go away). */
  size(): number {
    this.sweep();
    return this.entries.size;
  }

  private sweep(): void {
    const now = this.clock();
    for (const [key, entry] of this.entries) if (entry.expires <= now) this.entries.delete(key);
  }

  private evaluate(rule: StoreRule, key: string, now: number, request: DecideRequest): Evaluation {
    switch (rule.kind) {
      case 'rate':
        return rule.fair ? this.fairRate(rule, key, now) : this.rate(rule, key, now);
      case 'quota':
        return this.quota(rule, key, now);
      case 'concurrency':
        return this.concurrency(rule, key, now, request);
    }
  }

  private live(key: string, now: number): Entry | undefined {
    const entry = this.entries.get(key);
    return entry && entry.expires > now ? entry : undefined;
  }

  private rate(rule: StoreRule, key: string, now: number): Evaluation {
    const ratePerMs = rule.limit / rule.periodMs;
    const entry = this.live(key, now);
    const check = checkBucket(entry?.kind === 'rate' ? entry.bucket : undefined, now, ratePerMs, rule.burst);
    return {
      outcome: outcome(check.ok, check.waitMs, check.remaining, check.resetMs),
      load: check.level / rule.burst,
      commit: () => this.setRate(key, check.level + 1, now, ratePerMs),
      lower: (remaining) => {
        const level = rule.burst - remaining;
        if (level > check.level) this.setRate(key, level, now, ratePerMs);
      },
    };
  }

  private setRate(key: string, level: number, now: number, ratePerMs: number): void {
    this.entries.set(key, { kind: 'rate', bucket: { level, at: now }, expires: now + drainMs(level, ratePerMs) + 1 });
  }

  private fairRate(rule: StoreRule, key: string, now: number): Evaluation {
    const fair = rule.fair!;
    const capacity = rule.limit / rule.periodMs;
    const window = fair.activeWindowMs;
    const entry = this.live(key, now);
    const state: FairState = entry?.kind === 'fair' ? entry.state : { global: undefined, tenants: new Map() };
    const mine = state.tenants.get(fair.tenant);

    const me: ActiveTenant = { weight: fair.weight, reserve: fair.reservePerMs };
    const others: TenantState[] = [];
    for (const [name, t] of state.tenants) if (name !== fair.tenant && now - t.seen <= window) others.push(t);
    const level = fairLevel(capacity, [me, ...others]);
    const assured = assuredAt(me, level, capacity);
    let othersWaiting = false;
    let othersBehind = false;
    for (const t of others) {
      if (t.waitingSince === 0 || now - t.waitingSince > window) continue;
      othersWaiting = true;
      if (decayedCount(t.admitted, t.admittedAt, now, window) / window < BEHIND * assuredAt(t, level, capacity)) othersBehind = true;
    }
    const global = checkBucket(state.global, now, capacity, rule.burst);
    // While a tenant behind its share waits, nobody makes up missed slots: they are that tenant's.
    const ownBurst = Math.max(othersBehind ? 1 : ASSURED_BURST, (rule.burst * assured) / capacity);
    const own = checkBucket(mine?.bucket, now, assured, ownBurst);
    const borrowing = !own.ok;
    const ok = global.ok && !(borrowing && othersWaiting);
    // Within its assured rate a tenant waits only for the global bucket; beyond it, also for its own.
    const waitMs = ok ? 0 : borrowing && othersWaiting ? Math.max(own.waitMs, global.waitMs) : global.waitMs;

    const tenant = (): TenantState => {
      let t = state.tenants.get(fair.tenant);
      if (!t) {
        t = { bucket: undefined, seen: now, waitingSince: 0, admitted: 0, admittedAt: now, weight: fair.weight, reserve: fair.reservePerMs };
        state.tenants.set(fair.tenant, t);
      }
      return t;
    };
    const keep = () => {
      forgetIdleTenants(state, now, window);
      const expires = now + Math.max(drainMs(global.level + 1, capacity), drainMs(own.level + 1, assured), FAIR_STATE_WINDOWS * window);
      this.entries.set(key, { kind: 'fair', state, expires: Math.max(expires, this.live(key, now)?.expires ?? 0) });
    };
    return {
      outcome: outcome(ok, waitMs, ok ? global.remaining : 0, global.resetMs),
      load: global.level / rule.burst,
      observe: () => {
        const t = tenant();
        Object.assign(t, { seen: now, weight: fair.weight, reserve: fair.reservePerMs });
        if (!ok && !borrowing && t.waitingSince === 0) t.waitingSince = now;
        keep();
      },
      lower: (remaining) => {
        const level = rule.burst - remaining;
        if (level <= global.level) return;
        state.global = { level, at: now };
        const expires = now + drainMs(level, capacity) + 1;
        this.entries.set(key, { kind: 'fair', state, expires: Math.max(expires, this.live(key, now)?.expires ?? 0) });
      },
      commit: () => {
        const t = tenant();
        state.global = { level: global.level + 1, at: now };
        if (!borrowing) t.bucket = { level: own.level + 1, at: now };
        t.waitingSince = 0;
        t.admitted = decayedCount(t.admitted, t.admittedAt, now, window) + 1;
        t.admittedAt = now;
        keep();
      },
    };
  }

  private quota(rule: StoreRule, key: string, now: number): Evaluation {
    const period = Math.floor(now / rule.periodMs);
    const periodKey = `${key}:${period}`;
    const end = (period + 1) * rule.periodMs;
    const entry = this.live(periodKey, now);
    const used = entry?.kind === 'quota' ? entry.count : 0;
    const ok = used + 1 <= rule.limit;
    return {
      outcome: outcome(ok, ok ? 0 : end - now, rule.limit - used - (ok ? 1 : 0), end - now),
      load: used / rule.limit,
      commit: () => this.entries.set(periodKey, { kind: 'quota', count: used + 1, expires: end + QUOTA_GRACE_MS }),
      lower: (remaining) => {
        const count = rule.limit - remaining;
        if (count > used) this.entries.set(periodKey, { kind: 'quota', count, expires: end + QUOTA_GRACE_MS });
      },
    };
  }

  private concurrency(rule: StoreRule, key: string, now: number, request: DecideRequest): Evaluation {
    const entry = this.live(key, now);
    const held = entry?.kind === 'concurrency' ? entry : undefined;
    const leases = held?.leases ?? new Map<string, number>();
    let firstExpiry = held?.firstExpiry ?? Infinity;
    // Leases of requests that never ended are looked for when one may have expired, not on every decision.
    if (now >= firstExpiry) {
      firstExpiry = Infinity;
      for (const [id, expires] of leases) {
        if (expires <= now) leases.delete(id);
        else firstExpiry = Math.min(firstExpiry, expires);
      }
      if (held) held.firstExpiry = firstExpiry;
    }
    const ok = leases.size + 1 <= rule.limit;
    return {
      outcome: outcome(ok, 0, rule.limit - leases.size - (ok ? 1 : 0), 0),
      load: leases.size / rule.limit,
      commit: () => {
        const expires = now + request.leaseTtlMs;
        leases.set(request.lease, expires);
        this.entries.set(key, {
          kind: 'concurrency',
          leases,
          firstExpiry: Math.min(firstExpiry, expires),
          expires: Math.max(expires, entry?.expires ?? 0),
        });
      },
    };
  }
}

/** A peek's outcome: `remaining` and a rate's `resetMs` count from now, not after one more request. */
function available(rule: StoreRule, o: RuleOutcome): RuleOutcome {
  if (!o.ok) return { ...o, remaining: 0 };
  const resetMs = rule.kind === 'rate' ? Math.max(0, o.resetMs - rule.periodMs / rule.limit) : o.resetMs;
  return { ...o, remaining: o.remaining + 1, resetMs };
}

/** The request of a peek or a lowering: it takes no lease. */
const READ_ONLY: DecideRequest = { rules: [], candidates: 1, lease: '-', leaseTtlMs: 0 };

function outcome(ok: boolean, waitMs: number, remaining: number, resetMs: number): RuleOutcome {
  return { ok, waitMs: ok ? 0 : waitMs, remaining: Math.max(0, remaining), resetMs };
}

/** A candidate's verdict over all its rules; shadow rules never refuse. */
function score(rules: readonly StoreRule[], evaluations: readonly Evaluation[]): CandidateScore {
  let ok = true;
  let load = 0;
  let waitMs = 0;
  rules.forEach((rule, i) => {
    if (rule.shadow) return;
    const { outcome: o, load: l } = evaluations[i]!;
    if (rule.keys.length > 1) load = Math.max(load, l);
    if (!o.ok) {
      ok = false;
      waitMs = Math.max(waitMs, rule.kind === 'concurrency' ? CONCURRENCY_WAIT_HINT_MS : o.waitMs);
    }
  });
  return { ok, load, waitMs };
}

/** A tenant silent for several windows is no longer active, and its bucket has long drained. */
function forgetIdleTenants(state: FairState, now: number, window: number): void {
  for (const [name, t] of state.tenants) if (now - t.seen > FAIR_STATE_WINDOWS * window) state.tenants.delete(name);
}
