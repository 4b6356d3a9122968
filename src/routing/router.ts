/**
 * Host and prefix to upstream. Deny by default: anything not listed in an upstream's `match`
 * finds nothing, and the pipeline answers 403 — the gateway is never an open relay.
 * Built once per config; lookups are a map hit (exact host), a short suffix scan (`*.host`
 * wildcards) or a short prefix scan (longest prefix first).
 */
export interface Matchable {
  readonly name: string;
  readonly match: { readonly hosts: readonly string[]; readonly prefix?: string | undefined };
}

export interface PrefixMatch<T> {
  upstream: T;
  /** What follows the prefix, starting with "/" (or "/?query", or "/" when nothing follows). */
  rest: string;
}

export class Router<T extends Matchable> {
  private readonly exactHosts = new Map<string, T>();
  private readonly wildcardHosts: { suffix: string; upstream: T }[] = [];
  private readonly prefixes: { prefix: string; upstream: T }[] = [];

  constructor(upstreams: readonly T[]) {
    for (const upstream of upstreams) {
      for (const host of upstream.match.hosts) {
        if (host.startsWith('*.')) this.wildcardHosts.push({ suffix: host.slice(1), upstream });
        else this.exactHosts.set(host, upstream);
      }
      if (upstream.match.prefix !== undefined) this.prefixes.push({ prefix: upstream.match.prefix, upstream });
    }
    this.wildcardHosts.sort((a, b) => b.suffix.length - a.suffix.length);
    this.prefixes.sort((a, b) => b.prefix.length - a.prefix.length);
  }

  /** `host` is lower case, with ":port" when the request named one. */
  byHost(host: string): T | undefined {
    const exact = this.exactHosts.get(host);
    if (exact) return exact;
    const colon = host.lastIndexOf(':');
    const bare = colon > host.lastIndexOf(']') ? host.slice(0, colon) : host;
    const byName = bare === host ? undefined : this.exactHosts.get(bare);
    if (byName) return byName;
    for (const { suffix, upstream } of this.wildcardHosts) {
      if (bare.endsWith(suffix) && bare.length > suffix.length) return upstream;
    }
    return undefined;
  }

  /** `path` is the request target of a base-URL request, e.g. "/twilio/2010-04-01/x?y=1". */
  byPrefix(path: string): PrefixMatch<T> | undefined {
    for (const { prefix, upstream } of this.prefixes) {
      if (!path.startsWith(prefix)) continue;
      const next = path.charCodeAt(prefix.length);
      if (Number.isNaN(next)) return { upstream, rest: '/' };
      if (next === 0x2f /* / */) return { upstream, rest: path.slice(prefix.length) };
      if (next === 0x3f /* ? */) return { upstream, rest: `/${path.slice(prefix.length)}` };
    }
    return undefined;
  }
}
