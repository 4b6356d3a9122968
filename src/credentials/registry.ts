/**
 * The credential providers of the running policy, kept across reloads: a provider whose upstream
 * and credentials block did not change is the same object after a reload (its token, refresh timer
 * and cool-downs carry on); one that changed or went away is closed when the new policy is in.
 * State in the store is keyed by what identifies the grant (token URL, client, refresh token,
 * scope; a pool's tokens), hashed: editing `refreshBefore` keeps the refresh budget counted, and
 * new credentials start afresh (a revoked grant stays revoked until its credentials change).
 */
import { createHash } from 'node:crypto';
import type { CredentialsConfig } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import type { TokenStore } from '../store/tokens.js';
import { OAuth2Credential } from './oauth2.js';
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
}

export class CredentialRegistry {
  private providers = new Map<string, CredentialProvider>();

  constructor(private readonly context: CredentialContext) {}

  /** The provider for an upstream's credentials block: the running one when the block is unchanged. */
  acquire(upstream: string, config: CredentialsConfig): CredentialProvider {
    const id = `${upstream}\n${digest(config)}`;
    let provider = this.providers.get(id);
    if (!provider) {
      provider = this.create(upstream, config);
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
    this.retainOnly(new Set());
  }

  private create(upstream: string, config: CredentialsConfig): CredentialProvider {
    const { store, sealer, prefix, logger, learnSecret, storeReady } = this.context;
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
        return new OAuth2Credential({ upstream, config, key, store, sealer, logger, learnSecret, storeReady });
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
