/**
 * One undici Pool (keep-alive connections) per upstream origin and connection settings, shared
 * by upstreams that point at the same place and kept across config reloads: a reload that does
 * not touch an upstream's target keeps its warm connections. Pools a new config no longer uses
 * are closed gracefully — close() lets the requests already on them finish.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext, rootCertificates, type SecureContext } from 'node:tls';
import { Pool } from 'undici';
import { guardedLookup } from './egress.js';

export interface PoolSettings {
  origin: string;
  connectTimeoutMs: number;
  connections: number;
  /** The target may resolve to private addresses (egress.ts refuses them otherwise). */
  allowPrivate: boolean;
  /** PEM of extra CA certificates trusted for the target's TLS, besides the default roots. */
  ca?: string | undefined;
}

export class PoolRegistry {
  private readonly pools = new Map<string, Pool>();

  acquire(settings: PoolSettings): Pool {
    // The CA's content is in the key: a CA file that changed makes a new pool on reload.
    const caHash = settings.ca === undefined ? '-' : createHash('sha256').update(settings.ca).digest('hex');
    const key = `${settings.origin} ${settings.connectTimeoutMs} ${settings.connections} ${settings.allowPrivate} ${caHash}`;
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new Pool(settings.origin, {
        connections: settings.connections,
        // undici's buildConnector (lib/core/connect.js) spreads these options into net.connect
        // and tls.connect, so `lookup` guards every connection and `secureContext` is its trust.
        connect: {
          timeout: settings.connectTimeoutMs,
          lookup: guardedLookup(settings.allowPrivate),
          ...(settings.ca === undefined ? {} : { secureContext: trusting(settings.ca) }),
        },
        keepAliveTimeout: 4_000,
        keepAliveMaxTimeout: 60_000,
      });
      this.pools.set(key, pool);
    }
    return pool;
  }

  /** Close every pool not in `inUse` (after a config swap). */
  retainOnly(inUse: ReadonlySet<Pool>): void {
    for (const [key, pool] of this.pools) {
      if (inUse.has(pool)) continue;
      this.pools.delete(key);
      void pool.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    const pools = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(pools.map((p) => p.close().catch(() => undefined)));
  }
}

/**
 * A TLS context trusting `pem` besides Node's default roots and NODE_EXTRA_CA_CERTS: a `ca`
 * option replaces both, so they are given again. Made once per pool: passed as `ca`, tls.connect
 * would build it anew for every connection, and parsing the ~150 roots costs about 40 ms of CPU.
 */
function trusting(pem: string): SecureContext {
  return createSecureContext({ ca: [...rootCertificates, ...extraCertificates(), pem] });
}

/** The file NODE_EXTRA_CA_CERTS names (Node warned at start if it cannot be read). */
function extraCertificates(): string[] {
  const file = process.env.NODE_EXTRA_CA_CERTS;
  if (!file) return [];
  try {
    return [readFileSync(file, 'utf8')];
  } catch {
    return [];
  }
}
