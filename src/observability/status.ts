/**
 * The limit side of the status API: every rule's usage and Retry-After, queue depths, and each
 * tenant's view (GET /status and GET /status/tenants/<tenant>). Read through the store without
 * consuming anything; an upstream whose store cannot answer says so instead of failing the page.
 * Names only (upstreams, tenants, rules), never a key or token.
 */
import type { RuleUsage } from '../limits/usage.js';
import type { Policy, UpstreamProfile } from '../policy.js';
import type { Tenant } from '../tenants/identify.js';
import { tenantsOf, type UsageReader } from './readings.js';

export interface QueueSource {
  /** Requests waiting now on this instance: upstream → tenant → count. */
  queueDepths(): Map<string, Map<string, number>>;
}

/** A rule's state as the status API shows it: counts, and times in ms. */
export interface RuleUsageView {
  rule: string;
  kind: RuleUsage['kind'];
  per: RuleUsage['per'];
  shadow?: true;
  tenant?: string;
  credential?: number;
  capacity: number;
  used: number;
  remaining: number;
  /** used / capacity, to 3 decimals. */
  utilisation: number;
  /** 0 when the rule would admit a request now; else what Retry-After would say, in ms. */
  retryAfterMs: number;
  /** ms until full again (rate) or until the period ends (quota). */
  resetMs: number;
}

/** /status: each upstream's rules and queue, and each tenant's per-tenant rules and quotas left. */
export async function limitsStatus(
  policy: Policy,
  queues: QueueSource,
  reader: UsageReader,
): Promise<{ upstreams: Record<string, unknown>; tenants: Record<string, unknown> }> {
  const tenants = tenantsOf(policy);
  const depths = queues.queueDepths();
  const upstreams: Record<string, unknown> = {};
  const byTenant = new Map<string, { limits: (RuleUsageView & { upstream: string })[]; queued: Record<string, number> }>(
    tenants.map((t) => [t.name, { limits: [], queued: {} }]),
  );
  await Promise.all(
    [...policy.upstreams.values()].map(async (u) => {
      const queued = depths.get(u.name) ?? new Map<string, number>();
      for (const [tenant, depth] of queued) {
        const entry = byTenant.get(tenant);
        if (entry) entry.queued[u.name] = depth;
      }
      const queue = { depth: sum(queued.values()), tenants: Object.fromEntries(queued) };
      const view: Record<string, unknown> = { onLimit: onLimitView(u), queue };
      upstreams[u.name] = view;
      const read = await reader.upstream(u, tenants);
      if (!read.ok) {
        view.rules = null;
        view.error = read.error;
        return;
      }
      // Per-tenant rules go under their tenant; the upstream shows the rules everyone shares.
      view.rules = read.usages.filter((r) => r.per !== 'tenant').map(usageView);
      for (const r of read.usages) if (r.per === 'tenant' && r.tenant !== undefined) byTenant.get(r.tenant)?.limits.push({ upstream: u.name, ...usageView(r) });
    }),
  );
  const tenantsView = Object.fromEntries(
    [...byTenant].map(([name, { limits, queued }]) => [name, { limits, quotasLeft: quotasLeft(limits), queued }]),
  );
  return { upstreams: sortedByKey(upstreams), tenants: tenantsView };
}

/**
 * /status/tenants/<tenant>: every rule that bounds this tenant on every upstream (the shared ones
 * too), its quotas left and its queued requests; undefined for a tenant the config does not name.
 */
export async function tenantStatus(policy: Policy, queues: QueueSource, reader: UsageReader, name: string): Promise<Record<string, unknown> | undefined> {
  const tenant = tenantsOf(policy).find((t) => t.name === name);
  if (!tenant) return undefined;
  const depths = queues.queueDepths();
  const upstreams = await Promise.all([...policy.upstreams.values()].map(async (u) => [u.name, await tenantOnUpstream(u, tenant, reader, depths)] as const));
  return { tenant: tenant.name, weight: tenant.weight, upstreams: Object.fromEntries(upstreams.sort(([a], [b]) => a.localeCompare(b))) };
}

async function tenantOnUpstream(
  upstream: UpstreamProfile,
  tenant: Tenant,
  reader: UsageReader,
  depths: Map<string, Map<string, number>>,
): Promise<Record<string, unknown>> {
  const queued = depths.get(upstream.name)?.get(tenant.name) ?? 0;
  if (upstream.limits.rules.length === 0) return { limits: [], quotasLeft: {}, queued };
  const read = await reader.tenant(upstream, tenant);
  if (!read.ok) return { limits: null, error: read.error, queued };
  const limits = read.usages.map(usageView);
  return { limits, quotasLeft: quotasLeft(limits), queued };
}

function usageView(u: RuleUsage): RuleUsageView {
  return {
    rule: u.rule,
    kind: u.kind,
    per: u.per,
    ...(u.shadow ? { shadow: true as const } : {}),
    ...(u.tenant === undefined ? {} : { tenant: u.tenant }),
    ...(u.credential === undefined ? {} : { credential: u.credential }),
    capacity: u.capacity,
    used: u.used,
    remaining: u.remaining,
    utilisation: Math.round(u.utilisation * 1000) / 1000,
    retryAfterMs: Math.ceil(u.retryAfterMs),
    resetMs: Math.ceil(u.resetMs),
  };
}

/** Quota rules by name (upstream/rule when the list spans upstreams): the requests left in the period. */
function quotasLeft(limits: readonly (RuleUsageView & { upstream?: string })[]): Record<string, number> {
  return Object.fromEntries(
    limits.filter((l) => l.kind === 'quota').map((l) => [`${l.upstream === undefined ? '' : `${l.upstream}/`}${l.rule}${l.credential === undefined ? '' : `#${l.credential}`}`, l.remaining]),
  );
}

function onLimitView(u: UpstreamProfile): Record<string, unknown> | string {
  const onLimit = u.limits.onLimit;
  return onLimit ? { queueMs: onLimit.queueMs, maxQueue: onLimit.maxQueue } : 'reject';
}

function sum(values: Iterable<number>): number {
  let total = 0;
  for (const v of values) total += v;
  return total;
}

function sortedByKey<T>(record: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(record).sort(([a], [b]) => a.localeCompare(b)));
}
