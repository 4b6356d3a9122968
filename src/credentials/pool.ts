/**
 * A pool of static tokens on one header (BaseLinker's X-BLToken). Each request takes the member
 * the limits chose (the least loaded with room, when a rule counts per credential), or the members
 * in turn. A member the upstream answers 401 or 403 to is out of rotation for `coolDown` on every
 * instance (the store shares it: the other instances read it as soon as the store announces it, and
 * every SYNC_EVERY_MS besides, through the registry's CoolDownSync), and the pool carries on with
 * the rest; with every member out, requests get 503 until the first comes back.
 */
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { CoolDownSource } from '../store/cool-down-sync.js';
import type { TokenStore } from '../store/tokens.js';
import { formatted, type Credential, type CredentialProvider, type CredentialStatus } from './provider.js';

export interface PoolOptions {
  upstream: string;
  header: string;
  tokens: readonly string[];
  format: string | undefined;
  coolDownMs: number;
  /** The pool's state key in the store. */
  key: string;
  store: TokenStore;
  logger: Logger;
  clock?: () => number;
}

export class TokenPool implements CredentialProvider, CoolDownSource {
  private readonly members: Credential[];
  /** Member → out of rotation until (local clock). */
  private readonly cooling = new Map<number, number>();
  private readonly rejections: number[];
  private readonly clock: () => number;
  private turn = 0;

  constructor(private readonly options: PoolOptions) {
    this.members = options.tokens.map((t) => ({ header: options.header.toLowerCase(), value: formatted(options.format, t) }));
    this.rejections = this.members.map(() => 0);
    this.clock = options.clock ?? Date.now;
    // What the store has at once: members other instances took out before this pool was made.
    options.store.cooling(options.key).then(
      (coolDowns) => this.learn(coolDowns),
      () => undefined, // the store is away: the registry's sync reads it again
    );
  }

  /** The pool's cool-downs in the store (CoolDownSource). */
  get key(): string {
    return this.options.key;
  }

  check(): void {
    if (this.outOfRotation()?.length === this.members.length) throw this.allCooling();
  }

  outOfRotation(): readonly number[] | undefined {
    if (this.cooling.size === 0) return undefined;
    const now = this.clock();
    for (const [member, until] of this.cooling) if (until <= now) this.cooling.delete(member);
    return this.cooling.size > 0 ? [...this.cooling.keys()] : undefined;
  }

  next(member?: number, skip?: readonly number[]): Credential {
    // The member the limits chose, unless it went out of rotation (or its breaker opened) since: then the next in turn.
    if (member !== undefined && !this.isCooling(member) && !skip?.includes(member)) return this.members[member]!;
    for (let tried = 0; tried < this.members.length; tried++) {
      const candidate = this.turn++ % this.members.length;
      if (!this.isCooling(candidate) && !skip?.includes(candidate)) return this.members[candidate]!;
    }
    throw this.allCooling(); // every member went out since the request's check (it waited in a queue)
  }

  memberOf(credential: Credential): number | undefined {
    const member = this.members.indexOf(credential);
    return member < 0 ? undefined : member;
  }

  private isCooling(member: number): boolean {
    return (this.cooling.get(member) ?? 0) > this.clock();
  }

  private allCooling(): GatewayError {
    const now = this.clock();
    const soonest = Math.min(...[...this.cooling.values()].map((until) => until - now));
    return new GatewayError('credentials_unavailable', 'every token of the pool was rejected by the upstream and is cooling down', {
      upstream: this.options.upstream,
      retryAfterMs: soonest,
    });
  }

  answered(credential: Credential, status: number): void {
    if (status !== 401 && status !== 403) return;
    const member = this.members.indexOf(credential);
    if (member < 0 || this.isCooling(member)) return;
    const { upstream, coolDownMs, key, store, logger } = this.options;
    this.cooling.set(member, this.clock() + coolDownMs);
    this.rejections[member]!++;
    logger.warn({ upstream, member, status, coolDownMs }, 'the upstream rejected a pool token; it is out of rotation for the cool-down');
    store.coolDown(key, member, coolDownMs).catch((err: unknown) => {
      logger.warn({ upstream, err: String(err) }, 'cannot share a pool cool-down through the store; this instance keeps it');
    });
  }

  status(): Promise<CredentialStatus> {
    const now = this.clock();
    return Promise.resolve({
      type: 'pool',
      members: this.members.map((_, index) => {
        const left = (this.cooling.get(index) ?? 0) - now;
        return left > 0
          ? { index, state: 'cooling', coolingForS: Math.ceil(left / 1000), rejections: this.rejections[index] }
          : { index, state: 'active', rejections: this.rejections[index] };
      }),
    });
  }

  close(): void {
    // Nothing of its own to stop: the registry reads the store for every pool (CoolDownSync).
  }

  /** Cool-downs started on other instances (and this one's, as the store has them): member → ms left. */
  learn(shared: ReadonlyMap<number, number>): void {
    const now = this.clock();
    for (const [member, leftMs] of shared) {
      if (member < this.members.length && (this.cooling.get(member) ?? 0) < now + leftMs) this.cooling.set(member, now + leftMs);
    }
  }
}
