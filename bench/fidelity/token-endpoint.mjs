// The token scenario's fake Zoho, a child process of token.mjs (fork, with IPC), so that its clock
// is not delayed by the load the driver generates. Two servers on 127.0.0.1:
//
//   token endpoint  POST /oauth/v2/token: records each call (arrival and answer time, high-
//                   resolution epoch ms), waits DELAY_MS, then issues a fresh access token with
//                   expires_in LIFETIME_S (Zoho's answer shape). A form without the expected
//                   grant_type, refresh_token, client_id and client_secret gets Zoho's
//                   {"error":"invalid_client"} with HTTP 200 (and is counted as malformed).
//   upstream API    anything: 200 for `Authorization: Zoho-oauthtoken <token>` with a token the
//                   endpoint issued that has not expired (by this process's clock, from the moment
//                   it was answered); 401 otherwise, and 401 to everything during a storm.
//
// Argument: a JSON object {lifetimeS, delayMs, refreshToken, clientId, clientSecret}.
// IPC messages from the parent: {id, cmd: 'now' | 'storms' | 'dump', storms?: [[from, to], ...]}
// (storm windows on this process's clock); each is answered with {id, now, ...}.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';

const nowMs = () => performance.timeOrigin + performance.now();
const opts = JSON.parse(process.argv[2] ?? '{}');
const LIFETIME_MS = opts.lifetimeS * 1000;
const DELAY_MS = opts.delayMs;
const SCHEME = 'Zoho-oauthtoken ';

/** Token-endpoint calls: [arrivedAt, answeredAt (-1 until answered), malformed]. */
const calls = [];
/** Issued access tokens: value → expiry (this clock). */
const expiries = new Map();
let storms = [];
const api = { accepted: 0, stormRejected: 0, expired: 0, unknown: 0, missing: 0 };
/** Rejections outside storms, for the report: [at, reason]; at most 1,000 kept. */
const offStorm = [];
const timers = new Set();

const inStorm = (t) => storms.some(([from, to]) => t >= from && t < to);

const endpoint = createServer((req, res) => {
  const call = [nowMs(), -1, false];
  calls.push(call);
  let body = '';
  req.on('data', (d) => (body += d));
  req.on('end', () => {
    const form = new URLSearchParams(body);
    const ok =
      req.method === 'POST' &&
      form.get('grant_type') === 'refresh_token' &&
      form.get('refresh_token') === opts.refreshToken &&
      form.get('client_id') === opts.clientId &&
      form.get('client_secret') === opts.clientSecret;
    call[2] = !ok;
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (res.destroyed) return;
      let reply;
      if (ok) {
        const token = `1000.${randomBytes(16).toString('hex')}`;
        expiries.set(token, nowMs() + LIFETIME_MS);
        reply = { access_token: token, scope: 'SDPOnDemand.requests.ALL', api_domain: 'https://www.zohoapis.com', token_type: 'Bearer', expires_in: opts.lifetimeS };
      } else reply = { error: 'invalid_client' };
      call[1] = nowMs();
      const text = JSON.stringify(reply);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    }, DELAY_MS);
    timers.add(timer);
  });
});

const upstream = createServer((req, res) => {
  const at = nowMs();
  req.resume();
  const auth = req.headers.authorization;
  const token = typeof auth === 'string' && auth.startsWith(SCHEME) ? auth.slice(SCHEME.length) : undefined;
  const expiry = token === undefined ? undefined : expiries.get(token);
  let reason;
  if (inStorm(at)) reason = 'storm';
  else if (token === undefined) reason = 'missing';
  else if (expiry === undefined) reason = 'unknown';
  else if (expiry <= at) reason = 'expired';
  if (reason === undefined) {
    api.accepted++;
    const text = '{"response_status":{"status_code":2000,"status":"success"},"requests":[]}';
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': text.length });
    return res.end(text);
  }
  if (reason === 'storm') api.stormRejected++;
  else {
    api[reason]++;
    if (offStorm.length < 1000) offStorm.push([at, reason]);
  }
  const text = '{"response_status":{"status_code":4000,"status":"failed","messages":[{"status_code":401,"message":"invalid oauth token"}]}}';
  res.writeHead(401, { 'content-type': 'application/json', 'content-length': text.length });
  res.end(text);
});
// The gateways' keep-alive pools must not race the server closing idle connections mid-run.
for (const s of [endpoint, upstream]) {
  s.keepAliveTimeout = 120_000;
  s.headersTimeout = 125_000;
}

process.on('message', (msg) => {
  const reply = { id: msg.id, now: nowMs() };
  if (msg.cmd === 'storms') storms = msg.storms;
  else if (msg.cmd === 'dump') {
    reply.calls = calls;
    reply.api = api;
    reply.offStorm = offStorm;
  }
  process.send(reply);
});
const quit = () => {
  for (const t of timers) clearTimeout(t);
  process.exit(0);
};
process.on('disconnect', quit);
process.on('SIGTERM', quit);

let listening = 0;
const ports = {};
for (const [name, s] of [['tokenPort', endpoint], ['apiPort', upstream]]) {
  s.listen(0, '127.0.0.1', () => {
    ports[name] = s.address().port;
    if (++listening === 2) process.send({ listening: ports });
  });
}
