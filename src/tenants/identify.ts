/**
 * Which tenant is this? `Proxy-Authorization: Basic base64(tenant:key)` or `X-Sluice-Key:
 * tenant:key`. Keys are compared as SHA-256 digests with timingSafeEqual, so neither the key's
 * length nor its first wrong byte shows in the response time; an unknown tenant is compared
 * against a dummy digest for the same reason.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { GatewayError } from '../errors.js';
import type { Config } from '../config/schema.js';

export interface Tenant {
  name: string;
  weight: number;
}

/**
 * How the request reached us decides how a failed identification is answered (RFC 9110 11.7):
 * a base-URL request is the origin's business (401), a proxy-form or tunnelled one the proxy's (407).
 */
export type RequestForm = 'proxy' | 'base-url' | 'tunnel';

const PROXY_CHALLENGE = { 'proxy-authenticate': 'Basic realm="sluice"' };
const ORIGIN_CHALLENGE = { 'www-authenticate': 'Basic realm="sluice"' };
const DUMMY_DIGEST = digest('sluice: no such tenant');
const VERIFIED_CACHE_SIZE = 10_000;

function digest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

interface KnownTenant extends Tenant {
  keyDigest: Buffer | undefined;
}

export class TenantDirectory {
  private readonly tenants: Map<string, KnownTenant> | undefined;
  /**
   * Header values already verified, so that a keep-alive client costs a map hit instead of a
   * SHA-256 per request. Only exact, once-valid values hit; anything else takes the
   * constant-time path. Lives as long as this config: a reload starts a new directory.
   */
  private readonly verified = new Map<string, Tenant>();
  /** With no tenants: section, every request is this tenant (allowed only on loopback). */
  private static readonly DEFAULT: Tenant = { name: 'default', weight: 1 };

  constructor(tenants: Config['tenants'], withoutKey: ReadonlySet<string> = new Set()) {
    if (tenants === undefined) return;
    this.tenants = new Map(
      Object.entries(tenants).map(([name, t]) => [
        name,
        { name, weight: t.weight, keyDigest: withoutKey.has(name) || t.key === '' ? undefined : digest(t.key) },
      ]),
    );
  }

  /** The tenant the request authenticates as; throws 407 (proxy form) or 401 (base URL) otherwise. */
  identify(headers: IncomingHttpHeaders, form: RequestForm): Tenant {
    if (this.tenants === undefined) return TenantDirectory.DEFAULT;
    const presented = headers['proxy-authorization'] ?? headers['x-sluice-key'];
    const known = typeof presented === 'string' ? this.verified.get(presented) : undefined;
    if (known) return known;
    const credentials = credentialsOf(headers);
    if (credentials === undefined) throw refusal(form, 'this gateway needs a tenant key');
    const tenant = this.tenants.get(credentials.tenant);
    const matches = timingSafeEqual(tenant?.keyDigest ?? DUMMY_DIGEST, digest(credentials.key));
    if (!tenant || !tenant.keyDigest || !matches) throw refusal(form, 'the tenant key is not valid');
    if (this.verified.size >= VERIFIED_CACHE_SIZE) this.verified.clear();
    this.verified.set(presented as string, tenant);
    return tenant;
  }
}

function refusal(form: RequestForm, reason: string): GatewayError {
  const how = 'send Proxy-Authorization: Basic base64(tenant:key) or X-Sluice-Key: tenant:key';
  return form === 'base-url'
    ? new GatewayError('unauthorized', `${reason}; ${how}`, { headers: ORIGIN_CHALLENGE })
    : new GatewayError('proxy_auth_required', `${reason}; ${how}`, { headers: PROXY_CHALLENGE });
}

function credentialsOf(headers: IncomingHttpHeaders): { tenant: string; key: string } | undefined {
  const proxyAuth = headers['proxy-authorization'];
  if (proxyAuth !== undefined) {
    const m = /^\s*basic\s+([A-Za-z0-9+/=_-]+)\s*$/i.exec(proxyAuth);
    return m ? split(Buffer.from(m[1]!, 'base64').toString('utf8')) : undefined;
  }
  const sluiceKey = headers['x-sluice-key'];
  return typeof sluiceKey === 'string' ? split(sluiceKey.trim()) : undefined;
}

function split(pair: string): { tenant: string; key: string } | undefined {
  const colon = pair.indexOf(':');
  if (colon <= 0) return undefined;
  return { tenant: pair.slice(0, colon), key: pair.slice(colon + 1) };
}
