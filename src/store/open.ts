/** The store that routes.yaml's `store:` asks for. */
import type { StoreConfig } from '../config/schema.js';
import type { Logger } from '../observability/logger.js';
import { CountedTokenStore } from './counted-tokens.js';
import { MemoryTokenStore } from './memory-tokens.js';
import { MemoryStore } from './memory.js';
import { RedisStore } from './redis.js';
import { ResilientStore } from './resilient.js';
import type { LimitStore } from './store.js';
import type { TokenStore } from './tokens.js';

/** How long start-up waits for Redis before serving anyway, with store.onError in force. */
const CONNECT_WAIT_MS = 5_000;

export interface OpenedStore {
  store: LimitStore;
  /**
   * Credential state. Not covered by store.onError: refresh budgets are counted in the shared
   * store only, so without it no instance refreshes (credentials/oauth2.ts).
   */
  tokens: TokenStore;
  /** Resolves once the store can answer, or when start-up should stop waiting for it. */
  connected: Promise<void>;
  /** The limit store cannot be reached now, and store.onError applies. */
  degraded(): boolean;
}

/** Told of each call to the shared store that failed: the limit store's, or the token store's. */
export type StoreUnavailable = (store: 'limits' | 'tokens') => void;

export function openStore(config: StoreConfig, logger: Logger, unavailable: StoreUnavailable = () => undefined): OpenedStore {
  if (config.type === 'memory') {
    return { store: new MemoryStore(), tokens: new MemoryTokenStore(), connected: Promise.resolve(), degraded: () => false };
  }
  const redis = RedisStore.connect({ url: config.url!, prefix: config.prefix, timeoutMs: config.timeout });
  const connected = redis.waitReady(CONNECT_WAIT_MS).then((ready) => {
    if (!ready) {
      logger.error({ onError: config.onError }, `Redis did not answer within ${CONNECT_WAIT_MS / 1000} s of start; store.onError applies until it does`);
    }
  });
  const store = new ResilientStore(redis, config.onError, logger, () => unavailable('limits'));
  const tokens = new CountedTokenStore(redis.tokens(), () => unavailable('tokens'));
  return { store, tokens, connected, degraded: () => store.degraded };
}
