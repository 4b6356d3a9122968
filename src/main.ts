/**
 * Wiring: config → policy → listeners, plus the gateway's lifecycle (reload, drain, stop).
 * `Gateway.start` is what the CLI runs and what tests start in-process.
 */
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DestinationStream } from 'pino';
import { ConfigError, loadConfigFile, type LoadedConfig } from './config/load.js';
import { watchConfig, type ConfigWatcher } from './config/watch.js';
import { adminRoutes, createAdminServer, type Readiness } from './observability/admin.js';
import { createLogger, SecretScrubber, type Logger } from './observability/logger.js';
import { Policy } from './policy.js';
import { createProxyServer, type ProxyContext } from './proxy/server.js';
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
    this.proxyServer = createProxyServer(this, loaded.config.listen);
    this.adminServer = createAdminServer(adminRoutes({ readiness: () => this.readiness() }));
  }

  /** Loads the config and listens; throws ConfigError for a bad file, or the listen error. */
  static async start(options: GatewayOptions): Promise<Gateway> {
    const loaded = await loadConfigFile(options.configPath, options.env ?? process.env);
    const gateway = new Gateway(loaded, options);
    const { listen } = loaded.config;
    try {
      await listenOn(gateway.proxyServer, listen.proxy.host, listen.proxy.port);
      await listenOn(gateway.adminServer, listen.admin.host, listen.admin.port);
    } catch (err) {
      gateway.proxyServer.close();
      gateway.adminServer.close();
      await gateway.pools.close();
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
    this.reloading = this.reloading.then(() => this.reloadNow());
    return this.reloading;
  }

  private async reloadNow(): Promise<ReloadResult> {
    let loaded: LoadedConfig;
    try {
      loaded = await loadConfigFile(this.options.configPath, this.options.env ?? process.env);
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : [String(err)];
      this.logger.error({ problems, version: this.policy.version }, 'config reload rejected; the previous config keeps serving');
      return { ok: false, problems };
    }
    if (loaded.version === this.policy.version) return { ok: true, version: loaded.version, changed: false };
    for (const warning of loaded.warnings) this.logger.warn({ config: loaded.source }, warning);
    for (const key of ['listen', 'store', 'tls'] as const) {
      if (JSON.stringify(loaded.config[key]) !== JSON.stringify(this.policy.config[key])) {
        this.logger.warn({ key }, `${key}: changes take effect at the next restart`);
      }
    }
    const previous = this.policy;
    this.policy = new Policy(loaded, this.pools);
    this.scrubber.update([...previous.secrets, ...this.policy.secrets]);
    this.logger.level = loaded.config.log.level;
    this.pools.retainOnly(this.policy.pools());
    this.logger.info({ from: previous.version, to: loaded.version }, 'config reloaded');
    // Lines about requests still on the old policy may carry its secrets for a little while.
    setTimeout(() => this.scrubber.update(this.policy.secrets), 60_000).unref();
    return { ok: true, version: loaded.version, changed: true };
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
    const closed = once(this.proxyServer, 'close');
    this.proxyServer.close();
    // Keep-alive connections go as soon as they are idle; busy ones get `Connection: close`.
    const idleCloser = setInterval(() => this.proxyServer.closeIdleConnections(), 50);
    this.proxyServer.closeIdleConnections();
    const drained = await Promise.race([closed.then(() => true), sleep(this.policy.config.listen.drainTimeout, false)]);
    clearInterval(idleCloser);
    if (!drained) {
      this.logger.warn('drain timeout reached; closing the remaining connections');
      this.proxyServer.closeAllConnections();
    }
    this.adminServer.close();
    this.adminServer.closeAllConnections();
    await this.pools.close();
    this.logger.info('stopped');
    // Bounded: with stdout gone (a closed pipe) a flush would never call back.
    await Promise.race([new Promise<void>((resolve) => this.logger.flush(() => resolve())), sleep(1_000)]);
  }
}

async function listenOn(server: Server, host: string, port: number): Promise<void> {
  server.listen(port, host);
  await once(server, 'listening');
}

