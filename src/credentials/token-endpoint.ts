/**
 * One call to an OAuth2 token endpoint (RFC 6749 §6 refresh_token, §4.4 client_credentials), and
 * what its answer means for the refresher: a token, a block, a dead grant, or a failure worth
 * retrying. Zoho's quirks are named here: it answers errors with HTTP 200, says "invalid_code" for
 * a revoked refresh token, and "Access Denied / too many requests" when it blocks a client.
 * Nothing the endpoint sends is logged or shown as is: only status codes and error codes.
 * The call passes the same egress check as the upstream's own traffic (upstream/egress.ts): a
 * token URL that resolves to a private address is refused unless the upstream sets allowPrivate.
 */
import { Agent, request } from 'undici';
import type { CredentialsConfig } from '../config/schema.js';
import { asEgressRefusal, guardedLookup } from '../upstream/egress.js';

export type OAuth2Config = Extract<CredentialsConfig, { type: 'oauth2' }>;

export type TokenReply =
  | { kind: 'token'; accessToken: string; expiresInMs: number }
  /** The endpoint refuses refreshes for a while (Zoho: "You have made too many requests continuously"). */
  | { kind: 'throttled'; detail: string }
  /** The grant is dead (revoked refresh token, wrong client): only a config change helps. */
  | { kind: 'revoked'; error: string }
  | { kind: 'failed'; detail: string; retryAfterMs: number | undefined };

/** Errors after which asking again cannot help (RFC 6749 §5.2; invalid_code is Zoho's invalid_grant). */
const DEAD_GRANT = new Set(['invalid_grant', 'invalid_client', 'unauthorized_client', 'invalid_code', 'unsupported_grant_type']);
/** A token endpoint's answer is small; a bigger one is not a token answer. */
const MAX_REPLY_BYTES = 64 * 1024;
/** When the reply gives no expires_in (RFC 6749 makes it optional), the token is taken for an hour. */
export const DEFAULT_TOKEN_LIFETIME_MS = 3_600_000;
/** A longer lifetime is taken for a day: a wrong unit must not stop refreshing for weeks. */
const MAX_TOKEN_LIFETIME_MS = 24 * 3_600_000;
/** A token goes into a header: anything but visible ASCII could split it. */
const TOKEN_SHAPE = /^[\x21-\x7e]{1,8192}$/;

/** One agent per egress policy, for every token endpoint: refreshes are rare, so one pool each is plenty. */
const agents = new Map<boolean, Agent>();
function agentFor(allowPrivate: boolean): Agent {
  let agent = agents.get(allowPrivate);
  if (!agent) {
    agent = new Agent({ connect: { lookup: guardedLookup(allowPrivate) } });
    agents.set(allowPrivate, agent);
  }
  return agent;
}

export async function requestToken(config: OAuth2Config, allowPrivate: boolean): Promise<TokenReply> {
  const form = new URLSearchParams({ grant_type: config.grant });
  if (config.grant === 'refresh_token') form.set('refresh_token', config.refreshToken ?? '');
  if (config.scope !== undefined) form.set('scope', config.scope);
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  if (config.clientAuth === 'basic') {
    const pair = `${encodeURIComponent(config.clientId)}:${encodeURIComponent(config.clientSecret)}`;
    headers.authorization = `Basic ${Buffer.from(pair).toString('base64')}`;
  } else {
    form.set('client_id', config.clientId);
    form.set('client_secret', config.clientSecret);
  }
  let status: number;
  let text: string;
  let retryAfter: string | string[] | undefined;
  try {
    const response = await request(config.tokenUrl, {
      dispatcher: agentFor(allowPrivate),
      method: 'POST',
      headers,
      body: form.toString(),
      headersTimeout: config.timeout,
      bodyTimeout: config.timeout,
      signal: AbortSignal.timeout(config.timeout),
    });
    status = response.statusCode;
    retryAfter = response.headers['retry-after'];
    text = await readLimited(response.body);
  } catch (err) {
    return { kind: 'failed', detail: failureOf(err), retryAfterMs: undefined };
  }
  return interpret(status, text, retryAfter);
}

export function interpret(status: number, text: string, retryAfter?: string | string[]): TokenReply {
  const reply = parseObject(text);
  const error = typeof reply?.error === 'string' ? reply.error : undefined;
  const description = typeof reply?.error_description === 'string' ? reply.error_description : '';
  if (error === 'Access Denied' && /too many requests/i.test(description)) {
    return { kind: 'throttled', detail: `HTTP ${status}, "too many requests"` };
  }
  if (error !== undefined && DEAD_GRANT.has(error)) return { kind: 'revoked', error };
  if (status === 200 && reply && error === undefined) {
    const token = reply.access_token;
    if (typeof token !== 'string' || !TOKEN_SHAPE.test(token)) {
      return { kind: 'failed', detail: 'HTTP 200 without a usable access_token', retryAfterMs: undefined };
    }
    // Zoho's older replies carry expires_in_sec in seconds beside an expires_in in milliseconds.
    const seconds = Number(reply.expires_in_sec ?? reply.expires_in);
    const expiresInMs = Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_TOKEN_LIFETIME_MS) : DEFAULT_TOKEN_LIFETIME_MS;
    return { kind: 'token', accessToken: token, expiresInMs };
  }
  const code = error !== undefined && /^[A-Za-z0-9_ .-]{1,64}$/.test(error) ? `, error "${error}"` : '';
  return { kind: 'failed', detail: `HTTP ${status}${code}`, retryAfterMs: retryAfterMsOf(retryAfter) };
}

function parseObject(text: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(text);
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

async function readLimited(body: AsyncIterable<Buffer> & { destroy(): unknown }): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += chunk.length;
    if (size > MAX_REPLY_BYTES) {
      body.destroy();
      throw new Error(`reply larger than ${MAX_REPLY_BYTES} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function retryAfterMsOf(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds) && seconds >= 0) return seconds * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - Date.now());
}

/** A transport failure in words that carry no URL, header or body: the error's code only. */
function failureOf(err: unknown): string {
  const refused = asEgressRefusal(err);
  if (refused) return `egress refused: ${refused.message}`;
  if (err instanceof Error) {
    if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'no answer in time';
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') return code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT' ? 'no answer in time' : code;
    if (err.message.startsWith('reply larger')) return err.message;
  }
  return 'connection failed';
}
