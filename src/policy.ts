/**
 * The Policy is routes.yaml compiled for serving: every derived value (Basic header, routing
 * tables, pools, timeouts in ms) computed once. It is immutable; a reload builds a new one on the
 * side and swaps it in, and each request reads the one Policy it started with.
 */
import type { Pool } from 'undici';
import type { LoadedConfig } from './config/load.js';
import type { Config, FeedbackConfig, UpstreamConfig } from './config/schema.js';
import { credentialSecrets, type CredentialProvider } from './credentials/provider.js';
import type { CredentialRegistry } from './credentials/registry.js';
import { GatewayError } from './errors.js';
import type { PauseRegistry, Pauses } from './limits/pauses.js';
import { UpstreamLimits } from './limits/rules.js';
import type { Intake } from './proxy/intake.js';
import { Router } from './routing/router.js';
import { TenantDirectory } from './tenants/identify.js';
import type { BreakerRegistry, BreakerSet } from './upstream/breaker.js';
import type { PoolRegistry } from './upstream/pools.js';
import { RetryPolicy, type RetryBudget, type RetryBudgets } from './upstream/retry.js';

export interface UpstreamProfile {
  readonly name: string;
  readonly match: UpstreamConfig['match'];
  /** Host header sent upstream: the target's host, with its port when not the default. */
  readonly hostHeader: string;
  /** The target's path without a trailing slash ("" for the root): request paths are appended. */
  readonly basePath: string;
  readonly dispatcher: Pool;
  /** HTTPS_PROXY: terminate the CONNECT's TLS to see each request (false: a blind tunnel). */
  readonly intercept: boolean;
  /** Where a blind tunnel connects: the target's host and port (a CONNECT may name that port besides 443). */
  readonly tunnelTo: { readonly host: string; readonly port: number };
  readonly allowPrivate: boolean;
  readonly connectTimeoutMs: number;
  /** Connections to the upstream at once: the pool's size, and the blind tunnels this instance may hold. */
  readonly connections: number;
  readonly credentials: CredentialProvider | undefined;
  /** Environment variables the credentials need but that are unset: requests get 503. */
  readonly credentialsMissing: readonly string[] | undefined;
  readonly headersTimeoutMs: number;
  readonly bodyIdleTimeoutMs: number;
  readonly maxBodySize: number;
  readonly limits: UpstreamLimits;
  /** The circuit breaker(s) (`breaker:`); undefined without one. */
  readonly breakers: BreakerSet | undefined;
  /** What the upstream's answers may teach (`feedback:`), and the pauses learned so far. */
  readonly feedback: FeedbackConfig;
  readonly pauses: Pauses;
  /** The number of tokens of a `pool` (undefined: no pool). */
  readonly poolSize: number | undefined;
  /** Retries (`retry:`); undefined without them. */
  readonly retry: RetryPolicy | undefined;
}

/** What outlives a policy: connection pools, credential providers, breakers, learned pauses, retry budgets. */
export interface Registries {
  pools: PoolRegistry;
  credentials: CredentialRegistry;
  breakers: BreakerRegistry;
  pauses: PauseRegistry;
  retryBudgets: RetryBudgets;
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

  constructor(loaded: LoadedConfig, registries: Registries) {
    const { config } = loaded;
    this.config = config;
    this.source = loaded.source;
    this.version = loaded.version;
    this.tenants = new TenantDirectory(config.tenants, loaded.tenantsWithoutKey);
    const upstreams = Object.entries(config.upstreams).map(([name, up]) =>
      upstreamProfile(name, up, config, registries, loaded.credentialsMissing.get(name), loaded.upstreamCa.get(name)),
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

  /** The circuit breakers this policy uses (the registry closes the others after a swap). */
  breakerSets(): Set<BreakerSet> {
    return new Set([...this.upstreams.values()].flatMap((u) => (u.breakers ? [u.breakers] : [])));
  }

  /** The pauses this policy's upstreams keep (the registry forgets the others after a swap). */
  pauseSets(): Set<Pauses> {
    return new Set([...this.upstreams.values()].map((u) => u.pauses));
  }

  /** The retry budgets this policy's upstreams count in (the registry forgets the others after a swap). */
  retryBudgets(): Set<RetryBudget> {
    return new Set([...this.upstreams.values()].flatMap((u) => (u.retry ? [u.retry.budget] : [])));
  }

  /** The upstream whose match.hosts take this host ("host" or "host:port", lower case). */
  byHost(host: string): UpstreamProfile | undefined {
    return this.router.byHost(host);
  }

  /** Which upstream, and which path on it; 403 for anything no upstream matches. */
  route(target: Intake): Route {
    if (target.form !== 'base-url') {
      const upstream = this.router.byHost(target.host);
      if (!upstream) throw new GatewayError('destination_not_allowed', `no upstream is configured for host "${target.host}"`);
      // A tunnel opened before a reload that turned interception off ends here.
      if (target.form === 'tunnel' && !upstream.intercept) {
        throw new GatewayError('destination_not_allowed', `upstream "${upstream.name}" is no longer intercepted; open a new tunnel`);
      }
      return { upstream, path: upstream.basePath + target.path, rulePath: withoutQuery(target.path) };
    }
    const match = this.router.byPrefix(target.path);
    if (match) return { upstream: match.upstream, path: match.upstream.basePath + match.rest, rulePath: withoutQuery(match.rest) };
    throw new GatewayError('destination_not_allowed', 'no upstream is configured for this path prefix');
  }
}

/**
 * The upstream a CONNECT to host:port reaches (host as written in the request, IPv6 in brackets);
 * 403 for a host no upstream lists, or a port other than 443 and the target's unless match.hosts
 * names that host:port.
 */
export function routeConnect(policy: Policy, host: string, port: number): UpstreamProfile {
  const authority = `${host}:${port}`;
  const upstream = policy.byHost(authority);
  if (!upstream) throw new GatewayError('destination_not_allowed', `no upstream is configured for host "${host}"`);
  if (port !== 443 && port !== upstream.tunnelTo.port && !upstream.match.hosts.includes(authority)) {
    throw new GatewayError(
      'destination_not_allowed',
      `port ${port} is not open for upstream "${upstream.name}" (443 and the target's port are; list "${authority}" in match.hosts for another)`,
      { upstream: upstream.name },
    );
  }
  return upstream;
}

function upstreamProfile(
  name: string,
  up: UpstreamConfig,
  config: Config,
  registries: Registries,
  credentialsMissing: string[] | undefined,
  ca: string | undefined,
): UpstreamProfile {
  const target = up.target;
  const { pools, credentials, breakers, pauses, retryBudgets } = registries;
  return {
    name,
    match: up.match,
    intercept: up.intercept,
    tunnelTo: { host: target.hostname.replace(/^\[|\]$/g, ''), port: Number(target.port) || (target.protocol === 'https:' ? 443 : 80) },
    allowPrivate: up.allowPrivate,
    connectTimeoutMs: up.timeouts.connect,
    connections: up.connections,
    hostHeader: target.host,
    basePath: target.pathname === '/' ? '' : target.pathname.replace(/\/$/, ''),
    dispatcher: pools.acquire({
      origin: target.origin,
      connectTimeoutMs: up.timeouts.connect,
      connections: up.connections,
      allowPrivate: up.allowPrivate,
      ca,
    }),
    credentials: credentialsMissing || !up.credentials ? undefined : credentials.acquire(name, up.credentials, up.allowPrivate),
    credentialsMissing,
    headersTimeoutMs: up.timeouts.headers,
    bodyIdleTimeoutMs: up.timeouts.bodyIdle,
    maxBodySize: up.maxBodySize ?? config.listen.maxBodySize,
    limits: new UpstreamLimits(name, up, config.store.prefix),
    breakers: up.breaker && breakers.acquire(name, up.breaker, up.credentials),
    feedback: up.feedback,
    pauses: pauses.acquire(name),
    poolSize: up.credentials?.type === 'pool' ? up.credentials.tokens.length : undefined,
    retry: up.retry && new RetryPolicy(up.retry, retryBudgets.acquire(name, up.retry.budget)),
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
