/**
 * One undici Pool (keep-alive connections) per upstream origin and connection settings, shared
 * by upstreams that point at the same place and kept across config reloads: a reload that does
 * not touch an upstream's target keeps its warm connections. Pools a new config no longer uses
 * are closed gracefully — close() lets the requests already on them finish.
 */
import { Pool } from 'undici';

export interface PoolSettings {
  origin: string;
  connectTimeoutMs: number;
  connections: number;
}

export class PoolRegistry {
  private readonly pools = new Map<string, Pool>();

  acquire(settings: PoolSettings): Pool {
    const key = `${settings.origin} ${settings.connectTimeoutMs} ${settings.connections}`;
    let pool = this.pools.get(key);
    if (!pool) {
      pool = new Pool(settings.origin, {
        connections: settings.connections,
        connect: { timeout: settings.connectTimeoutMs },
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
