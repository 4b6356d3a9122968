/**
 * Every Prometheus metric of a gateway, in one registry per Gateway (tests run several in one
 * process; prom-client's global registry would mix them). Served on the admin listener's /metrics.
 *
 * Two kinds, fed two ways:
 * - what happened (counters, histograms) is told once per request, from its record at the end of
 *   the pipeline (`request()`), and by the few places that see the rest (a refused CONNECT, a
 *   credential refresh, a store error, a reload);
 * - what is (gauges: queues, limit usage, breakers, credentials, pauses, tunnels, store fallback)
 *   is read from the live objects when Prometheus scrapes, in `collect()` callbacks, so the hot path
 *   never updates a gauge.
 *
 * Label values come only from the config (upstream, tenant and rule names; a pool member's index)
 * or the small fixed sets of outcomes.ts: never a path, a requested host or a key, so the number of
 * series is bounded by the config whatever clients send.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { ErrorCode } from '../errors.js';
import type { OnStoreError } from '../store/resilient.js';
import type { Policy } from '../policy.js';
import type { TunnelsStatus } from '../proxy/tunnels.js';
import type { RefreshOutcome } from '../credentials/oauth2.js';
import { namesRule, outcomeOf, retryReason, statusClass } from './outcomes.js';
import { oauth2Readings, type OAuth2Reading, type UpstreamRuleUsage, type UsageReader } from './readings.js';

/** What the gauges read at scrape time. */
export interface MetricsSources {
  /** The policy in force now (a reload swaps it). */
  policy(): Policy;
  limiter: { queueDepths(): Map<string, Map<string, number>> };
  /** Rule usage, read through the store (shared with /status). */
  usage: UsageReader;
  tunnels(): TunnelsStatus;
  /** store.onError's mode while the limit store is failing; undefined while it answers. */
  storeFallback(): OnStoreError | undefined;
}

/** What the end of a request tells the metrics (pipeline.ts, from the request's record). */
export interface RequestFacts {
  upstream: string | undefined;
  tenant: string | undefined;
  error: ErrorCode | undefined;
  /** The limit rule that refused. */
  limit: string | undefined;
  /** The status the client got. */
  status: number;
  clientGone: boolean;
  /** The upstream's answer went to the client (its status is `status`). */
  upstreamAnswered: boolean;
  /** ms waited in the queue (undefined: it did not queue). */
  queuedMs: number | undefined;
  /** ms from first sending upstream to the end (undefined: never sent). */
  upstreamMs: number | undefined;
  /** ms from arrival to the end. */
  totalMs: number;
  /** The outcome of each attempt that was retried: a status, or an error code. */
  retried: readonly (number | string)[] | undefined;
}

export type StoreName = 'limits' | 'tokens';

const OVERHEAD_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1];
const UPSTREAM_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
// Finer around the common onLimit.queue times (1 s, 2 s, 5 s), so a p95 near them is not a wide guess.
const QUEUE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30, 60];
const FALLBACK_MODES: readonly OnStoreError[] = ['allow', 'deny', 'local'];
const BREAKER_STATES = { closed: 'closed', halfOpen: 'half_open', open: 'open' } as const;
/** A reading taken for one scrape serves every gauge of that scrape (they are collected together). */
const READING_FRESH_MS = 500;

/**
 * Process and Node.js metrics describe the process, not a gateway: one registry for the process,
 * made on first use (collectDefaultMetrics starts observers that are never stopped).
 */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: 'sluice_' });
    // Gauges that prom-client names like counters (`_total`): promtool rejects them, and the
    // event-loop and memory metrics say what operators need.
    for (const name of ['active_handles_total', 'active_requests_total', 'active_resources_total']) {
      processRegistry.removeSingleMetric(`sluice_nodejs_${name}`);
    }
  }
  return processRegistry;
}

/**
 * A metric's children by their label values, kept: prom-client's labels() builds a label object
 * and binds a function at every call, a measurable share of the gateway's CPU per request. Label
 * values come from the config and small fixed sets, so the map stays small.
 */
class Children<T> {
  private readonly made = new Map<string, T>();

  constructor(private readonly make: (...values: string[]) => T) {}

  of(...values: string[]): T {
    const key = values.join('\u0000');
    let child = this.made.get(key);
    if (child === undefined) {
      child = this.make(...values);
      this.made.set(key, child);
    }
    return child;
  }
}

/**
 * A counter the request path adds to: a plain number per label values (nested maps, so finding it
 * builds nothing), handed to prom-client when scraped (`collect`). prom-client's inc() builds a
 * label object and a key string at every call: under load at concurrency 50 the per-request
 * metrics cost about a tenth of the gateway's CPU that way (bench/overhead against a build without
 * them). Up to four labels; a counter with fewer leaves the rest "".
 */
class Tally<L extends string> {
  private readonly cells = new Map<string, Map<string, Map<string, Map<string, { labels: Partial<Record<L, string>>; count: number }>>>>();

  constructor(
    name: string,
    help: string,
    private readonly labelNames: readonly L[],
    registers: Registry[],
  ) {
    const cells = () => this.all();
    // Registered with the registry, which asks it at each scrape; nothing here updates it directly.
    new Counter<L>({
      name,
      help,
      labelNames: [...labelNames],
      registers,
      collect(this: Counter<L>) {
        this.reset();
        for (const cell of cells()) this.inc(cell.labels, cell.count);
      },
    });
  }

  add(a: string, b = '', c = '', d = ''): void {
    let byB = this.cells.get(a);
    if (!byB) this.cells.set(a, (byB = new Map()));
    let byC = byB.get(b);
    if (!byC) byB.set(b, (byC = new Map()));
    let byD = byC.get(c);
    if (!byD) byC.set(c, (byD = new Map()));
    const cell = byD.get(d);
    if (cell) cell.count++;
    else byD.set(d, { labels: Object.fromEntries(this.labelNames.map((n, i) => [n, [a, b, c, d][i]!])) as Partial<Record<L, string>>, count: 1 });
  }

  private *all() {
    for (const byB of this.cells.values()) for (const byC of byB.values()) for (const byD of byC.values()) yield* byD.values();
  }
}

export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly requests: Tally<'upstream' | 'tenant' | 'outcome' | 'rule'>;
  private readonly upstreamResponses: Tally<'upstream' | 'tenant' | 'class'>;
  private readonly retries: Counter<'upstream' | 'reason'>;
  private readonly overhead: Histogram<'upstream'>;
  private readonly upstreamDuration: Histogram<'upstream'>;
  private readonly queueWait: Histogram<'upstream' | 'tenant'>;
  private readonly refreshes: Counter<'upstream' | 'outcome'>;
  private readonly storeErrors: Counter<'store'>;
  private readonly reloads: Counter<'outcome'>;
  private readonly lastReload: Gauge;
  /** The children every request updates, kept (see Children). */
  private readonly perRequest;
  /**
   * Every rule's usage, read once per scrape for the gauges that show it. An upstream that cannot
   * be read now is left out (UsageReader): a dead or failing store must not fail the scrape.
   */
  private readonly usages = new ScrapeReading<UpstreamRuleUsage[]>(() => this.sources.usage.all(this.sources.policy()));
  /** The OAuth2 credentials' expiry and refresh budget, read once per scrape for their two gauges. */
  private readonly oauth2 = new ScrapeReading<OAuth2Reading[]>(() => oauth2Readings(this.sources.policy()));

  constructor(private readonly sources: MetricsSources) {
    const registers = [this.registry];
    const counter = <L extends string>(name: string, help: string, labelNames: L[]) => new Counter<L>({ name, help, labelNames, registers });
    const histogram = <L extends string>(name: string, help: string, labelNames: L[], buckets: number[]) =>
      new Histogram<L>({ name, help, labelNames, buckets, registers });
    this.requests = new Tally(
      'sluice_requests_total',
      'Requests by what became of them (outcome) and, for limit refusals, the rule that refused.',
      ['upstream', 'tenant', 'outcome', 'rule'],
      registers,
    );
    this.upstreamResponses = new Tally(
      'sluice_upstream_responses_total',
      'Responses received from upstreams by status class, retried attempts included.',
      ['upstream', 'tenant', 'class'],
      registers,
    );
    this.retries = counter('sluice_retries_total', 'Retried attempts by why they were retried.', ['upstream', 'reason']);
    const overhead = 'Time a request spent in the gateway, excluding upstream time and queue wait.';
    this.overhead = histogram('sluice_gateway_overhead_seconds', overhead, ['upstream'], OVERHEAD_BUCKETS);
    const upstreamTime = 'Time from first sending a request upstream to the end of its response (retries included).';
    this.upstreamDuration = histogram('sluice_upstream_duration_seconds', upstreamTime, ['upstream'], UPSTREAM_BUCKETS);
    const queueWait = 'Time requests waited in the queue, admitted or timed out.';
    this.queueWait = histogram('sluice_queue_wait_seconds', queueWait, ['upstream', 'tenant'], QUEUE_BUCKETS);
    const refreshes = 'OAuth2 refreshes by outcome (refused_budget: the refresh budget said not now).';
    this.refreshes = counter('sluice_credential_refreshes_total', refreshes, ['upstream', 'outcome']);
    this.storeErrors = counter('sluice_store_errors_total', 'Calls to the shared store that failed.', ['store']);
    for (const store of ['limits', 'tokens'] as const) this.storeErrors.labels(store).inc(0);
    this.perRequest = {
      upstreamDuration: new Children((...values) => this.upstreamDuration.labels(...values)),
      overhead: new Children((...values) => this.overhead.labels(...values)),
    };
    this.reloads = counter('sluice_config_reloads_total', 'Config reloads by outcome.', ['outcome']);
    for (const outcome of ['ok', 'unchanged', 'failed'] as const) this.reloads.labels(outcome).inc(0);
    this.lastReload = new Gauge({
      name: 'sluice_config_last_reload_success_timestamp_seconds',
      help: 'When the config in force was loaded (start or reload), Unix seconds.',
      registers,
    });
    this.lastReload.setToCurrentTime();
    this.stateGauges();
  }

  /** The Content-Type of `text()`. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** The exposition for GET /metrics: this gateway's metrics and the process's. */
  async text(): Promise<string> {
    // Read afresh for every scrape.
    this.usages.forget();
    this.oauth2.forget();
    const [own, process] = await Promise.all([this.registry.metrics(), processMetrics().metrics()]);
    return `${own}\n${process}`;
  }

  /** One request, once its response is done with. */
  request(facts: RequestFacts): void {
    const upstream = facts.upstream ?? '';
    const tenant = facts.tenant ?? '';
    const queued = facts.queuedMs !== undefined;
    const outcome = outcomeOf({ error: facts.error, status: facts.status, clientGone: facts.clientGone, queued });
    this.requests.add(upstream, tenant, outcome, namesRule(outcome) ? (facts.limit ?? '') : '');
    if (facts.retried) {
      const unprocessed = facts.retried.some((r) => typeof r === 'number') ? this.sources.policy().upstreams.get(upstream)?.retry?.config.unprocessed : undefined;
      for (const attempt of facts.retried) {
        this.retries.labels(upstream, retryReason(attempt, unprocessed)).inc();
        if (typeof attempt === 'number') this.upstreamResponses.add(upstream, tenant, statusClass(attempt));
      }
    }
    if (facts.upstreamAnswered) this.upstreamResponses.add(upstream, tenant, statusClass(facts.status));
    if (queued) this.queueWait.labels(upstream, tenant).observe(facts.queuedMs! / 1000);
    if (facts.upstreamMs !== undefined) this.perRequest.upstreamDuration.of(upstream).observe(facts.upstreamMs / 1000);
    const overheadMs = facts.totalMs - (facts.upstreamMs ?? 0) - (facts.queuedMs ?? 0);
    this.perRequest.overhead.of(upstream).observe(Math.max(0, overheadMs) / 1000);
  }

  /** A request refused before the pipeline took it (a CONNECT, an Expect header). */
  refused(upstream: string | undefined, tenant: string | undefined, error: ErrorCode): void {
    const outcome = outcomeOf({ error, status: 0, clientGone: false, queued: false });
    this.requests.add(upstream ?? '', tenant ?? '', outcome, '');
  }

  credentialRefresh(upstream: string, outcome: RefreshOutcome): void {
    this.refreshes.labels(upstream, outcome).inc();
  }

  storeError(store: StoreName): void {
    this.storeErrors.labels(store).inc();
  }

  reload(outcome: 'ok' | 'unchanged' | 'failed'): void {
    this.reloads.labels(outcome).inc();
    if (outcome === 'ok') this.lastReload.setToCurrentTime();
  }

  /** The gauges of what is, each read from the live objects when scraped. */
  private stateGauges(): void {
    const { sources } = this;
    /** A gauge read when scraped: its series are set afresh each time, so those of things gone (a reload) go. */
    const gauge = <L extends string>(name: string, help: string, labelNames: L[], read: (gauge: Gauge<L>) => void | Promise<void>) =>
      new Gauge<L>({
        name,
        help,
        labelNames,
        registers: [this.registry],
        async collect(this: Gauge<L>) {
          this.reset();
          await read(this);
        },
      });
    const upstreams = () => sources.policy().upstreams.values();

    gauge('sluice_queue_depth', 'Requests waiting in the queue now on this instance.', ['upstream', 'tenant'], (g) => {
      for (const [upstream, byTenant] of sources.limiter.queueDepths()) {
        for (const [tenant, depth] of byTenant) g.labels(upstream, tenant).set(depth);
      }
    });
    const usageGauge = (name: string, help: string, value: (u: UpstreamRuleUsage) => number) =>
      gauge(name, help, ['upstream', 'rule', 'tenant', 'credential'], async (g) => {
        for (const u of await this.usages.get()) g.labels(u.upstream, u.rule, u.tenant ?? '', u.credential === undefined ? '' : String(u.credential)).set(value(u));
      });
    usageGauge('sluice_limit_utilisation_ratio', "Used / capacity of each limit rule's state now.", (u) => u.utilisation);
    usageGauge('sluice_limit_remaining', 'Requests each limit rule would admit right now.', (u) => u.remaining);
    gauge('sluice_limit_capacity', "Each limit rule's capacity (rate: its burst; quota and concurrency: the limit).", ['upstream', 'rule'], (g) => {
      for (const u of upstreams()) {
        for (const rule of u.limits.rules) g.labels(u.name, rule.name).set(rule.kind === 'rate' ? rule.burst : rule.limit);
      }
    });
    gauge('sluice_breaker_state', 'Circuit breaker state: 1 for the current state, 0 for the others.', ['upstream', 'credential', 'state'], (g) => {
      for (const u of upstreams()) {
        for (const { member, state } of u.breakers?.states() ?? []) {
          const credential = member === undefined ? '' : String(member);
          for (const [own, label] of Object.entries(BREAKER_STATES)) g.labels(u.name, credential, label).set(own === state ? 1 : 0);
        }
      }
    });
    const oauth2Gauge = (name: string, help: string, value: (c: OAuth2Reading) => number | undefined) =>
      gauge(name, help, ['upstream'], async (g) => {
        for (const c of await this.oauth2.get()) {
          const v = value(c);
          if (v !== undefined) g.labels(c.upstream).set(v);
        }
      });
    oauth2Gauge('sluice_credential_expiry_seconds', 'Seconds until the OAuth2 access token expires (absent while there is none).', (c) => c.expiresInS);
    oauth2Gauge(
      'sluice_credential_refresh_budget_used_ratio',
      'OAuth2 refreshes in the current window / refreshLimit.max, across instances (absent while the store cannot be read).',
      (c) => c.budgetUsed,
    );
    const tokensOut = 'Pool tokens out of rotation now, by why (a token out for several reasons counts under each).';
    gauge('sluice_pool_tokens_out', tokensOut, ['upstream', 'reason'], (g) => {
      for (const u of upstreams()) {
        if (u.poolSize === undefined) continue;
        const size = u.poolSize;
        g.labels(u.name, 'cooling').set(u.credentials?.outOfRotation?.()?.length ?? 0);
        g.labels(u.name, 'paused').set(u.pauses.members()?.filter((m) => m < size).length ?? 0);
        g.labels(u.name, 'breaker').set(u.breakers?.refusing()?.length ?? 0);
      }
    });
    gauge('sluice_pause_seconds', 'Seconds left of a pause the upstream asked for (credential "": the whole upstream).', ['upstream', 'credential'], (g) => {
      for (const u of upstreams()) {
        g.labels(u.name, '').set(u.pauses.leftMs(undefined) / 1000);
        for (let member = 0; member < (u.poolSize ?? 0); member++) g.labels(u.name, String(member)).set(u.pauses.leftMs(member) / 1000);
      }
    });
    gauge('sluice_store_fallback', 'The store.onError mode in force while the limit store is failing (1), else 0.', ['mode'], (g) => {
      const failing = sources.storeFallback();
      for (const mode of FALLBACK_MODES) g.labels(mode).set(mode === failing ? 1 : 0);
    });
    gauge('sluice_tunnels_open', 'CONNECT tunnels open now on this instance.', ['mode'], (g) => {
      let intercept = 0;
      let blind = 0;
      for (const counts of Object.values(sources.tunnels().upstreams)) {
        intercept += counts.intercepted;
        blind += counts.blind;
      }
      g.labels('intercept').set(intercept);
      g.labels('blind').set(blind);
    });
  }
}

/** A reading shared by the gauges of one scrape, taken when the first of them asks. */
class ScrapeReading<T> {
  private taken: { at: number; value: Promise<T> } | undefined;

  constructor(private readonly read: () => Promise<T>) {}

  get(): Promise<T> {
    const now = Date.now();
    if (this.taken && now - this.taken.at < READING_FRESH_MS) return this.taken.value;
    this.taken = { at: now, value: this.read() };
    return this.taken.value;
  }

  /** The next scrape reads afresh. */
  forget(): void {
    this.taken = undefined;
  }
}
