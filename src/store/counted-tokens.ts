/**
 * A token store that reports each time the store cannot answer (StoreUnavailableError), for the
 * metrics' store errors; everything else passes through unchanged.
 */
import { StoreUnavailableError } from './store.js';
import type { CoolDownListener, CoolDownWatch, CredentialRecord, RefreshBudget, RefreshGrant, RefreshRequest, TokenStore } from './tokens.js';

export class CountedTokenStore implements TokenStore {
  constructor(
    private readonly store: TokenStore,
    private readonly unavailable: () => void,
  ) {}

  read(key: string, budget: RefreshBudget): Promise<CredentialRecord> {
    return this.counted(this.store.read(key, budget));
  }

  acquire(request: RefreshRequest): Promise<RefreshGrant> {
    return this.counted(this.store.acquire(request));
  }

  publish(key: string, fence: number, sealed: string, ttlMs: number): Promise<boolean> {
    return this.counted(this.store.publish(key, fence, sealed, ttlMs));
  }

  fail(key: string, fence: number, outcome: { blockMs?: number; revoked?: string }): Promise<void> {
    return this.counted(this.store.fail(key, fence, outcome));
  }

  coolDown(key: string, member: number, ms: number): Promise<void> {
    return this.counted(this.store.coolDown(key, member, ms));
  }

  cooling(key: string): Promise<Map<number, number>> {
    return this.counted(this.store.cooling(key));
  }

  watchCoolDowns(prefix: string, listener: CoolDownListener): CoolDownWatch {
    return this.store.watchCoolDowns(prefix, listener);
  }

  private counted<T>(call: Promise<T>): Promise<T> {
    return call.catch((err: unknown) => {
      if (err instanceof StoreUnavailableError) this.unavailable();
      throw err;
    });
  }
}
