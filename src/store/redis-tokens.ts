/**
 * Credential state in Redis (store.type: redis), with the same answers as MemoryTokenStore: each
 * call is one script of token.lua.ts, atomic in Redis. Obtained from RedisStore.tokens(), so it
 * shares the store's client, its bound on every call and its test clock. Failures follow
 * RedisStore.decide: Redis unreachable or too slow throws StoreUnavailableError; a script Redis
 * refuses (ERR, WRONGTYPE: a bug, or a key of another shape) throws a plain Error. A cool-down
 * written is announced to the other instances (cool-down-channel.ts), on a connection of its own.
 */
import type { Cluster, Redis } from 'ioredis';
import { coolDownChannel, CoolDownSubscriber } from './cool-down-channel.js';
import { StoreUnavailableError } from './store.js';
import {
  TOKEN_ACQUIRE_LUA,
  TOKEN_COOL_DOWN_LUA,
  TOKEN_COOLING_LUA,
  TOKEN_FAIL_LUA,
  TOKEN_PUBLISH_LUA,
  TOKEN_READ_LUA,
} from './token.lua.js';
import type {
  CoolDownListener,
  CoolDownWatch,
  CredentialRecord,
  RefreshBudget,
  RefreshGrant,
  RefreshRequest,
  RefuseReason,
  TokenStore,
} from './tokens.js';

type Script = (key: string, ...args: (string | number)[]) => Promise<unknown>;
const SCRIPTS = {
  sluiceTokenRead: TOKEN_READ_LUA,
  sluiceTokenAcquire: TOKEN_ACQUIRE_LUA,
  sluiceTokenPublish: TOKEN_PUBLISH_LUA,
  sluiceTokenFail: TOKEN_FAIL_LUA,
  sluiceTokenCoolDown: TOKEN_COOL_DOWN_LUA,
  sluiceTokenCooling: TOKEN_COOLING_LUA,
};
/** The scripts as client commands (defineTokenCommands). */
export type TokenScripts = Record<keyof typeof SCRIPTS, Script>;

/**
 * Defines the scripts as commands of the client. Call it before the client's first command: with
 * auto-pipelining, a command defined later can join a pipeline created before it, which lacks it.
 * The first argument of each is the key, so Cluster auto-pipelining groups them by its slot.
 */
export function defineTokenCommands(client: Redis | Cluster): void {
  for (const [name, lua] of Object.entries(SCRIPTS)) client.defineCommand(name, { lua, numberOfKeys: 1 });
}

/** Bounds one call in time (RedisStore's timer: it rejects when Redis does not answer in time). */
export type Bounded = <T>(promise: Promise<T>) => Promise<T>;

const REASONS: readonly string[] = ['newer', 'locked', 'blocked', 'budget', 'revoked'] satisfies RefuseReason[];

export class RedisTokenStore implements TokenStore {
  private readonly subscriber: CoolDownSubscriber;

  /** `clock`: tests only, the scripts take their time from it instead of Redis TIME. */
  constructor(
    private readonly client: (Redis | Cluster) & TokenScripts,
    private readonly bounded: Bounded,
    private readonly clock?: () => number,
  ) {
    this.subscriber = new CoolDownSubscriber(client);
  }

  async read(key: string, budget: RefreshBudget): Promise<CredentialRecord> {
    const r = strings(await this.call('sluiceTokenRead', key, budget.perMs), 10);
    return {
      token: r[0] === '1' ? { sealed: r[1]!, expiresInMs: Number(r[2]), fence: Number(r[3]) } : undefined,
      refreshesInWindow: Number(r[4]),
      lastRefreshAgoMs: r[5] === '' ? undefined : Number(r[5]),
      blockedForMs: Number(r[6]),
      revoked: r[7] === '1' ? r[8] : undefined,
      lockedForMs: Number(r[9]),
    };
  }

  async acquire(request: RefreshRequest): Promise<RefreshGrant> {
    const { key, replacing, dueWithinMs, lockTtlMs, budget, force } = request;
    const args = [replacing, dueWithinMs, lockTtlMs, budget.max, budget.perMs, budget.everyMs, force ? '1' : '0'];
    const r = strings(await this.call('sluiceTokenAcquire', key, ...args), 0);
    if (r[0] === '1' && r.length === 2) return { granted: true, fence: Number(r[1]) };
    if (r[0] !== '0' || r.length !== 3 || !REASONS.includes(r[1]!)) throw unexpected();
    return { granted: false, reason: r[1] as RefuseReason, retryAfterMs: Number(r[2]) };
  }

  async publish(key: string, fence: number, sealed: string, ttlMs: number): Promise<boolean> {
    return (await this.call('sluiceTokenPublish', key, fence, sealed, ttlMs)) === 1;
  }

  async fail(key: string, fence: number, outcome: { blockMs?: number; revoked?: string }): Promise<void> {
    const revoked = outcome.revoked === undefined ? ['0', ''] : ['1', outcome.revoked];
    await this.call('sluiceTokenFail', key, fence, outcome.blockMs ?? '', ...revoked);
  }

  async coolDown(key: string, member: number, ms: number): Promise<void> {
    await this.call('sluiceTokenCoolDown', key, member, ms);
    // After the write, so that a listener reads it. A lost announcement is not the write's failure:
    // the listeners' next read finds the cool-down all the same.
    await this.bounded(this.client.publish(coolDownChannel(key), key)).catch(() => undefined);
  }

  async cooling(key: string): Promise<Map<number, number>> {
    const r = strings(await this.call('sluiceTokenCooling', key), 0);
    const left = new Map<number, number>();
    for (let i = 0; i + 1 < r.length; i += 2) left.set(Number(r[i]), Number(r[i + 1]));
    return left;
  }

  watchCoolDowns(prefix: string, listener: CoolDownListener): CoolDownWatch {
    return this.subscriber.watch(prefix, listener);
  }

  /**
   * Ends the listening connection, whatever watches are still open (RedisStore.close calls it: the
   * shared client is going away). Not part of TokenStore: the client is RedisStore's to close.
   */
  close(): void {
    this.subscriber.close();
  }

  /** One script run, its failure sorted as RedisStore.decide sorts it. */
  private async call(script: keyof typeof SCRIPTS, key: string, ...args: (string | number)[]): Promise<unknown> {
    try {
      return await this.bounded(this.client[script](key, this.clock?.() ?? '', ...args));
    } catch (error) {
      const message = `Redis token store: ${error instanceof Error ? error.message : String(error)}`;
      // Redis answered but refused the script: that call fails, the store is not taken for down.
      if (error instanceof Error && error.name === 'ReplyError' && /^(ERR|WRONGTYPE) /.test(error.message)) {
        throw new Error(message, { cause: error });
      }
      throw new StoreUnavailableError(message, { cause: error });
    }
  }
}

/** A reply that must be an array of strings (of `length` when > 0). */
function strings(reply: unknown, length: number): string[] {
  if (!Array.isArray(reply) || (length > 0 && reply.length !== length) || !reply.every((x) => typeof x === 'string')) throw unexpected();
  return reply as string[];
}

function unexpected(): Error {
  return new Error('Redis token store: unexpected reply from token.lua');
}
