// A fake Zoho OAuth2 world on 127.0.0.1, for ServiceDesk Plus:
//
//   startTokenEndpoint  POST /oauth/v2/token: records each call and issues access tokens that
//                       expire after `lifetimeS`. Zoho's limits, when given: `refreshLimit`
//                       { max, perS, everyS } (Zoho allows about 10 refreshes per 10 minutes per
//                       refresh token); a call past it gets Zoho's "You have made too many requests
//                       continuously" (HTTP 400, "error":"Access Denied"). With `client`, a form
//                       without that client id, secret and refresh token gets Zoho's
//                       {"error":"invalid_client"} (HTTP 200). `mode` makes it fail the ways a real
//                       endpoint does (tests switch it); hold() holds its answers.
//   startServiceDesk    the API: 200 for `Zoho-oauthtoken <token>` with a token the endpoint issued
//                       (`accept`: only the last one, any one not expired, or none), else 401.
//                       `rates` ({ count, windowMs }: routes.yaml's 60/min and 1000/h) answer 429
//                       with Retry-After past them.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { close, listen, readBody, sendJson } from './http.mjs';
import { SlidingWindow } from './limits.mjs';

const THROTTLED = { error_description: 'You have made too many requests continuously. Please try again after some time.', error: 'Access Denied', status: 'failure' };

/** The answer of a call in `mode` (other than 'token'): [status, body]. */
const FAILURES = {
  server_error: [500, { error: 'server_error' }],
  http_429: [429, { error: 'slow_down' }],
  invalid_grant: [400, { error: 'invalid_grant', error_description: 'the refresh token was revoked' }],
  zoho_invalid_code: [200, { error: 'invalid_code' }],
  zoho_throttled: [400, THROTTLED],
};

/** @param {import('./zoho.d.mts').TokenEndpointOptions} [options] */
export async function startTokenEndpoint(options = {}) {
  const { client, refreshLimit, toleranceMs = 50, now = Date.now } = options;
  const budget = refreshLimit && [
    new SlidingWindow({ count: refreshLimit.max, windowMs: refreshLimit.perS * 1000, toleranceMs }),
    ...(refreshLimit.everyS ? [new SlidingWindow({ count: 1, windowMs: refreshLimit.everyS * 1000, toleranceMs })] : []),
  ];
  /** @type {Promise<void> | undefined} */
  let held;
  /** Issued access token → its expiry (epoch ms). */
  const expiries = new Map();
  /** @type {import('./zoho.d.mts').FakeTokenEndpoint} */
  const endpoint = {
    url: '',
    calls: [],
    issued: [],
    mode: 'token',
    lifetimeS: options.lifetimeS ?? 3600,
    delayMs: options.delayMs ?? 0,
    expiresAt: (token) => expiries.get(token),
    hold() {
      let release = () => undefined;
      held = new Promise((resolve) => (release = resolve));
      return () => {
        held = undefined;
        release();
      };
    },
    close: () => close(server),
  };

  /** The answer to a call with `form` in `mode`, counted against the budget when it gets a token. */
  function answer(form, at, mode) {
    if (mode !== 'token') return { outcome: mode, reply: FAILURES[mode] };
    if (client && (form.client_id !== client.clientId || form.client_secret !== client.clientSecret || form.refresh_token !== client.refreshToken)) {
      return { outcome: 'invalid_client', reply: [200, { error: 'invalid_client' }] };
    }
    // Every window must have room; a refused call is counted in none (Zoho counts what it granted).
    if (budget && budget.some((w) => w.waitMs(at) > 0)) return { outcome: 'throttled', reply: [400, THROTTLED] };
    budget?.forEach((w) => w.take(at));
    const token = `1000.${randomBytes(16).toString('hex')}`;
    endpoint.issued.push(token);
    expiries.set(token, now() + endpoint.lifetimeS * 1000);
    return {
      outcome: 'token',
      reply: [200, { access_token: token, scope: 'SDPOnDemand.requests.ALL', api_domain: 'https://www.zohoapis.com', token_type: 'Bearer', expires_in: endpoint.lifetimeS }],
    };
  }

  const server = createServer(async (req, res) => {
    const at = now();
    const form = Object.fromEntries(new URLSearchParams(await readBody(req)));
    /** @type {import('./zoho.d.mts').TokenCall} */
    const call = { at, form, authorization: req.headers.authorization, outcome: 'pending' };
    endpoint.calls.push(call);
    // The mode at arrival decides, as the endpoint's state when the call reached it would.
    const mode = endpoint.mode;
    if (endpoint.delayMs > 0) await new Promise((resolve) => setTimeout(resolve, endpoint.delayMs));
    if (held) await held;
    const { outcome, reply } = answer(form, at, mode);
    call.outcome = outcome;
    sendJson(res, reply[0], reply[1]);
  });
  endpoint.url = `${await listen(server)}/oauth/v2/token`;
  return endpoint;
}

const UNAUTHORIZED = { response_status: { status_code: 4000, status: 'failed', messages: [{ status_code: 401, type: 'failed', message: 'invalid token' }] } };
const TOO_MANY = { response_status: { status_code: 4000, status: 'failed', messages: [{ status_code: 429, type: 'failed', message: 'too many requests' }] } };

/**
 * @param {import('./zoho.d.mts').FakeTokenEndpoint} endpoint
 * @param {import('./zoho.d.mts').ServiceDeskOptions} [options]
 */
export async function startServiceDesk(endpoint, options = {}) {
  const { scheme = 'Zoho-oauthtoken', rates = [], toleranceMs = 50, now = Date.now } = options;
  const windows = rates.map((r) => new SlidingWindow({ count: r.count, windowMs: r.windowMs, toleranceMs }));
  /** @type {import('./zoho.d.mts').FakeServiceDesk} */
  const api = {
    url: '',
    arrivals: [],
    accept: options.accept ?? 'current',
    stats: { accepted: 0, unauthorized: 0, limited: 0 },
    close: () => close(server),
  };
  const server = createServer((req, res) => {
    const at = now();
    const authorization = req.headers.authorization;
    const token = authorization?.startsWith(`${scheme} `) ? authorization.slice(scheme.length + 1) : undefined;
    const accepted =
      token !== undefined &&
      (api.accept === 'current' ? token === endpoint.issued.at(-1) : api.accept === 'unexpired' && (endpoint.expiresAt(token) ?? 0) > at);
    const arrival = { at, method: req.method ?? 'GET', path: req.url ?? '/', authorization, accepted, status: 401 };
    api.arrivals.push(arrival);
    req.resume();
    if (!accepted) {
      api.stats.unauthorized++;
      return sendJson(res, 401, UNAUTHORIZED);
    }
    const full = windows.find((w) => w.waitMs(at) > 0);
    if (full) {
      arrival.status = 429;
      api.stats.limited++;
      return sendJson(res, 429, TOO_MANY, { 'retry-after': String(Math.max(1, Math.ceil(full.waitMs(at) / 1000))) });
    }
    windows.forEach((w) => w.take(at));
    arrival.status = 200;
    api.stats.accepted++;
    sendJson(res, 200, { response_status: { status_code: 2000, status: 'success' }, path: req.url, requests: [] });
  });
  api.url = await listen(server);
  return api;
}
