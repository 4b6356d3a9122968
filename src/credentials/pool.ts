/**
 * A pool of static tokens on one header (BaseLinker's X-BLToken). Each request takes the member
 * the limits chose (the least loaded with room, when a rule counts per credential), or the members
 * in turn. A member the upstream answers 401 or 403 to is out of rotation for `coolDown` on every
 * instance (the store shares it; each instance looks every SYNC_EVERY_MS), and the pool carries on
 * with the rest; with every member out, requests get 503 until the first comes back.
 */
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { SYNC_EVERY_MS } from '../store/cool-down-sync.js';
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

export class TokenPool implements CredentialProvider {
  private readonly members: Credential[];
  /** Member → out of rotation until (local clock). */
  private readonly cooling = new Map<number, number>();
  private readonly rejections: number[];
  private readonly clock: () => number;
  private readonly sync: NodeJS.Timeout;
  private turn = 0;

  constructor(private readonly options: PoolOptions) {
    this.members = options.tokens.map((t) => ({ header: options.header.toLowerCase(), value: formatted(options.format, t) }));
    this.rejections = this.members.map(() => 0);
    this.clock = options.clock ?? Date.now;
    this.sync = setInterval(() => void this.learn(), SYNC_EVERY_MS).unref();
    void this.learn();
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
    clearInterval(this.sync);
  }

  /** Cool-downs started on other instances (and this one's, as the store has them). */
  private async learn(): Promise<void> {
    let shared: Map<number, number>;
    try {
      shared = await this.options.store.cooling(this.options.key);
    } catch {
      return; // the store is away: this instance keeps what it knows
    }
    const now = this.clock();
    for (const [member, leftMs] of shared) {
      if (member < this.members.length && (this.cooling.get(member) ?? 0) < now + leftMs) this.cooling.set(member, now + leftMs);
    }
  }
}
