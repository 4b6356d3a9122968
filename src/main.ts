/**
 * Wiring: config → policy → listeners, plus the gateway's lifecycle (reload, drain, stop).
 * `Gateway.start` is what the CLI runs and what tests start in-process.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DestinationStream } from 'pino';
import { ConfigError, isLoopback, loadConfigFile, type LoadedConfig } from './config/load.js';
import { Limiter } from './limits/admit.js';
import { watchConfig, type ConfigWatcher } from './config/watch.js';
import { adminRoutes, createAdminServer, type Readiness } from './observability/admin.js';
import { createLogger, SecretScrubber, type Logger } from './observability/logger.js';
import { Policy } from './policy.js';
import { createProxyServer, type ProxyContext } from './proxy/server.js';
import { openStore } from './store/open.js';
import { PoolRegistry } from './upstream/pools.js';

export interface GatewayOptions {
  configPath: string;
  env?: NodeJS.ProcessEnv;
  /** Log destination (stdout by default); tests capture lines here. */
  logDestination?: DestinationStream;
  /** Reload when the file changes (default true). SIGHUP reloads regardless, via the CLI. */
  watch?: boolean;
}

export type ReloadResult = { ok: true; version: string; changed: boolean } | { ok: false; problems: string[] };

export class Gateway implements ProxyContext {
  policy: Policy;
  draining = false;
  readonly logger: Logger;
  readonly limiter: Limiter;
  private readonly storeConnected: Promise<void>;
  private readonly scrubber: SecretScrubber;
  private readonly pools: PoolRegistry;
  private readonly options: GatewayOptions;
  private readonly proxyServer: Server;
  private readonly adminServer: Server;
  private watcher: ConfigWatcher | undefined;
  private reloading: Promise<ReloadResult> = Promise.resolve({ ok: true, version: '', changed: false });

  private constructor(loaded: LoadedConfig, options: GatewayOptions) {
    this.options = options;
    this.scrubber = new SecretScrubber();
    this.pools = new PoolRegistry();
    this.policy = new Policy(loaded, this.pools);
    this.scrubber.update(this.policy.secrets);
    this.logger = createLogger({
      level: loaded.config.log.level,
      scrubber: this.scrubber,
      ...(options.logDestination ? { destination: options.logDestination } : {}),
    });
    for (const warning of loaded.warnings) this.logger.warn({ config: loaded.source }, warning);
    const opened = openStore(loaded.config.store, this.logger);
    this.storeConnected = opened.connected;
    this.limiter = new Limiter(opened.store, loaded.config.store.leaseTtl);
    this.proxyServer = createProxyServer(this, loaded.config.listen);
    this.adminServer = createAdminServer(adminRoutes({ readiness: () => this.readiness() }));
  }

  /** Loads the config and listens; throws ConfigError for a bad file, or the listen error. */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const loaded = await loadConfigFile(options.configPath, options.env ?? process.env);
    const gateway = new Gateway(loaded, options);
    const { listen } = loaded.config;
    try {
      await gateway.storeConnected;
      await listenOn(gateway.proxyServer, listen.proxy.host, listen.proxy.port);
      await listenOn(gateway.adminServer, listen.admin.host, listen.admin.port);
    } catch (err) {
      gateway.proxyServer.close();
      gateway.adminServer.close();
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
    const attempt = () => this.reloadNow().catch((err: unknown) => this.rejectReload([`reload failed: ${String(err)}`]));
    // A failed reload must not block the ones after it: the chain continues either way.
    this.reloading = this.reloading.then(attempt, attempt);
    return this.reloading;
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
    this.policy = new Policy({ ...loaded, config: { ...loaded.config, listen: running.listen, store: running.store, tls: running.tls } }, this.pools);
    // Secrets of earlier configs stay redacted: requests on them may still be logging.
    this.scrubber.update([...previous.secrets, ...this.policy.secrets]);
    this.logger.level = loaded.config.log.level;
    this.pools.retainOnly(this.policy.pools());
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

