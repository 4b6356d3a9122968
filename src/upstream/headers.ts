/**
 * Header rewriting between client and upstream (RFC 9110 7.6.1): hop-by-hop headers, and the
 * headers the Connection header names, apply to one connection only and are never forwarded.
 * Our own headers (Proxy-Authorization, X-Sluice-*) stop here too. The request side works on
 * `rawHeaders` so that duplicates and the client's spelling survive.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Request headers that the gateway replaces or answers itself (Node already sent 100 Continue). */
const REPLACED_ON_REQUEST = new Set(['host', 'expect', 'via', 'x-forwarded-for']);

const VIA = '1.1 sluice';

function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (value === undefined) return undefined;
  const text = Array.isArray(value) ? value.join(',') : value;
  const tokens = new Set<string>();
  for (const token of text.split(',')) {
    const t = token.trim().toLowerCase();
    if (t !== '' && t !== 'close' && t !== 'keep-alive') tokens.add(t);
  }
  return tokens.size > 0 ? tokens : undefined;
}

export interface UpstreamRequestHeaders {
  /** Host header for the target. */
  host: string;
  /** The client's address, appended to X-Forwarded-For. */
  clientIp: string | undefined;
  /** The injected credential; the client's own header of that name is dropped. */
  credential?: { header: string; value: string } | undefined;
  /** An Idempotency-Key the gateway adds (retry.idempotencyKey: generate; the client sent none). */
  idempotencyKey?: string | undefined;
}

/** The headers to send upstream, as a flat [name, value, name, value, ...] list for undici. */
export function upstreamRequestHeaders(
  rawHeaders: readonly string[],
  parsed: IncomingHttpHeaders,
  extra: UpstreamRequestHeaders,
): string[] {
  const named = connectionTokens(parsed.connection);
  const out: string[] = ['host', extra.host];
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    const lower = name.toLowerCase();
    if (HOP_BY_HOP.has(lower) || REPLACED_ON_REQUEST.has(lower) || lower.startsWith('x-sluice-')) continue;
    if (named?.has(lower) || lower === extra.credential?.header) continue;
    out.push(name, rawHeaders[i + 1]!);
  }
  if (extra.credential) out.push(extra.credential.header, extra.credential.value);
  if (extra.idempotencyKey !== undefined) out.push('idempotency-key', extra.idempotencyKey);
  const forwardedFor = joined(parsed['x-forwarded-for']);
  if (extra.clientIp !== undefined) {
    out.push('x-forwarded-for', forwardedFor ? `${forwardedFor}, ${extra.clientIp}` : extra.clientIp);
  } else if (forwardedFor) {
    out.push('x-forwarded-for', forwardedFor);
  }
  out.push('via', withVia(parsed.via));
  return out;
}

/** Appends our Via entry to whatever the message already carried. */
function withVia(existing: string | string[] | undefined): string {
  const via = joined(existing);
  return via ? `${via}, ${VIA}` : VIA;
}

function joined(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value.join(', ') : value;
}

/** The upstream's response headers as the client gets them. */
export function clientResponseHeaders(headers: Record<string, string | string[] | undefined>): OutgoingHttpHeaders {
  const named = connectionTokens(headers.connection);
  const out: OutgoingHttpHeaders = {};
  for (const name in headers) {
    if (HOP_BY_HOP.has(name) || named?.has(name)) continue;
    const value = headers[name];
    if (value !== undefined) out[name] = value;
  }
  out.via = withVia(headers.via);
  return out;
}
