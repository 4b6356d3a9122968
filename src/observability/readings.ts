/**
 * What the metrics and the status API read of the live state, in one place so that both say the
 * same: every limit rule's usage (through the store, consuming nothing) and the OAuth2 credentials'
 * expiry and refresh budget. Nothing here is on the request path.
 */
import type { RuleState } from '../limits/rules.js';
import type { RuleUsage } from '../limits/usage.js';
import type { Policy, UpstreamProfile } from '../policy.js';
import { StoreUnavailableError } from '../store/store.js';
import type { Tenant } from '../tenants/identify.js';
import type { Logger } from './logger.js';

export interface UsageSource {
  usage(states: readonly RuleState[]): Promise<RuleUsage[]>;
}

/** A rule's usage with the upstream it belongs to. */
export type UpstreamRuleUsage = RuleUsage & { upstream: string };

/** One upstream's usage, or what /status says instead (the error itself is in the log). */
export type UsageRead = { ok: true; usages: RuleUsage[] } | { ok: false; error: string };

const UNREACHABLE = 'the limit store cannot be reached; usage is unknown';
const UNREADABLE = 'the limit store failed to read this usage (see the log); usage is unknown';

/** The tenants of a policy; without a tenants: section every request is the one tenant "default". */
export function tenantsOf(policy: Policy): Tenant[] {
  const tenants = policy.config.tenants;
  if (tenants === undefined) return [{ name: 'default', weight: 1 }];
  return Object.entries(tenants).map(([name, t]) => ({ name, weight: t.weight }));
}

/**
 * Reads the upstreams' rule usage for /metrics and /status, one store call per upstream. A read
 * that fails, however it fails (the store down, an error reply, a bad reply), leaves that upstream
 * out instead of failing the scrape or the page; it is logged once per upstream until a read of it
 * succeeds again, not once per scrape. The store counts its own failed calls (ResilientStore):
 * a read answered without asking Redis is no store error.
 */
export class UsageReader {
  /** Upstreams whose last read failed (logged when they started failing). */
  private readonly failing = new Set<string>();

  constructor(
    private readonly limiter: UsageSource,
    private readonly logger: Logger,
  ) {}

  /** Every upstream's rules that could be read: the shared ones, and each tenant's per-tenant ones. */
  async all(policy: Policy): Promise<UpstreamRuleUsage[]> {
    const tenants = tenantsOf(policy);
    const perUpstream = await Promise.all(
      [...policy.upstreams.values()].map(async (u) => {
        const read = await this.upstream(u, tenants);
        return read.ok ? read.usages.map((usage) => ({ ...usage, upstream: u.name })) : [];
      }),
    );
    return perUpstream.flat();
  }

  /** One upstream's rules: those every tenant shares, and each of `tenants`' state of the per-tenant ones. */
  upstream(upstream: UpstreamProfile, tenants: readonly Tenant[]): Promise<UsageRead> {
    const limits = upstream.limits;
    return this.read(upstream.name, [...limits.sharedStates(), ...limits.tenantStates(tenants)]);
  }

  /** Every rule that bounds `tenant` on one upstream: the shared ones as it finds them, and its own. */
  tenant(upstream: UpstreamProfile, tenant: Tenant): Promise<UsageRead> {
    const limits = upstream.limits;
    return this.read(upstream.name, [...limits.sharedStates(tenant), ...limits.tenantStates([tenant])]);
  }

  private async read(upstream: string, states: readonly RuleState[]): Promise<UsageRead> {
    try {
      const usages = await this.limiter.usage(states);
      if (this.failing.delete(upstream)) this.logger.info({ upstream }, 'limit usage can be read again');
      return { ok: true, usages };
    } catch (err) {
      if (!this.failing.has(upstream)) {
        this.failing.add(upstream);
        const message = err instanceof Error ? err.message : String(err);
        this.logger.warn({ upstream, err: message }, 'cannot read limit usage; /metrics and /status leave it out until it can be read');
      }
      return { ok: false, error: err instanceof StoreUnavailableError ? UNREACHABLE : UNREADABLE };
    }
  }
}

export interface OAuth2Reading {
  upstream: string;
  /** Seconds until the access token expires (undefined: no token). */
  expiresInS: number | undefined;
  /** Refreshes in the current window / refreshLimit.max (undefined: the store cannot be read). */
  budgetUsed: number | undefined;
}

/** The OAuth2 credentials' expiry and refresh budget, from their /status view. */
export async function oauth2Readings(policy: Policy): Promise<OAuth2Reading[]> {
  const oauth2 = [...policy.upstreams.values()].filter((u) => u.credentials && policy.config.upstreams[u.name]?.credentials?.type === 'oauth2');
  return Promise.all(
    oauth2.map(async (u) => {
      const status = await u.credentials!.status();
      const token = status.token as { expiresInS?: unknown } | undefined;
      const limit = status.refreshLimit as { max?: unknown } | undefined;
      const used = status.refreshesInWindow;
      return {
        upstream: u.name,
        expiresInS: typeof token?.expiresInS === 'number' ? token.expiresInS : undefined,
        budgetUsed: typeof used === 'number' && typeof limit?.max === 'number' && limit.max > 0 ? used / limit.max : undefined,
      };
    }),
  );
}
