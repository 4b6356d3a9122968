/**
 * Pauses learned from the upstream's answers (feedback.ts): the whole upstream, or one pool token,
 * takes no requests until a time the upstream named. The instance that learns a pause keeps it at
 * once and writes it to the token store's cool-down hash under `{prefix:pause:<upstream>}` (member
 * -1: the whole upstream; 0, 1, ...: pool tokens), as breaker openings are shared; the store
 * announces the write and every instance reads the hash as soon as it hears (store.type redis), and
 * every SYNC_EVERY_MS besides (store/cool-down-sync.ts). With the memory store pauses are this instance's. Durations cross the store, never
 * timestamps, so instances with skewed clocks agree.
 *
 * Pauses are kept per upstream name across reloads: a reload must not forget that the upstream said
 * "not before 17:15".
 */
import { CoolDownSync } from '../store/cool-down-sync.js';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { TokenStore } from '../store/tokens.js';
import type { PauseSource } from './feedback.js';

/** The store's member number for a pause of the whole upstream. */
const WHOLE_UPSTREAM = -1;

export interface PauseContext {
  store: TokenStore;
  /** store.prefix. */
  prefix: string;
  logger: Logger;
  /** Share pauses through the store (store.type redis). */
  shared: boolean;
  /** Tests only: how often the store is read besides its announcements (default SYNC_EVERY_MS). */
  syncEveryMs?: number | undefined;
  clock?: () => number;
}

export class PauseRegistry {
  private readonly sets = new Map<string, Pauses>();
  private readonly sync: CoolDownSync | undefined;

  constructor(private readonly context: PauseContext) {
    // Pauses other instances learned (and this one's, which change nothing).
    if (context.shared) this.sync = new CoolDownSync(context.store, context.logger, 'learned pauses', () => this.sets.values(), context.prefix, context.syncEveryMs);
  }

  /** The pauses of an upstream (the running ones, when it had some before a reload). */
  acquire(upstream: string): Pauses {
    let set = this.sets.get(upstream);
    if (!set) {
      set = new Pauses(upstream, `{${this.context.prefix}:pause:${upstream}}`, this.context);
      this.sets.set(upstream, set);
    }
    return set;
  }

  /** Forgets the upstreams no policy in `used` holds (after a reload swapped the policy). */
  retainOnly(used: ReadonlySet<Pauses>): void {
    for (const [name, set] of this.sets) if (!used.has(set)) this.sets.delete(name);
  }

  close(): void {
    this.sync?.close();
    this.sets.clear();
  }

}

/** One upstream's pauses: member → paused until (this instance's clock). */
export class Pauses {
  private readonly until = new Map<number, number>();
  private readonly clock: () => number;

  constructor(
    readonly upstream: string,
    /** Where the pauses are shared, in the store. */
    readonly key: string,
    private readonly context: PauseContext,
  ) {
    this.clock = context.clock ?? Date.now;
  }

  /**
   * Before admission: throws 429 upstream_paused when the upstream is paused, or when every pool
   * member is out (`out`: cooling or refused by its breaker) and at least one of them by a pause.
   * Returns the ms to wait instead when `waitUpToMs` covers the pause (onLimit: queue).
   */
  check(poolSize: number | undefined, out: readonly number[] | undefined, waitUpToMs: number): number {
    const whole = this.leftMs(WHOLE_UPSTREAM);
    let leftMs = whole;
    if (whole === 0 && poolSize !== undefined) {
      // A pool that shrank at a reload may still have pauses of members it no longer has.
      const paused = this.members()?.filter((m) => m < poolSize) ?? [];
      if (paused.length === 0 || new Set([...paused, ...(out ?? [])]).size < poolSize) return 0;
      leftMs = Math.min(...paused.map((m) => this.leftMs(m)));
    }
    if (leftMs === 0 || leftMs <= waitUpToMs) return leftMs;
    throw new GatewayError('upstream_paused', `upstream "${this.upstream}" asked for a pause; it takes requests again in ${Math.ceil(leftMs / 1000)}s`, {
      upstream: this.upstream,
      retryAfterMs: leftMs,
    });
  }

  /** Pool members paused now (undefined: none). */
  members(): number[] | undefined {
    if (this.until.size === 0) return undefined; // the usual case, on every request: no copy
    const now = this.clock();
    let paused: number[] | undefined;
    for (const [member, until] of this.until) {
      if (until <= now) this.until.delete(member); // over: forgotten, so the map empties again
      else if (member !== WHOLE_UPSTREAM) (paused ??= []).push(member);
    }
    return paused;
  }

  /** A pause the upstream asked for: the member's (undefined: the whole upstream), at once here and then everywhere. */
  pause(member: number | undefined, ms: number, source: PauseSource): void {
    const scope = member ?? WHOLE_UPSTREAM;
    const until = this.clock() + ms;
    // Responses in flight repeat what the first said: only a longer pause is news.
    if ((this.until.get(scope) ?? 0) >= until - 1000) return;
    this.until.set(scope, until);
    const { logger, shared, store } = this.context;
    logger.warn(
      { upstream: this.upstream, credential: member, pauseMs: ms, until: new Date(until).toISOString(), source },
      member === undefined ? 'the upstream asked for a pause; requests wait or are refused until then' : 'the upstream paused a pool token; the pool carries on with the others',
    );
    if (!shared) return;
    store.coolDown(this.key, scope, ms).catch((err: unknown) => {
      logger.warn({ upstream: this.upstream, err: String(err) }, 'cannot share a learned pause through the store; this instance keeps it');
    });
  }

  /** ms left of the pause of a scope (0: none). */
  leftMs(scope: number | undefined): number {
    const left = (this.until.get(scope ?? WHOLE_UPSTREAM) ?? 0) - this.clock();
    return left > 0 ? Math.ceil(left) : 0;
  }

  /** Pauses in the store: member → ms left. */
  learn(shared: ReadonlyMap<number, number>): void {
    const now = this.clock();
    for (const [member, leftMs] of shared) {
      if ((this.until.get(member) ?? 0) < now + leftMs) this.until.set(member, now + leftMs);
    }
  }

  /** What /status shows: the scopes paused now. */
  status(): Record<string, number> | undefined {
    const entries = [...this.until.keys()].flatMap((m) => {
      const left = this.leftMs(m);
      return left > 0 ? [[m === WHOLE_UPSTREAM ? 'upstream' : `credential ${m}`, Math.ceil(left / 1000)] as const] : [];
    });
    return entries.length > 0 ? Object.fromEntries(entries) : undefined;
  }
}
