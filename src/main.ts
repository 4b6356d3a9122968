/**
 * Wiring: config → policy → listeners, plus the gateway's lifecycle (reload, drain, stop).
 * `Gateway.start` is what the CLI runs and what tests start in-process.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DestinationStream } from 'pino';
import { ConfigError, isLoopback, loadConfigFile, type LoadedConfig } from './config/load.js';
import type { Config } from './config/schema.js';
import { refreshCredentials, credentialsStatus } from './credentials/operations.js';
import { CredentialRegistry } from './credentials/registry.js';
import { aesSealer, plainSealer } from './credentials/seal.js';
import { Limiter } from './limits/admit.js';
import { PauseRegistry } from './limits/pauses.js';
import { watchConfig, type ConfigWatcher } from './config/watch.js';
import { adminRoutes, createAdminServer, type ActionResult, type Readiness } from './observability/admin.js';
import { createLogger, SecretScrubber, type Logger } from './observability/logger.js';
import { GatewayMetrics } from './observability/metrics.js';
import { UsageReader } from './observability/readings.js';
import { limitsStatus, tenantStatus } from './observability/status.js';
import { Policy, type Registries } from './policy.js';
import { createProxyServer, type ProxyContext } from './proxy/server.js';
import { Tunnels } from './proxy/tunnels.js';
import { openStore } from './store/open.js';
import { CaError, InsecureCaKeyError, loadOrCreateCa } from './tls/ca.js';
import { LeafCertificates } from './tls/leaf.js';
import { BreakerRegistry } from './upstream/breaker.js';
import { PoolRegistry } from './upstream/pools.js';
import { RetryBudgets } from './upstream/retry.js';

export interface GatewayOptions {
  configPath: string;
  env?: NodeJS.ProcessEnv;
  /** Log destination (stdout by default); tests capture lines here. */
  logDestination?: DestinationStream;
  /** Reload when the file changes (default true). SIGHUP reloads regardless, via the CLI. */
  watch?: boolean;
  /**
   * Tests only, no config key: how often cool-downs (breaker openings, learned pauses, pool tokens)
   * are read from the store besides its announcements (default SYNC_EVERY_MS, store/cool-down-sync.ts).
   */
  syncEveryMs?: number;
}

export type ReloadResult = { ok: true; version: string; changed: boolean } | { ok: false; problems: string[] };

export class Gateway implements ProxyContext {
  policy: Policy;
  draining = false;
  readonly logger: Logger;
  readonly limiter: Limiter;
  readonly tunnels: Tunnels;
  readonly metrics: GatewayMetrics;
  /** The CA's leaf certificates, once an upstream is intercepted (loaded at start, or at the reload that first needs it). */
  leaves: LeafCertificates | undefined;
  /** Why the CA could not be had, while it cannot (intercepted CONNECTs answer 503 tls_unavailable). */
  private caProblem: string | undefined;
  private readonly storeConnected: Promise<void>;
  /** Rule usage for /metrics and /status. */
  private readonly usage: UsageReader;
  /** The limit store is failing and store.onError applies. */
  private readonly storeDegraded: () => boolean;
  private readonly scrubber: SecretScrubber;
  private readonly pools: PoolRegistry;
  private readonly credentials: CredentialRegistry;
  private readonly breakers: BreakerRegistry;
  private readonly pauses: PauseRegistry;
  private readonly retryBudgets = new RetryBudgets();
  private readonly options: GatewayOptions;
  private readonly proxyServer: Server;
  private readonly adminServer: Server;
  private watcher: ConfigWatcher | undefined;
  private reloading: Promise<ReloadResult> = Promise.resolve({ ok: true, version: '', changed: false });

  private constructor(loaded: LoadedConfig, options: GatewayOptions) {
    this.options = options;
    this.scrubber = new SecretScrubber();
    this.logger = createLogger({
      level: loaded.config.log.level,
      scrubber: this.scrubber,
      ...(options.logDestination ? { destination: options.logDestination } : {}),
    });
    const { store: storeConfig, listen } = loaded.config;
    // Secrets first: nothing may be logged before the scrubber knows them.
    this.scrubber.update(Policy.secretsOf(loaded.config));
    const opened = openStore(storeConfig, this.logger, (store) => this.metrics.storeError(store));
    this.storeConnected = opened.connected;
    this.storeDegraded = opened.degraded;
    this.limiter = new Limiter(opened.store, storeConfig.leaseTtl, this.logger);
    this.pools = new PoolRegistry();
    this.tunnels = new Tunnels(listen.maxTunnels);
    this.usage = new UsageReader(this.limiter, this.logger);
    this.metrics = new GatewayMetrics({
      policy: () => this.policy,
      limiter: this.limiter,
      usage: this.usage,
      tunnels: () => this.tunnels.status(),
      storeFallback: () => (opened.degraded() ? storeConfig.onError : undefined),
    });
    this.credentials = new CredentialRegistry({
      store: opened.tokens,
      sealer: storeConfig.tokenKey === undefined ? plainSealer : aesSealer(storeConfig.tokenKey),
      prefix: storeConfig.prefix,
      logger: this.logger,
      learnSecret: (value) => this.scrubber.learn(value),
      storeReady: opened.connected,
      onRefresh: (upstream, outcome) => this.metrics.credentialRefresh(upstream, outcome),
      syncEveryMs: options.syncEveryMs,
    });
    // Breaker openings and learned pauses are shared the same way: written to the token store, and
    // read back by every instance (announced, and polled).
    const coolDowns = {
      store: opened.tokens,
      prefix: storeConfig.prefix,
      logger: this.logger,
      shared: storeConfig.type === 'redis',
      syncEveryMs: options.syncEveryMs,
    };
    this.breakers = new BreakerRegistry(coolDowns);
    this.pauses = new PauseRegistry(coolDowns);
    this.policy = new Policy(loaded, this.registries());
    for (const warning of loaded.warnings) this.logger.warn({ config: loaded.source }, warning);
    this.proxyServer = createProxyServer(this, listen);
    this.adminServer = createAdminServer(
      adminRoutes({
        readiness: () => this.readiness(),
        status: () => this.status(),
        tenantStatus: (tenant) => tenantStatus(this.policy, this.limiter, this.usage, tenant),
        metrics: async () => ({ contentType: this.metrics.contentType, text: await this.metrics.text() }),
        reload: (from) => this.reloadAction(from),
        refreshCredentials: (upstream, force, from) => refreshCredentials(this.policy, this.logger, upstream, force, from),
        adminToken: listen.adminToken,
        loopback: isLoopback(listen.admin.host),
      }),
    );
  }

  /** Loads the config and listens; throws ConfigError for a bad file, or the listen error. */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const loaded = await loadConfigFile(options.configPath, options.env ?? process.env);
    const gateway = new Gateway(loaded, options);
    const { listen } = loaded.config;
    try {
      await gateway.loadCaIfNeeded(loaded.config);
      await gateway.storeConnected;
      await listenOn(gateway.proxyServer, listen.proxy.host, listen.proxy.port);
      await listenOn(gateway.adminServer, listen.admin.host, listen.admin.port);
    } catch (err) {
      gateway.proxyServer.close();
      gateway.adminServer.close();
      gateway.credentials.close();
      gateway.breakers.close();
      gateway.pauses.close();
      await Promise.all([gateway.pools.close(), gateway.limiter.close()]);
      throw err;
    }
    if (options.watch ?? true) {
      gateway.watcher = watchConfig(
        options.configPath,
        () => void gateway.reload(),
        (err) => gateway.logger.warn({ err: err.message }, 'cannot watch the config file; reload with SIGHUP'),
      );
    }
    gateway.logger.info(
      { proxy: gateway.proxyAddress, admin: gateway.adminAddress, config: loaded.source, version: loaded.version },
      'sluice is listening',
    );
    return gateway;
  }

  get proxyAddress(): AddressInfo {
    return this.proxyServer.address() as AddressInfo;
  }

  get adminAddress(): AddressInfo {
    return this.adminServer.address() as AddressInfo;
  }

  /**
   * GET /status: what this instance runs, its store and tunnels, every upstream's limit usage and
   * queue, each tenant's own limits, and the state of credentials, circuit breakers and learned pauses.
   */
  async status(): Promise<Record<string, unknown>> {
    const policy = this.policy;
    const store = policy.config.store;
    const limits = await limitsStatus(policy, this.limiter, this.usage);
    return {
      version: policy.version,
      source: policy.source,
      store: store.type === 'memory' ? { type: store.type } : { type: store.type, onError: store.onError, fallback: this.storeDegraded() },
      upstreams: limits.upstreams,
      tenants: limits.tenants,
      tunnels: this.tunnels.status(),
      ...(this.leaves ? { tls: { ca: this.leaves.caPath, leaves: this.leaves.stats() } } : {}),
      ...(this.caProblem ? { tls: { error: this.caProblem } } : {}),
      credentials: await credentialsStatus(policy),
      breakers: Object.fromEntries([...policy.upstreams.values()].flatMap((u) => (u.breakers ? [[u.name, u.breakers.status()]] : []))),
      pauses: Object.fromEntries([...policy.upstreams.values()].flatMap((u) => Object.entries({ [u.name]: u.pauses.status() }).filter(([, p]) => p))),
    };
  }

  private registries(): Registries {
    return { pools: this.pools, credentials: this.credentials, breakers: this.breakers, pauses: this.pauses, retryBudgets: this.retryBudgets };
  }

  /**
   * The gateway's CA, loaded (or created) when an upstream is first intercepted, and leaf
   * certificates issued ahead for the host names the config lists, off the request path. A CA key
   * others can read stops the start (or the reload); any other problem (a read-only folder, a
   * missing file) is logged and only interception waits for it to be fixed, at a reload or restart:
   * HTTP_PROXY and base-URL traffic need no CA.
   */
  private async loadCaIfNeeded(config: Config): Promise<void> {
    const intercepted = Object.values(config.upstreams).filter((u) => u.intercept && u.match.hosts.length > 0);
    if (intercepted.length === 0) return;
    if (!this.leaves) {
      try {
        const ca = await loadOrCreateCa(config.tls, dirname(this.options.configPath));
        if (ca.created) this.logger.info({ ca: ca.certPath }, 'created the gateway CA; clients must trust it (sluice ca)');
        this.leaves = new LeafCertificates(ca);
        this.caProblem = undefined;
      } catch (err) {
        if (!(err instanceof CaError) || err instanceof InsecureCaKeyError) throw err;
        this.caProblem = err.message;
        this.logger.error({ problem: err.message }, 'no gateway CA: intercepted CONNECTs answer 503 tls_unavailable until it is fixed (reload or restart)');
        return;
      }
    }
    const names = intercepted.flatMap((u) => u.match.hosts).filter((h) => !h.startsWith('*.'));
    this.leaves.warm(names.map((h) => h.replace(/:\d+$/, ''))).catch((err: unknown) => this.logger.warn({ err }, 'could not issue leaf certificates ahead'));
  }

  readiness(): Readiness {
    const reasons = this.draining ? ['the gateway is shutting down'] : [];
    return { ready: reasons.length === 0, reasons };
  }

  /**
   * Re-reads the config; a valid file is swapped in at once (requests in flight finish on the
   * policy they started with), an invalid one is logged and the current policy keeps serving.
   * Reloads run one at a time.
   */
  reload(): Promise<ReloadResult> {
    const attempt = () =>
      this.reloadNow()
        .catch((err: unknown) => this.rejectReload([`reload failed: ${String(err)}`]))
        .then((result) => {
          this.metrics.reload(!result.ok ? 'failed' : result.changed ? 'ok' : 'unchanged');
          return result;
        });
    // A failed reload must not block the ones after it: the chain continues either way.
    this.reloading = this.reloading.then(attempt, attempt);
    return this.reloading;
  }

  /** POST /reload: the reload's result, logged as an audit event. */
  private async reloadAction(from: string): Promise<ActionResult> {
    const result = await this.reload();
    this.logger.info(
      { audit: 'config.reload', from, status: result.ok ? 200 : 422, outcome: result.ok ? (result.changed ? 'reloaded' : 'unchanged') : 'rejected' },
      'admin action',
    );
    return result.ok ? { status: 200, body: { ...result } } : { status: 422, body: { ...result } };
  }

  private async reloadNow(): Promise<ReloadResult> {
    if (this.draining) return this.rejectReload(['the gateway is shutting down']);
    let loaded: LoadedConfig;
    try {
      loaded = await loadConfigFile(this.options.configPath, this.options.env ?? process.env);
    } catch (err) {
      return this.rejectReload(err instanceof ConfigError ? err.problems : [String(err)]);
    }
    if (loaded.version === this.policy.version) return { ok: true, version: loaded.version, changed: false };
    // listen, store and tls are bound at start: the listeners keep what they were started with.
    const running = this.policy.config;
    if (loaded.config.tenants === undefined && !isLoopback(running.listen.proxy.host)) {
      return this.rejectReload([
        `${loaded.source}: tenants: removing every tenant while listening on ${running.listen.proxy.host} would make the gateway an open relay`,
      ]);
    }
    for (const key of ['listen', 'store', 'tls'] as const) {
      if (JSON.stringify(loaded.config[key]) !== JSON.stringify(running[key])) {
        this.logger.warn({ key }, `${key}: changes take effect at the next restart`);
      }
    }
    for (const warning of loaded.warnings) this.logger.warn({ config: loaded.source }, warning);
    const previous = this.policy;
    const config = { ...loaded.config, listen: running.listen, store: running.store, tls: running.tls };
    // Secrets of earlier configs stay redacted: requests on them may still be logging.
    this.scrubber.update([...previous.secrets, ...Policy.secretsOf(config)]);
    try {
      await this.loadCaIfNeeded(config);
    } catch (err) {
      return this.rejectReload([err instanceof Error ? err.message : String(err)]);
    }
    this.policy = new Policy({ ...loaded, config }, this.registries());
    const cut = this.tunnels.revalidate(this.policy);
    if (cut > 0) this.logger.info({ tunnels: cut }, 'closed blind tunnels the new config no longer allows');
    this.logger.level = loaded.config.log.level;
    this.pools.retainOnly(this.policy.pools());
    this.credentials.retainOnly(this.policy.credentialProviders());
    this.breakers.retainOnly(this.policy.breakerSets());
    this.pauses.retainOnly(this.policy.pauseSets());
    this.retryBudgets.retainOnly(this.policy.retryBudgets());
    this.logger.info({ from: previous.version, to: loaded.version }, 'config reloaded');
    return { ok: true, version: loaded.version, changed: true };
  }

  private rejectReload(problems: string[]): ReloadResult {
    this.logger.error({ problems, version: this.policy.version }, 'config reload rejected; the previous config keeps serving');
    return { ok: false, problems };
  }

  /**
   * Graceful stop: stop accepting, let requests in flight finish (up to listen.drainTimeout),
   * then close whatever is left.
   */
  async shutdown(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    this.watcher?.close();
    this.logger.info({ drainTimeoutMs: this.policy.config.listen.drainTimeout }, 'draining');
    const closed = once(this.proxyServer, 'close').then(
      () => true,
      () => true,
    );
    this.proxyServer.close();
    // Keep-alive connections are closed as soon as they are idle, after the response in progress.
    const idleCloser = setInterval(() => this.proxyServer.closeIdleConnections(), 50);
    this.proxyServer.closeIdleConnections();
    const timer = new AbortController();
    const timedOut = sleep(this.policy.config.listen.drainTimeout, false, { signal: timer.signal }).catch(() => false);
    const drained = await Promise.race([closed, timedOut]);
    timer.abort();
    clearInterval(idleCloser);
    if (!drained) {
      this.logger.warn('drain timeout reached; closing the remaining connections');
      this.proxyServer.closeAllConnections();
    }
    this.adminServer.close();
    this.adminServer.closeAllConnections();
    this.credentials.close();
    this.breakers.close();
    this.pauses.close();
    await Promise.all([this.pools.close(), this.limiter.close()]);
    this.logger.info('stopped');
    // Bounded: with stdout gone (a closed pipe) a flush would never call back.
    await new Promise<void>((resolve) => this.logger.flush(() => resolve()));
  }
}

async function listenOn(server: Server, host: string, port: number): Promise<void> {
  server.listen(port, host);
  await once(server, 'listening');
}

