/**
 * A fake OAuth2 world on 127.0.0.1: a token endpoint that counts its calls and issues short-lived
 * tokens (or fails, answers slowly, holds its answers, says invalid_grant or Zoho's "too many
 * requests"), and an upstream API that accepts only the token the endpoint issued last (or, in
 * `unexpired` mode, any it issued that has not expired), answering 401 otherwise.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** How the endpoint answers: a token, or one of the failures a real one has. */
export type EndpointMode = 'token' | 'server_error' | 'invalid_grant' | 'zoho_invalid_code' | 'zoho_throttled' | 'http_429';

export interface TokenCall {
  at: number;
  /** The form it received, with secrets as sent (tests check them). */
  form: Record<string, string>;
  authorization: string | undefined;
}

export interface FakeTokenEndpoint {
  url: string;
  calls: TokenCall[];
  /** Every access token issued, oldest first. */
  issued: string[];
  mode: EndpointMode;
  /** expires_in of the tokens it issues, seconds. */
  lifetimeS: number;
  /** Each answer waits this long. */
  delayMs: number;
  /** Answers wait until released (each call to hold() returns its release). */
  hold(): () => void;
  close(): Promise<void>;
}

export async function startTokenEndpoint(options: { lifetimeS?: number; delayMs?: number } = {}): Promise<FakeTokenEndpoint> {
  let held: Promise<void> | undefined;
  const expiries = new Map<string, number>();
  const endpoint: FakeTokenEndpoint = {
    url: '',
    calls: [],
    issued: [],
    mode: 'token',
    lifetimeS: options.lifetimeS ?? 3600,
    delayMs: options.delayMs ?? 0,
    hold() {
      let release!: () => void;
      held = new Promise<void>((resolve) => (release = resolve));
      return () => {
        held = undefined;
        release();
      };
    },
    close: () => close(server),
  };
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', async () => {
      endpoint.calls.push({ at: Date.now(), form: Object.fromEntries(new URLSearchParams(body)), authorization: req.headers.authorization });
      const mode = endpoint.mode;
      if (endpoint.delayMs > 0) await new Promise((r) => setTimeout(r, endpoint.delayMs));
      if (held) await held;
      const [status, reply] = answer(mode, endpoint, expiries);
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(reply));
    });
  });
  endpoint.url = `${await listen(server)}/oauth/v2/token`;
  tokenExpiries.set(endpoint, expiries);
  return endpoint;
}

const tokenExpiries = new WeakMap<FakeTokenEndpoint, Map<string, number>>();

function answer(mode: EndpointMode, endpoint: FakeTokenEndpoint, expiries: Map<string, number>): [number, unknown] {
  switch (mode) {
    case 'token': {
      const token = `at-${randomBytes(12).toString('hex')}`;
      endpoint.issued.push(token);
      expiries.set(token, Date.now() + endpoint.lifetimeS * 1000);
      return [200, { access_token: token, expires_in: endpoint.lifetimeS, token_type: 'Bearer', api_domain: 'https://www.zohoapis.com' }];
    }
    case 'server_error':
      return [500, { error: 'server_error' }];
    case 'http_429':
      return [429, { error: 'slow_down' }];
    case 'invalid_grant':
      return [400, { error: 'invalid_grant', error_description: 'the refresh token was revoked' }];
    case 'zoho_invalid_code':
      return [200, { error: 'invalid_code' }];
    case 'zoho_throttled':
      return [400, { error_description: 'You have made too many requests continuously. Please try again after some time.', error: 'Access Denied', status: 'failure' }];
  }
}

export interface TokenCheckingUpstream {
  url: string;
  /** Authorization headers that arrived, and whether each was accepted. */
  arrivals: { authorization: string | undefined; accepted: boolean; at: number }[];
  /** current: only the last token issued; unexpired: any issued token not yet expired; none: 401 to all. */
  accept: 'current' | 'unexpired' | 'none';
  close(): Promise<void>;
}

/** An API that wants `<scheme> <token>` (scheme as in the gateway's `format`) with a token of `endpoint`. */
export async function startTokenCheckingUpstream(endpoint: FakeTokenEndpoint, scheme = 'Zoho-oauthtoken'): Promise<TokenCheckingUpstream> {
  const upstream: TokenCheckingUpstream = { url: '', arrivals: [], accept: 'current', close: () => close(server) };
  const expiries = tokenExpiries.get(endpoint)!;
  const server = createServer((req, res) => {
    const authorization = req.headers.authorization;
    const token = authorization?.startsWith(`${scheme} `) ? authorization.slice(scheme.length + 1) : undefined;
    const accepted =
      token !== undefined &&
      (upstream.accept === 'current'
        ? token === endpoint.issued.at(-1)
        : upstream.accept === 'unexpired' && (expiries.get(token) ?? 0) > Date.now());
    upstream.arrivals.push({ authorization, accepted, at: Date.now() });
    req.resume();
    res.writeHead(accepted ? 200 : 401, { 'content-type': 'application/json' });
    res.end(JSON.stringify(accepted ? { ok: true, path: req.url } : { response_status: { status_code: 4000, status: 'failed', messages: ['invalid token'] } }));
  });
  upstream.url = await listen(server);
  return upstream;
}

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

export const ZOHO_CLIENT_SECRET = 'zoho-client-secret-6f1d2c';
export const ZOHO_REFRESH_TOKEN = '1000.refresh-token-9a8b7c6d5e';

/**
 * routes.yaml lines of an upstream `sdp` (prefix /sdp) in front of `api`, with OAuth2 credentials
 * from `endpoint` as ServiceDesk Plus has them from Zoho; `more` adds lines to the credentials block.
 */
export function sdpUpstream(endpoint: FakeTokenEndpoint, api: TokenCheckingUpstream, more = ''): string {
  return `
  sdp:
    match: { prefix: /sdp }
    target: "${api.url}"
    allowPrivate: true
    credentials:
      type: oauth2
      grant: refresh_token
      tokenUrl: "${endpoint.url}"
      clientId: zoho-client-id
      clientSecret: ${ZOHO_CLIENT_SECRET}
      refreshToken: ${ZOHO_REFRESH_TOKEN}
      format: "Zoho-oauthtoken {token}"
${more}`;
}
