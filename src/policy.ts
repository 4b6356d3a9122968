/**
 * The Policy is routes.yaml compiled for serving: every derived value (Basic header, routing
 * tables, pools, timeouts in ms) computed once. It is immutable; a reload builds a new one on the
 * side and swaps it in, and each request reads the one Policy it started with.
 */
import type { Pool } from 'undici';
import type { LoadedConfig } from './config/load.js';
import type { Config, UpstreamConfig } from './config/schema.js';
import { credentialSecrets, type CredentialProvider } from './credentials/provider.js';
import type { CredentialRegistry } from './credentials/registry.js';
import { GatewayError } from './errors.js';
import { UpstreamLimits } from './limits/rules.js';
import type { Intake } from './proxy/intake.js';
import { Router } from './routing/router.js';
import { TenantDirectory } from './tenants/identify.js';
import type { PoolRegistry } from './upstream/pools.js';

export interface UpstreamProfile {
  readonly name: string;
  readonly match: UpstreamConfig['match'];
  /** Host header sent upstream: the target's host, with its port when not the default. */
  readonly hostHeader: string;
  /** The target's path without a trailing slash ("" for the root): request paths are appended. */
  readonly basePath: string;
  readonly dispatcher: Pool;
  readonly credentials: CredentialProvider | undefined;
  /** Environment variables the credentials need but that are unset: requests get 503. */
  readonly credentialsMissing: readonly string[] | undefined;
  readonly headersTimeoutMs: number;
  readonly bodyIdleTimeoutMs: number;
  readonly maxBodySize: number;
  readonly limits: UpstreamLimits;
}

export interface Route {
  upstream: UpstreamProfile;
  /** Path and query to send upstream. */
  path: string;
  /** The path limit rules match: as the upstream API names it, without the target's base path or the query. */
  rulePath: string;
}

export class Policy {
  readonly config: Config;
  readonly source: string;
  readonly version: string;
  readonly tenants: TenantDirectory;
  readonly upstreams: ReadonlyMap<string, UpstreamProfile>;
  /** Every configured secret value, for log redaction. */
  readonly secrets: readonly string[];
  private readonly router: Router<UpstreamProfile>;

  constructor(loaded: LoadedConfig, pools: PoolRegistry, credentials: CredentialRegistry) {
    const { config } = loaded;
    this.config = config;
    this.source = loaded.source;
    this.version = loaded.version;
    this.tenants = new TenantDirectory(config.tenants, loaded.tenantsWithoutKey);
    const upstreams = Object.entries(config.upstreams).map(([name, up]) =>
      upstreamProfile(name, up, config, pools, credentials, loaded.credentialsMissing.get(name)),
    );
    this.upstreams = new Map(upstreams.map((u) => [u.name, u]));
    this.router = new Router(upstreams);
    this.secrets = Policy.secretsOf(config);
  }

  /** Every configured secret value, for log redaction (known before anything can log). */
  static secretsOf(config: Config): string[] {
    return [
      ...Object.values(config.tenants ?? {}).map((t) => t.key),
      ...Object.values(config.upstreams).flatMap((u) => credentialSecrets(u.credentials)),
      config.listen.adminToken ?? '',
      config.store.tokenKey ?? '',
      ...redisPasswords(config.store.url),
    ].filter((s) => s.length >= 4);
  }

  /** The pools this policy sends through (the registry closes the others after a swap). */
  pools(): Set<Pool> {
    return new Set([...this.upstreams.values()].map((u) => u.dispatcher));
  }

  /** The credential providers this policy uses (the registry closes the others after a swap). */
  credentialProviders(): Set<CredentialProvider> {
    return new Set([...this.upstreams.values()].flatMap((u) => (u.credentials ? [u.credentials] : [])));
  }

  /** Which upstream, and which path on it; 403 for anything no upstream matches. */
  route(target: Intake): Route {
    if (target.form === 'proxy') {
      const upstream = this.router.byHost(target.host);
      if (upstream) return { upstream, path: upstream.basePath + target.path, rulePath: withoutQuery(target.path) };
      throw new GatewayError('destination_not_allowed', `no upstream is configured for host "${target.host}"`);
    }
    const match = this.router.byPrefix(target.path);
    if (match) return { upstream: match.upstream, path: match.upstream.basePath + match.rest, rulePath: withoutQuery(match.rest) };
    throw new GatewayError('destination_not_allowed', 'no upstream is configured for this path prefix');
  }
}

function upstreamProfile(
  name: string,
  up: UpstreamConfig,
  config: Config,
  pools: PoolRegistry,
  credentials: CredentialRegistry,
  credentialsMissing: string[] | undefined,
): UpstreamProfile {
  const target = up.target;
  return {
    name,
    match: up.match,
    hostHeader: target.host,
    basePath: target.pathname === '/' ? '' : target.pathname.replace(/\/$/, ''),
    dispatcher: pools.acquire({ origin: target.origin, connectTimeoutMs: up.timeouts.connect, connections: up.connections }),
    credentials: credentialsMissing || !up.credentials ? undefined : credentials.acquire(name, up.credentials),
    credentialsMissing,
    headersTimeoutMs: up.timeouts.headers,
    bodyIdleTimeoutMs: up.timeouts.bodyIdle,
    maxBodySize: up.maxBodySize ?? config.listen.maxBodySize,
    limits: new UpstreamLimits(name, up, config.store.prefix),
  };
}

/** A password in store.url is a secret like any other (and its URL-decoded form). */
function redisPasswords(url: string | string[] | undefined): string[] {
  const urls = url === undefined ? [] : (Array.isArray(url) ? url : [url]).flatMap((u) => u.split(','));
  return urls.flatMap((u) => {
    const password = URL.canParse(u.trim()) ? new URL(u.trim()).password : '';
    return password ? [password, decodeURIComponent(password)] : [];
  });
}

function withoutQuery(path: string): string {
  const query = path.indexOf('?');
  return query < 0 ? path : path.slice(0, query);
}
