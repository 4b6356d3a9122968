/**
 * The credential providers of the running policy, kept across reloads: a provider whose upstream
 * and credentials block did not change is the same object after a reload (its token, refresh timer
 * and cool-downs carry on); one that changed or went away is closed when the new policy is in.
 * State in the store is keyed by what identifies the grant (token URL, client, refresh token,
 * scope; a pool's tokens), hashed: editing `refreshBefore` keeps the refresh budget counted, and
 * new credentials start afresh (a revoked grant stays revoked until its credentials change).
 * Pool tokens other instances took out of rotation are read back for every pool at once, as the
 * breakers' openings are (store/cool-down-sync.ts).
 */
import { createHash } from 'node:crypto';
import type { CredentialsConfig } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { CoolDownSync } from '../store/cool-down-sync.js';
import type { TokenStore } from '../store/tokens.js';
import { OAuth2Credential, type RefreshOutcome } from './oauth2.js';
import { TokenPool } from './pool.js';
import { basicAuthorization, fixedCredential, formatted, type CredentialProvider } from './provider.js';
import type { Sealer } from './seal.js';

export interface CredentialContext {
  store: TokenStore;
  sealer: Sealer;
  /** store.prefix. */
  prefix: string;
  logger: Logger;
  /** A token obtained at run time joins the log redaction set. */
  learnSecret(value: string): void;
  /** Resolves when the store can answer (or start-up stops waiting for it). */
  storeReady: Promise<void>;
  /** An OAuth2 refresh's outcome (metrics). */
  onRefresh?: (upstream: string, outcome: RefreshOutcome) => void;
  /** Tests only: how often pool cool-downs are read besides the store's announcements (default SYNC_EVERY_MS). */
  syncEveryMs?: number | undefined;
}

export class CredentialRegistry {
  private providers = new Map<string, CredentialProvider>();
  /** Pool members out of rotation on other instances (with the memory store, this one's own). */
  private readonly sync: CoolDownSync;

  constructor(private readonly context: CredentialContext) {
    const { store, logger, prefix, syncEveryMs } = context;
    this.sync = new CoolDownSync(store, logger, 'pool token cool-downs', () => this.pools(), prefix, syncEveryMs);
  }

  /**
   * The provider for an upstream's credentials block: the running one when the block is unchanged.
   * `allowPrivate` is the upstream's: its OAuth2 token endpoint may be private only when it may.
   */
  acquire(upstream: string, config: CredentialsConfig, allowPrivate = false): CredentialProvider {
    const id = `${upstream}\n${allowPrivate}\n${digest(config)}`;
    let provider = this.providers.get(id);
    if (!provider) {
      provider = this.create(upstream, config, allowPrivate);
      this.providers.set(id, provider);
    }
    return provider;
  }

  /** Closes the providers no policy in `used` holds (after a reload swapped the policy). */
  retainOnly(used: ReadonlySet<CredentialProvider>): void {
    for (const [id, provider] of this.providers) {
      if (!used.has(provider)) {
        provider.close();
        this.providers.delete(id);
      }
    }
  }

  close(): void {
    this.sync.close();
    this.retainOnly(new Set());
  }

  private *pools(): Iterable<TokenPool> {
    for (const provider of this.providers.values()) if (provider instanceof TokenPool) yield provider;
  }

  private create(upstream: string, config: CredentialsConfig, allowPrivate: boolean): CredentialProvider {
    const { store, sealer, prefix, logger, learnSecret, storeReady, onRefresh } = this.context;
    // Keyed by the grant, not the upstream: two upstreams on one refresh token share its budget.
    const key = `{${prefix}:cred:${identity(config)}}`;
    switch (config.type) {
      case 'basic':
        return fixedCredential('basic', 'authorization', basicAuthorization(config.username, config.password));
      case 'header':
        return fixedCredential('header', config.header, formatted(config.format, config.value));
      case 'pool':
        return new TokenPool({
          upstream,
          header: config.header,
          tokens: config.tokens,
          format: config.format,
          coolDownMs: config.coolDown,
          key,
          store,
          logger,
        });
      case 'oauth2':
        return new OAuth2Credential({
          upstream,
          config,
          allowPrivate,
          key,
          store,
          sealer,
          logger,
          learnSecret,
          storeReady,
          ...(onRefresh ? { onRefresh: (outcome: RefreshOutcome) => onRefresh(upstream, outcome) } : {}),
        });
    }
  }
}

/** What identifies the grant (or the pool's tokens), as a hash: no secret reaches a key name. */
function identity(config: CredentialsConfig): string {
  switch (config.type) {
    case 'oauth2':
      return digest([config.tokenUrl, config.grant, config.clientId, config.clientSecret, config.refreshToken ?? '', config.scope ?? '']);
    case 'pool':
      return digest(config.tokens);
    default:
      return digest(config);
  }
}

function digest(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(value)).digest('base64url').slice(0, 16);
}
