/**
 * An upstream's `limits:` compiled once per config into numbers and matchers (nothing is parsed
 * per request), and, per request, the rules that apply in the form the store evaluates. Those
 * are cached per tenant and set of matching rules, so the hot path builds nothing twice.
 */
import type { LimitRuleConfig, UpstreamConfig } from '../config/schema.js';
import type { Tenant } from '../tenants/identify.js';
import type { RuleKind, StoreRule } from '../store/store.js';

export interface LimitRule {
  readonly name: string;
  readonly kind: RuleKind;
  readonly per: LimitRuleConfig['per'];
  readonly limit: number;
  readonly periodMs: number;
  readonly burst: number;
  readonly fair: boolean;
  /** Guaranteed requests per ms, by tenant (share: fair). */
  readonly reserves: ReadonlyMap<string, number>;
  readonly shadow: boolean;
  readonly methods: ReadonlySet<string> | undefined;
  readonly path: RegExp | undefined;
  /** State key without the per-tenant or per-credential part; `{prefix:upstream}` is the Redis Cluster hash tag. */
  readonly keyBase: string;
  /** ms between two requests at the rule's full rate (0 for concurrency). */
  readonly intervalMs: number;
  /** This rule's item of the RateLimit-Policy header, e.g. `"calls";q=1;w=1`. */
  readonly policy: string;
}

export interface RuleSet {
  /** Requests with equal keys wait in the same queue lane (same tenant, same rules). */
  readonly key: string;
  readonly rules: readonly LimitRule[];
  readonly storeRules: readonly StoreRule[];
  /** Credential candidates: the pool's size when a rule counts per credential, else 1. */
  readonly candidates: number;
  /** The RateLimit-Policy header: the enforced rules of the set. */
  readonly policyHeader: string;
  /** Indexes of the concurrency rules among them: the leases an admission holds. */
  readonly concurrencyRules: readonly number[];
}

export interface OnLimit {
  readonly queueMs: number;
  readonly maxQueue: number;
}

export class UpstreamLimits {
  readonly upstream: string;
  readonly rules: readonly LimitRule[];
  /** undefined: reject at once. */
  readonly onLimit: OnLimit | undefined;
  private readonly candidates: number;
  private readonly cache = new Map<string, RuleSet>();

  constructor(upstream: string, config: UpstreamConfig, storePrefix: string) {
    this.upstream = upstream;
    const tag = `{${storePrefix}:${upstream}}`;
    this.rules = config.limits.map((rule) => compileRule(rule, tag, config.mode === 'shadow'));
    this.onLimit = config.onLimit === 'reject' ? undefined : { queueMs: config.onLimit.queue, maxQueue: config.onLimit.maxQueue };
    const poolSize = config.credentials?.type === 'pool' ? config.credentials.tokens.length : 1;
    this.candidates = this.rules.some((r) => r.per === 'credential') ? poolSize : 1;
  }

  /** The rules that apply to this request (`path` without the query), or undefined when none does. */
  forRequest(method: string, path: string, tenant: Tenant): RuleSet | undefined {
    let matched = '';
    for (const rule of this.rules) matched += applies(rule, method, path) ? '1' : '0';
    if (!matched.includes('1')) return undefined;
    const cacheKey = `${tenant.name}\u0000${matched}`;
    let set = this.cache.get(cacheKey);
    if (!set) {
      const rules = this.rules.filter((_, i) => matched[i] === '1');
      set = {
        key: `${this.upstream}\u0000${cacheKey}`,
        rules,
        storeRules: rules.map((rule) => storeRule(rule, tenant, this.candidates)),
        candidates: this.candidates,
        concurrencyRules: rules.flatMap((r, i) => (r.kind === 'concurrency' ? [i] : [])),
        policyHeader: rules
          .filter((r) => !r.shadow)
          .map((r) => r.policy)
          .join(', '),
      };
      this.cache.set(cacheKey, set);
    }
    return set;
  }

  /**
   * The states of the rules every tenant meets, one key each, for reading them (status, metrics):
   * the upstream-wide and per-credential rules, a fair-shared one as `viewer` finds it (without a
   * viewer, as a newcomer would).
   */
  sharedStates(viewer: Tenant = NOBODY): RuleState[] {
    return this.rules.filter((rule) => rule.per !== 'tenant').flatMap((rule) => this.statesOf(rule, viewer));
  }

  /**
   * Each tenant's state of every per-tenant rule, one key each. All of them share the upstream's
   * hash tag, so one store call can read every tenant's.
   */
  tenantStates(tenants: readonly Tenant[]): RuleState[] {
    const perTenant = this.rules.filter((rule) => rule.per === 'tenant');
    return tenants.flatMap((tenant) => perTenant.flatMap((rule) => this.statesOf(rule, tenant)));
  }

  private statesOf(rule: LimitRule, tenant: Tenant): RuleState[] {
    const whole = storeRule(rule, tenant, this.candidates);
    return whole.keys.map((key, i) => ({
      rule,
      store: { ...whole, keys: [key] },
      tenant: rule.per === 'tenant' ? tenant.name : undefined,
      credential: rule.per === 'credential' ? i : undefined,
    }));
  }
}

/** One state of a rule as the store keeps it: the rule's single key for a tenant or a pool member. */
export interface RuleState {
  readonly rule: LimitRule;
  readonly store: StoreRule;
  /** The tenant whose state this is (a rule per tenant), else undefined. */
  readonly tenant: string | undefined;
  /** The pool member whose state this is (a rule per credential), else undefined. */
  readonly credential: number | undefined;
}

/** A fair-shared rule read without a tenant: its shared bucket, as a newcomer would find it. */
const NOBODY: Tenant = { name: '', weight: 1 };

function applies(rule: LimitRule, method: string, path: string): boolean {
  return (rule.methods === undefined || rule.methods.has(method)) && (rule.path === undefined || rule.path.test(path));
}

function compileRule(rule: LimitRuleConfig, tag: string, upstreamShadow: boolean): LimitRule {
  const kind: RuleKind = rule.rate ? 'rate' : rule.quota ? 'quota' : 'concurrency';
  const amount = rule.rate ?? rule.quota;
  const limit = amount?.count ?? rule.concurrency ?? 0;
  const periodMs = amount?.periodMs ?? 0;
  const window = kind === 'concurrency' ? '' : `;w=${periodMs / 1000}`;
  return {
    name: rule.name,
    kind,
    per: rule.per,
    limit,
    periodMs,
    burst: rule.burst ?? 1,
    fair: rule.share === 'fair',
    reserves: new Map(Object.entries(rule.reserve ?? {}).map(([tenant, r]) => [tenant, r.count / r.periodMs])),
    shadow: upstreamShadow || rule.mode === 'shadow',
    methods: rule.match?.method ? new Set(rule.match.method) : undefined,
    path: rule.match?.path === undefined ? undefined : globToRegExp(rule.match.path),
    // The kind is part of the key: a rule renamed from concurrency to rate (or made fair) on a
    // reload, or by instances rolling to a new config, starts fresh instead of meeting state of
    // another shape.
    keyBase: `${tag}:${rule.name}:${rule.share === 'fair' ? 'fair' : kind}`,
    intervalMs: kind === 'concurrency' ? 0 : periodMs / limit,
    policy: `"${rule.name}";q=${limit}${window}`,
  };
}

/** `*` matches within one path segment, `**` across segments; everything else is literal. */
function globToRegExp(glob: string): RegExp {
  const pattern = glob
    .split('**')
    .map((part) => part.split('*').map((text) => text.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('[^/]*'))
    .join('.*');
  return new RegExp(`^${pattern}$`);
}

/**
 * How long a tenant counts as active (and as waiting) after its last request: a few request
 * intervals, at least a second, longer than a client honouring Retry-After takes to come back.
 */
function activeWindowMs(rule: LimitRule): number {
  return Math.max(1_000, 4 * rule.intervalMs);
}

function storeRule(rule: LimitRule, tenant: Tenant, candidates: number): StoreRule {
  const keys =
    rule.per === 'credential'
      ? Array.from({ length: candidates }, (_, i) => `${rule.keyBase}:c${i}`)
      : [rule.per === 'tenant' ? `${rule.keyBase}:t:${tenant.name}` : rule.keyBase];
  return {
    kind: rule.kind,
    keys,
    limit: rule.limit,
    periodMs: rule.periodMs,
    burst: rule.burst,
    fair: rule.fair
      ? {
          tenant: tenant.name,
          weight: tenant.weight,
          reservePerMs: rule.reserves.get(tenant.name) ?? 0,
          activeWindowMs: activeWindowMs(rule),
        }
      : undefined,
    shadow: rule.shadow,
  };
}
