/**
 * The shared state of upstream credentials: an OAuth2 credential's current token, the right to
 * refresh it (one refresh at a time, fenced), its refresh budget, blocks and revocation; and a
 * token pool's members out of rotation. The memory store (memory-tokens.ts) and the Redis store
 * (redis-tokens.ts) give the same answers; test/token-store-contract.test.ts runs one suite against
 * both. Every time is the store's own clock (Redis TIME), so instances with skewed clocks agree:
 * durations cross the interface, never timestamps.
 */

/** `refreshLimit`: at most `max` token-endpoint calls in any `perMs`, at least `everyMs` apart. */
export interface RefreshBudget {
  max: number;
  perMs: number;
  everyMs: number;
}

export interface SharedToken {
  /** The access token as stored (sealed when store.tokenKey is configured; see credentials/seal.ts). */
  sealed: string;
  /** How long it is still valid, by the store's clock at the time of reading (may be <= 0). */
  expiresInMs: number;
  /** The refresh that obtained it: its fencing token. */
  fence: number;
}

export interface CredentialRecord {
  token: SharedToken | undefined;
  /** Token-endpoint calls within the budget window ending now. */
  refreshesInWindow: number;
  /** ms since the last token-endpoint call (undefined: none remembered). */
  lastRefreshAgoMs: number | undefined;
  /** ms until refreshing is allowed again after the upstream said "too many" (0: not blocked). */
  blockedForMs: number;
  /** The token endpoint's error that stopped refreshing (invalid_grant, ...) until the config changes. */
  revoked: string | undefined;
  /** ms the refresh in flight may still hold the lock (0: none in flight). */
  lockedForMs: number;
}

export type RefuseReason = 'newer' | 'locked' | 'blocked' | 'budget' | 'revoked';

export type RefreshGrant =
  | { granted: true; fence: number }
  /**
   * newer: the store holds a newer token that is not due (read it instead); locked: another refresh
   * is in flight (its token comes within retryAfterMs); blocked, budget: not before retryAfterMs;
   * revoked: not until the config changes (retryAfterMs 0).
   */
  | { granted: false; reason: RefuseReason; retryAfterMs: number };

export interface RefreshRequest {
  /** The credential's state key, whole (prefix and hash tag included). */
  key: string;
  /**
   * The fence of the token the caller wants replaced (0: it has none). A stored token with a higher
   * fence and more than `dueWithinMs` left answers 'newer': somebody refreshed already.
   */
  replacing: number;
  dueWithinMs: number;
  /** How long the grant holds the lock: a holder that stalls past it loses the right to publish. */
  lockTtlMs: number;
  budget: RefreshBudget;
  /** An operator's forced refresh: past 'newer', the budget, a block and a revocation; never past the lock. */
  force: boolean;
}

export interface TokenStore {
  read(key: string, budget: RefreshBudget): Promise<CredentialRecord>;
  /** Asks for the right to call the token endpoint; a grant takes the lock and counts in the budget. */
  acquire(request: RefreshRequest): Promise<RefreshGrant>;
  /**
   * Stores the token a grant obtained, valid for ttlMs, and ends the grant (lock, block and
   * revocation cleared). Returns false and stores nothing when another grant was given since
   * (a stalled holder's late write must not replace a newer token).
   */
  publish(key: string, fence: number, sealed: string, ttlMs: number): Promise<boolean>;
  /**
   * Ends a grant that obtained no token. `blockMs`: the upstream refuses refreshes for that long
   * (every instance waits); `revoked`: the grant is dead, no refresh until the config changes
   * (taken from the latest grant only). State outlives its last write by CREDENTIAL_STATE_TTL_MS.
   */
  fail(key: string, fence: number, outcome: { blockMs?: number; revoked?: string }): Promise<void>;
  /**
   * Takes a pool member out of rotation for ms (every instance skips it), and announces the key to
   * the instances watching (watchCoolDowns), so that they read it at once.
   */
  coolDown(key: string, member: number, ms: number): Promise<void>;
  /** Pool members out of rotation now: member index → ms left. */
  cooling(key: string): Promise<Map<number, number>>;
  /**
   * Hears the key of every cool-down written from now on under `prefix` (store.prefix), by any
   * instance, this one included, as soon as the store tells. Best effort: an announcement missed
   * (the store away, a reconnect) is not repeated, so callers still read cool-downs now and then.
   */
  watchCoolDowns(prefix: string, listener: CoolDownListener): CoolDownWatch;
}

export interface CoolDownListener {
  /** A cool-down was just written under this key (read it with cooling()). */
  cooled(key: string): void;
  /** The store is up but will not announce (e.g. an ACL without pub/sub); said once per refusal. */
  refused(error: Error): void;
}

export interface CoolDownWatch {
  /** Stops hearing; the last watch to close ends the store's listening connection. */
  close(): void;
}

/** How long a credential's state outlives its last write: a budget window, or a token, or this. */
export const CREDENTIAL_STATE_TTL_MS = 24 * 3_600_000;
