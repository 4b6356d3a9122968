/**
 * An OAuth2 credential (grant refresh_token or client_credentials), refreshed so that it is rare,
 * single and predictable:
 * - ahead of expiry: a timer refreshes `refreshBefore` the token expires (at half its life when
 *   that is shorter), so requests keep using the valid token meanwhile and never wait;
 * - single flight: whatever asks for a token while a refresh is in flight (1,000 requests, the
 *   timer, a 401, an operator) shares that one refresh (undici's deduplicate pattern);
 * - across instances: the store grants one refresh at a time with a fencing token, counts every
 *   token-endpoint call against `refreshLimit`, and shares the token; an instance that is refused
 *   the lock reads the token the holder publishes;
 * - failures: an endpoint failure waits a capped, jittered exponential backoff (inside the budget);
 *   Zoho's "too many requests" blocks refreshing for THROTTLE_BLOCK_MS on every instance; a dead
 *   grant (invalid_grant) stops refreshing until the config changes.
 * Without the store (Redis down) there is no refresh: the budget is counted there, so the valid
 * token is used until it expires, and then requests get 503 until the store is back.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { GatewayError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { StoreUnavailableError } from '../store/store.js';
import type { RefreshBudget, TokenStore } from '../store/tokens.js';
import { formatted, type Credential, type CredentialProvider, type CredentialStatus } from './provider.js';
import type { Sealer } from './seal.js';
import { requestToken, type OAuth2Config, type TokenReply } from './token-endpoint.js';

/** Zoho blocks a client that refreshes "too many times continuously"; nobody asks again for this long. */
export const THROTTLE_BLOCK_MS = 10 * 60_000;
const BACKOFF_BASE_MS = 1_000;
const BACKOFF_CAP_MS = 60_000;
/** A token this close to its expiry is not sent (a request takes time); at most a tenth of its life. */
const EXPIRY_MARGIN_MS = 5_000;
/** While another instance refreshes, its token is looked for this often. */
const LOCK_POLL_MS = 100;
const LOCK_PUBLISH_MARGIN_MS = 2_000;
/** Node's timers overflow past 2^31-1 ms (they would fire at once): longer waits are taken in steps. */
const MAX_TIMER_MS = 24 * 3_600_000;
/** A revoked grant looks this often whether an operator's forced refresh brought it back. */
const REVOKED_CHECK_MS = 5_000;
/** The store unreachable: try again this soon. */
const STORE_RETRY_MS = 1_000;

/** What became of a refresh the gateway wanted (metrics): the token endpoint's answer, or the budget's refusal. */
export type RefreshOutcome = 'ok' | 'failed' | 'throttled' | 'revoked' | 'refused_budget';

const OUTCOME_OF_REPLY: Record<TokenReply['kind'], RefreshOutcome> = { token: 'ok', failed: 'failed', throttled: 'throttled', revoked: 'revoked' };

export interface OAuth2Options {
  upstream: string;
  config: OAuth2Config;
  /** The upstream's allowPrivate: whether the token endpoint may be a private address. */
  allowPrivate: boolean;
  /** The credential's state key in the store. */
  key: string;
  store: TokenStore;
  sealer: Sealer;
  logger: Logger;
  /** A token just obtained: its value joins the log redaction set. */
  learnSecret(value: string): void;
  /** The first refresh waits for the store to connect (at start-up; resolved later on). */
  storeReady: Promise<void>;
  /** Each refresh's outcome (metrics). */
  onRefresh?: (outcome: RefreshOutcome) => void;
  clock?: () => number;
  random?: () => number;
}

interface Token {
  credential: Credential;
  fence: number;
  /** Local clock: it expires, and it is no longer sent past usableUntil. */
  expiresAt: number;
  usableUntil: number;
  /** The refresh-ahead point. */
  refreshAt: number;
  /** The upstream answered 401 to it: one refresh is asked for. */
  suspect: boolean;
}

/**
 * What a refresh is for; `dueWithinMs` and `replacing` as in RefreshRequest: a newer stored token
 * with more than dueWithinMs left is taken instead (0: any that has not expired).
 */
interface Intent {
  replacing: number;
  dueWithinMs: number;
  force: boolean;
}

export class OAuth2Credential implements CredentialProvider {
  private token: Token | undefined;
  private flight: Promise<Token> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private nextRefreshAt: number | undefined;
  /** No token, and none may be asked for before `until` (backoff, budget, block, store away). */
  private pause: { until: number; reason: string } | undefined;
  private failures = 0;
  private revoked: string | undefined;
  private lastRefresh: { at: number; outcome: TokenReply['kind']; detail?: string } | undefined;
  private closed = false;
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly budget: RefreshBudget;
  private readonly lockTtlMs: number;

  constructor(private readonly options: OAuth2Options) {
    this.clock = options.clock ?? Date.now;
    this.random = options.random ?? Math.random;
    const { every, max, per } = options.config.refreshLimit;
    this.budget = { everyMs: every, max, perMs: per };
    // The holder's call ends by the endpoint timeout; the rest is time to publish what it got. A
    // holder slower than that costs at most one more (budgeted) refresh, never a lost token.
    this.lockTtlMs = options.config.timeout + LOCK_PUBLISH_MARGIN_MS;
    void options.storeReady.then(() => this.schedule(0));
  }

  check(): void {
    if (this.revoked !== undefined) throw this.revokedError();
    const now = this.clock();
    if (!this.usable(now) && !this.flight && this.pause && now < this.pause.until) throw this.unavailable(this.pause.until - now, this.pause.reason);
  }

  next(): Credential | Promise<Credential> {
    const now = this.clock();
    const token = this.token;
    if (this.revoked !== undefined) throw this.revokedError();
    // A suspect token waits for the refresh its 401 asked for; with none in flight it is still sent.
    if (token && now < token.usableUntil && !(token.suspect && this.flight)) return token.credential;
    if (this.flight) return this.join(this.flight);
    if (this.pause && now < this.pause.until) throw this.unavailable(this.pause.until - now, this.pause.reason);
    return this.join(this.refresh({ replacing: token?.fence ?? 0, dueWithinMs: 0, force: false }));
  }

  answered(credential: Credential, status: number): void {
    const token = this.token;
    if (!token || token.credential !== credential) return;
    // The upstream took it after all (a 401 storm passed): requests stop waiting for a refresh
    // the budget had put off.
    if (status < 400) token.suspect = false;
    if (status !== 401 || token.suspect) return;
    token.suspect = true;
    this.options.logger.warn({ upstream: this.options.upstream }, 'the upstream answered 401 to the OAuth2 token; asking for one refresh');
    if (!this.flight) void this.refresh({ replacing: token.fence, dueWithinMs: 0, force: false }).catch(() => undefined);
  }

  /**
   * An operator's refresh (POST /credentials/<upstream>/refresh): one refresh now, within the
   * budget unless forced. A refresh already in flight is the answer.
   */
  async refreshNow(force: boolean): Promise<{ expiresAt: string; fence: number }> {
    // A refresh in flight that ends in a refusal is no answer to this one: it asks for itself.
    let token = await this.flight?.catch(() => undefined);
    if (!token) {
      if (this.revoked !== undefined && !force) throw this.revokedError();
      token = await this.refresh({ replacing: this.token?.fence ?? 0, dueWithinMs: Infinity, force });
    }
    return { expiresAt: new Date(token.expiresAt).toISOString(), fence: token.fence };
  }

  async status(): Promise<CredentialStatus> {
    const now = this.clock();
    const token = this.token;
    const { max, perMs, everyMs } = this.budget;
    const shared = await this.options.store.read(this.options.key, this.budget).catch(() => undefined);
    const state = this.revoked !== undefined ? 'revoked' : this.flight ? 'refreshing' : this.usable(now) ? 'valid' : 'unavailable';
    return {
      type: 'oauth2',
      grant: this.options.config.grant,
      state,
      token: token && {
        expiresAt: iso(token.expiresAt),
        expiresInS: Math.round((token.expiresAt - now) / 1000),
        fence: token.fence,
        suspect: token.suspect,
      },
      nextRefreshAt: this.nextRefreshAt === undefined ? undefined : iso(this.nextRefreshAt),
      lastRefresh: this.lastRefresh && { ...this.lastRefresh, at: iso(this.lastRefresh.at) },
      refreshLimit: { max, perS: perMs / 1000, everyS: everyMs / 1000 },
      // What every instance shares (absent while the store cannot be read).
      refreshesInWindow: shared?.refreshesInWindow,
      blockedForS: shared && shared.blockedForMs > 0 ? Math.ceil(shared.blockedForMs / 1000) : undefined,
      revoked: this.revoked ?? shared?.revoked,
      unavailableFor: this.pause && this.pause.until > now ? { seconds: Math.ceil((this.pause.until - now) / 1000), reason: this.pause.reason } : undefined,
    };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  /** The one refresh in flight: whoever asks while it runs shares it. */
  private refresh(intent: Intent): Promise<Token> {
    this.flight ??= this.fly(intent).finally(() => (this.flight = undefined));
    return this.flight;
  }

  /** A request waiting on the refresh: a failed refresh still leaves it the token that is valid. */
  private async join(flight: Promise<Token>): Promise<Credential> {
    try {
      return (await flight).credential;
    } catch (err) {
      if (this.usable(this.clock())) return this.token!.credential;
      throw err;
    }
  }

  private async fly(intent: Intent): Promise<Token> {
    try {
      const token = await this.obtain(intent);
      this.pause = undefined;
      this.schedule(token.refreshAt - this.clock());
      return token;
    } catch (err) {
      const failure = err instanceof StoreUnavailableError ? this.paused(STORE_RETRY_MS, 'the shared store cannot be reached') : err;
      if (!(failure instanceof GatewayError)) {
        this.options.logger.error({ upstream: this.options.upstream, err: String(failure) }, 'OAuth2 refresh failed inside the gateway');
      }
      // A refusal set the pause; anything else is retried after STORE_RETRY_MS, never at once.
      const retryInMs = failure instanceof GatewayError && this.pause ? this.pause.until - this.clock() : STORE_RETRY_MS;
      this.schedule(this.revoked !== undefined ? REVOKED_CHECK_MS : retryInMs);
      throw failure;
    }
  }

  private async obtain(intent: Intent): Promise<Token> {
    const { store, key } = this.options;
    let replacing = intent.replacing;
    const giveUpAt = this.clock() + this.lockTtlMs;
    for (;;) {
      const grant = await store.acquire({ key, replacing, dueWithinMs: intent.dueWithinMs, lockTtlMs: this.lockTtlMs, budget: this.budget, force: intent.force });
      if (grant.granted) return this.refreshWith(grant.fence);
      switch (grant.reason) {
        case 'revoked':
          throw this.markRevoked('revoked');
        case 'blocked':
          throw this.paused(grant.retryAfterMs, 'refreshing is held off after the token endpoint failed or refused');
        case 'budget':
          this.options.onRefresh?.('refused_budget');
          throw this.paused(grant.retryAfterMs, 'the refresh budget (refreshLimit) is used up');
        case 'locked':
          await sleep(Math.min(LOCK_POLL_MS, grant.retryAfterMs));
      }
      // 'newer', or the lock holder may have published: read what the store has.
      const stored = await store.read(key, this.budget);
      if (stored.token && stored.token.fence > replacing) {
        const value = this.options.sealer.open(stored.token.sealed, key);
        if (value !== undefined && stored.token.expiresInMs > 0) return this.adopt(value, stored.token.fence, stored.token.expiresInMs);
        // Unreadable (sealed with another tokenKey) or expired: it is the one to replace.
        replacing = stored.token.fence;
      }
      if (this.clock() > giveUpAt) throw this.paused(STORE_RETRY_MS, "another instance's refresh did not finish");
    }
  }

  /** The grant's call to the token endpoint, and what its answer leaves in the store. */
  private async refreshWith(fence: number): Promise<Token> {
    const { store, key, upstream, logger, config } = this.options;
    const reply = await requestToken(config, this.options.allowPrivate);
    this.lastRefresh = { at: this.clock(), outcome: reply.kind, ...(reply.kind === 'failed' ? { detail: reply.detail } : {}) };
    this.options.onRefresh?.(OUTCOME_OF_REPLY[reply.kind]);
    switch (reply.kind) {
      case 'token': {
        this.revoked = undefined; // a forced refresh may bring a revoked grant back
        this.options.learnSecret(reply.accessToken);
        const published = await store.publish(key, fence, this.options.sealer.seal(reply.accessToken, key), reply.expiresInMs).catch((err: unknown) => {
          if (!(err instanceof StoreUnavailableError)) throw err;
          logger.warn({ upstream }, 'the new OAuth2 token could not be shared (store unreachable); this instance uses it');
          return true;
        });
        if (published) {
          logger.info({ upstream, fence, expiresInS: Math.round(reply.expiresInMs / 1000) }, 'OAuth2 token refreshed');
          return this.adopt(reply.accessToken, fence, reply.expiresInMs);
        }
        // This refresh stalled past its lock and a newer one was granted: that token wins.
        logger.warn({ upstream, fence }, 'a newer OAuth2 refresh was granted while this one stalled; its token is discarded');
        return this.obtain({ replacing: fence, dueWithinMs: 0, force: false });
      }
      // What this instance learnt is in force here first; the store then tells the others.
      case 'throttled': {
        const failure = this.paused(THROTTLE_BLOCK_MS, 'the token endpoint blocked refreshing');
        logger.error({ upstream, blockS: THROTTLE_BLOCK_MS / 1000 }, `the token endpoint says too many refreshes (${reply.detail}); refreshing is blocked on every instance`);
        await this.endGrant(fence, { blockMs: THROTTLE_BLOCK_MS });
        throw failure;
      }
      case 'revoked': {
        const failure = this.markRevoked(reply.error);
        await this.endGrant(fence, { revoked: reply.error });
        throw failure;
      }
      case 'failed': {
        // Escalate with the cluster's calls in the window too: the instances take turns failing.
        const recent = await store.read(key, this.budget).then((r) => r.refreshesInWindow, () => 0);
        this.failures = Math.max(this.failures + 1, recent);
        const backoffMs = this.backoffMs(reply.retryAfterMs);
        const failure = this.paused(backoffMs, `the token endpoint failed (${reply.detail})`);
        logger.warn({ upstream, failure: reply.detail, failures: this.failures, retryInMs: Math.round(backoffMs) }, 'OAuth2 token refresh failed');
        // The backoff holds every instance: the others must not take the freed lock and fail too.
        await this.endGrant(fence, { blockMs: backoffMs });
        throw failure;
      }
    }
  }

  /**
   * Full jitter (AWS's "exponential backoff and jitter"), capped; never before the endpoint's
   * Retry-After; and while a valid token remains, no sooner than per/max, so that a failing
   * endpoint cannot spend the budget before the token expires.
   */
  private backoffMs(retryAfterMs: number | undefined): number {
    const jittered = this.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (this.failures - 1));
    const spread = this.usable(this.clock()) ? this.budget.perMs / this.budget.max : 0;
    return Math.max(jittered, retryAfterMs ?? 0, spread);
  }

  /** Ends a grant that got no token; best effort (a lock not released expires by its TTL). */
  private async endGrant(fence: number, outcome: { blockMs?: number; revoked?: string }): Promise<void> {
    await this.options.store.fail(this.options.key, fence, outcome).catch((err: unknown) => {
      this.options.logger.warn({ upstream: this.options.upstream, err: String(err) }, 'cannot record the failed OAuth2 refresh in the store');
    });
  }

  /** While revoked: has an operator's forced refresh (here or on another instance) brought the grant back? */
  private async checkRevival(): Promise<void> {
    const record = await this.options.store.read(this.options.key, this.budget).catch(() => undefined);
    if (record && record.revoked === undefined) {
      this.revoked = undefined;
      this.options.logger.info({ upstream: this.options.upstream }, 'the OAuth2 grant works again (a forced refresh succeeded)');
      this.schedule(0);
    } else this.schedule(REVOKED_CHECK_MS);
  }

  private adopt(value: string, fence: number, expiresInMs: number): Token {
    const now = this.clock();
    this.failures = 0;
    const ahead = Math.min(this.options.config.refreshBefore, expiresInMs / 2);
    const credential = { header: this.options.config.header.toLowerCase(), value: formatted(this.options.config.format, value) };
    this.options.learnSecret(value);
    this.token = {
      credential,
      fence,
      expiresAt: now + expiresInMs,
      usableUntil: now + expiresInMs - Math.min(EXPIRY_MARGIN_MS, expiresInMs / 10),
      // Instances that adopted the same token spread their refresh over a second: the first
      // refreshes, the others find its token ('newer') instead of queueing on the lock.
      refreshAt: now + expiresInMs - ahead + this.random() * Math.min(1_000, ahead / 10),
      suspect: false,
    };
    return this.token;
  }

  /** The background refresh: ahead of expiry, or after a pause. */
  private schedule(inMs: number): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    const delay = Math.min(Math.max(0, inMs), MAX_TIMER_MS);
    this.nextRefreshAt = this.clock() + Math.max(0, inMs);
    this.timer = setTimeout(() => {
      if (this.revoked !== undefined) return void this.checkRevival();
      const token = this.token;
      // A sound token before its refresh point needs nothing yet (a long-lived token's timer is
      // capped, and a pause may end before the refresh point).
      if (token && !token.suspect && this.clock() < token.refreshAt) return this.schedule(token.refreshAt - this.clock());
      this.nextRefreshAt = undefined;
      const dueWithinMs = token && !token.suspect ? token.expiresAt - token.refreshAt : 0;
      if (!this.flight) void this.refresh({ replacing: token?.fence ?? 0, dueWithinMs, force: false }).catch(() => undefined);
    }, delay).unref();
  }

  private usable(now: number): boolean {
    return this.token !== undefined && now < this.token.usableUntil;
  }

  private paused(ms: number, reason: string): GatewayError {
    this.pause = { until: this.clock() + ms, reason };
    return this.unavailable(ms, reason);
  }

  /** `error`: the token endpoint's (invalid_grant, ...), or 'revoked' when another instance learnt it. */
  private markRevoked(error: string): GatewayError {
    if (this.revoked === undefined) {
      this.options.logger.error(
        { upstream: this.options.upstream, error },
        "the OAuth2 grant is dead: no more refreshes, and requests get 503, until the upstream's credentials change in the config",
      );
    }
    this.revoked = error;
    return this.revokedError();
  }

  private revokedError(): GatewayError {
    return new GatewayError('credentials_unavailable', 'the OAuth2 grant of this upstream was revoked; the gateway needs new credentials in its config', {
      upstream: this.options.upstream,
    });
  }

  private unavailable(ms: number, reason: string): GatewayError {
    return new GatewayError('credentials_unavailable', `no valid OAuth2 token: ${reason}`, {
      upstream: this.options.upstream,
      retryAfterMs: Math.max(1, Math.ceil(ms)),
    });
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
