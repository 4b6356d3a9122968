/**
 * The circuit breakers of the running policy (`breaker:`), kept across reloads like the pools and
 * credential providers: an upstream whose breaker settings did not change keeps its breakers (and
 * their state); the others are closed once the new policy is in.
 *
 * A breaker guards the upstream as a whole, or each member of a token pool (`per: credential`, the
 * default for pools). The pipeline asks before admission, so a refused request uses up no limit:
 * an open breaker per upstream refuses at once (503 circuit_open, Retry-After = the cooldown left);
 * an open member's breaker takes that member out of the choice like a cooling token. The request
 * then carries a Trial, told the upstream's status or connection failure once known. Outcomes are
 * reported rather than the request being wrapped in opossum's fire(), because the check must come
 * before admission and the outcome arrives in a callback, long after.
 *
 * Across instances (store.type redis) a breaker that opens here writes its cooldown to the store
 * (the token store's cool-down hash, as a pool's cool-downs are shared); every instance reads it as
 * soon as the store announces the write, and every SYNC_EVERY_MS besides (store/cool-down-sync.ts),
 * and opens its own breaker for the time left, then probes on its own. With the store away each
 * instance carries on with what it sees itself.
 */
import type { BreakerConfig, CredentialsConfig } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { CoolDownSync } from '../store/cool-down-sync.js';
import type { TokenStore } from '../store/tokens.js';
import { Breaker, circuitOpen, type BreakerListener, type BreakerSettings, type BreakerState } from './circuit.js';

/** `ratio` applies from this many requests in the window on, unless minRequests says otherwise. */
const DEFAULT_MIN_REQUESTS = 10;

/** The store's member number for a breaker of the whole upstream (pool members are 0, 1, ...). */
const WHOLE_UPSTREAM = -1;

export interface BreakerContext {
  store: TokenStore;
  /** store.prefix. */
  prefix: string;
  logger: Logger;
  /** Share openings through the store (store.type redis); the memory store is this instance's alone. */
  shared: boolean;
  /** Tests only: how often the store is read besides its announcements (default SYNC_EVERY_MS). */
  syncEveryMs?: number | undefined;
}

export class BreakerRegistry {
  private readonly sets = new Map<string, BreakerSet>();
  private readonly sync: CoolDownSync | undefined;

  constructor(private readonly context: BreakerContext) {
    // Openings of other instances (and this one's, which the breakers recognise).
    if (context.shared) this.sync = new CoolDownSync(context.store, context.logger, 'circuit breaker openings', () => this.sets.values(), context.prefix, context.syncEveryMs);
  }

  /** The breakers for an upstream's `breaker:` block: the running ones when nothing they depend on changed. */
  acquire(upstream: string, config: BreakerConfig, credentials: CredentialsConfig | undefined): BreakerSet {
    const poolSize = credentials?.type === 'pool' ? credentials.tokens.length : undefined;
    const per = config.per ?? (poolSize === undefined ? 'upstream' : 'credential');
    const members = per === 'credential' ? poolSize : undefined;
    const settings = settingsOf(config);
    const id = JSON.stringify([upstream, settings, members ?? null]);
    let set = this.sets.get(id);
    if (!set) {
      const key = `{${this.context.prefix}:breaker:${upstream}}`;
      set = new BreakerSet(upstream, key, settings, members, this.context.logger, (member, ms) => this.publish(key, member, ms));
      this.sets.set(id, set);
    }
    return set;
  }

  /** Closes the breakers no policy in `used` holds (after a reload swapped the policy). */
  retainOnly(used: ReadonlySet<BreakerSet>): void {
    for (const [id, set] of this.sets) {
      if (!used.has(set)) {
        set.close();
        this.sets.delete(id);
      }
    }
  }

  close(): void {
    this.sync?.close();
    this.retainOnly(new Set());
  }

  private publish(key: string, member: number, ms: number): void {
    if (!this.context.shared) return;
    this.context.store.coolDown(key, member, ms).catch((err: unknown) => {
      this.context.logger.warn({ err: String(err) }, 'cannot share a circuit breaker opening through the store; this instance keeps it');
    });
  }

}

/** An upstream's breakers: one for the whole upstream, or one per pool member. */
export class BreakerSet implements BreakerListener {
  private readonly breakers: Breaker[];
  private retired = false;

  constructor(
    readonly upstream: string,
    /** Where openings are shared, in the store. */
    readonly key: string,
    settings: BreakerSettings,
    /** Pool size for per-credential breakers; undefined: one breaker for the upstream. */
    private readonly members: number | undefined,
    private readonly logger: Logger,
    private readonly publish: (member: number, ms: number) => void,
  ) {
    const indexes = members === undefined ? [undefined] : Array.from({ length: members }, (_, i) => i);
    this.breakers = indexes.map((member) => new Breaker(member, settings, this));
  }

  /**
   * Before admission: the request's Trial, or a 503 circuit_open when the upstream's breaker (or
   * every pool member, cooling or open, with at least one open) refuses. `cooling`: pool members out
   * of rotation already (every member cooling is the pool's own refusal). The Trial enters a breaker
   * only once the request is admitted (use()): a half-open probe slot is not held through a queue.
   */
  check(cooling: readonly number[] | undefined): Trial {
    if (this.retired) return new Trial(this);
    if (this.members === undefined) {
      const breaker = this.breakers[0]!;
      if (!breaker.admits()) throw circuitOpen(this.upstream, breaker.retryAfterMs());
      return new Trial(this);
    }
    const refusing = this.breakers.filter((b) => !b.admits());
    const out = new Set([...(cooling ?? []), ...refusing.map((b) => b.member)]);
    if (refusing.length > 0 && out.size >= this.breakers.length) {
      // The soonest breaker to admit again (a cooling token may come back sooner; it is not known here).
      throw circuitOpen(this.upstream, Math.min(...refusing.map((b) => b.retryAfterMs())));
    }
    return new Trial(this);
  }

  /** Pool members whose breaker refuses now (undefined: none). */
  refusing(): number[] | undefined {
    if (this.members === undefined || this.retired) return undefined;
    const members = this.breakers.flatMap((b) => (b.admits() ? [] : [b.member!]));
    return members.length > 0 ? members : undefined;
  }

  /** The breaker a request admitted with pool member `index` goes through (the upstream's, per upstream). */
  breakerFor(index: number | undefined): Breaker | undefined {
    if (this.retired) return undefined;
    if (this.members === undefined) return this.breakers[0];
    return index === undefined ? undefined : this.breakers[index];
  }

  /** Openings in the store: member → ms left. */
  learn(openings: ReadonlyMap<number, number>): void {
    for (const [member, leftMs] of openings) {
      const breaker = this.members === undefined ? (member === WHOLE_UPSTREAM ? this.breakers[0] : undefined) : this.breakers[member];
      breaker?.openFor(leftMs);
    }
  }

  changed(breaker: Breaker, state: BreakerState, learned: boolean): void {
    const about = { upstream: this.upstream, credential: breaker.member };
    if (state === 'open') {
      const cooldownMs = breaker.retryAfterMs();
      this.logger.warn({ ...about, cooldownMs, learned }, learned ? 'circuit breaker opened by another instance' : 'circuit breaker opened');
      if (!learned) this.publish(breaker.member ?? WHOLE_UPSTREAM, cooldownMs);
    } else {
      this.logger.info(about, state === 'halfOpen' ? 'circuit breaker half-open: probing the upstream' : 'circuit breaker closed');
    }
  }

  /** Each breaker's state now (metrics): member undefined for the upstream's own breaker. */
  states(): { member: number | undefined; state: BreakerState }[] {
    return this.breakers.map((b) => ({ member: b.member, state: b.state() }));
  }

  /** What /status shows. */
  status(): Record<string, unknown> {
    if (this.members === undefined) return { per: 'upstream', ...this.breakers[0]!.status() };
    return { per: 'credential', members: this.breakers.map((b) => ({ index: b.member, ...b.status() })) };
  }

  /**
   * A reload dropped these settings: the breakers stop, and requests still running on the old
   * policy pass freely (a stopped opossum circuit would refuse them all).
   */
  close(): void {
    this.retired = true;
    for (const breaker of this.breakers) breaker.close();
  }
}

/** One request through a breaker: let in (or refused), then told its outcome once. */
export class Trial {
  private breaker: Breaker | undefined;
  private probe = false;

  constructor(private readonly set: BreakerSet) {}

  /** Pool members the credential choice must skip: their breaker refuses. */
  refusing(): readonly number[] | undefined {
    return this.set.refusing();
  }

  /** Once admitted, with pool member `member`: enters its breaker (or the upstream's); throws circuit_open if it refuses now. */
  use(member: number | undefined): void {
    const breaker = this.set.breakerFor(member);
    if (breaker && !this.breaker) this.enter(breaker);
  }

  /** The upstream's status: a failure when the breaker counts it (5xx, or the `on` list). */
  answered(status: number): void {
    if (this.breaker) this.settle(this.breaker.isFailure(status));
  }

  /** The request failed: connection failures and timeouts count; anything else only ends the trial. */
  failed(err: unknown): void {
    const counts = err instanceof GatewayError && (err.code === 'upstream_unreachable' || err.code === 'upstream_timeout');
    this.settle(counts ? true : undefined);
  }

  /** Done with (safe to call again): a probe that had no outcome frees its place. */
  end(): void {
    this.settle(undefined);
  }

  private enter(breaker: Breaker): void {
    this.probe = breaker.enter(this.set.upstream);
    this.breaker = breaker;
  }

  private settle(failed: boolean | undefined): void {
    const breaker = this.breaker;
    this.breaker = undefined;
    breaker?.settle(this.probe, failed);
  }
}

function settingsOf(config: BreakerConfig): BreakerSettings {
  return {
    failures: config.failures,
    ratio: config.ratio,
    // Without a floor, one failure as the window's first request is a ratio of 100%.
    minRequests: config.minRequests ?? DEFAULT_MIN_REQUESTS,
    windowMs: config.window,
    cooldownMs: config.cooldown,
    probes: config.probes,
    on: config.on,
  };
}
