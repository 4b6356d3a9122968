// A fake Twilio REST API on 127.0.0.1 that enforces Twilio's limits the way Twilio answers them:
//
//   - credentials: `Authorization: Basic base64(AccountSid:AuthToken)`, else 401 with Twilio's
//     error 20003 (so a request that did not get the gateway's credentials is seen and counted);
//   - concurrency: more than `concurrency` requests in flight at once (the whole account) gets
//     429 with code 20429 and `Retry-After: 1`;
//   - per-second limits: each entry of `rates` (a method and a path pattern, N per second with
//     bursts of B: routes.yaml's `calls` 1/s and `messages` 1/s burst 5) gets 429 code 20429 with
//     `Retry-After` = the seconds until a request would fit, rounded up.
//
// Answers: POST 201 with a resource (`sid`, `status: queued`), anything else 200 with its `uri`,
// after `latencyMs`. Every arrival is recorded (`arrivals`), and counted in `stats`.
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { close, listen, sendJson } from './http.mjs';
import { LeakyBucket } from './limits.mjs';

/** routes.yaml's Twilio rules, as the fake enforces them by default. */
export const TWILIO_RATES = [
  { name: 'calls', method: 'POST', path: /^\/2010-04-01\/Accounts\/[^/]+\/Calls\.json$/, perSecond: 1, burst: 1 },
  { name: 'messages', method: 'POST', path: /^\/2010-04-01\/Accounts\/[^/]+\/Messages\.json$/, perSecond: 1, burst: 5 },
];

const TOO_MANY = { code: 20429, message: 'Too Many Requests', more_info: 'https://www.twilio.com/docs/errors/20429', status: 429 };
const AUTHENTICATE = {
  code: 20003,
  detail: 'Your AccountSid or AuthToken was incorrect.',
  message: 'Authenticate',
  more_info: 'https://www.twilio.com/docs/errors/20003',
  status: 401,
};

/** @param {import('./twilio.d.mts').TwilioOptions} options */
export async function startTwilio(options) {
  const { accountSid, authToken, concurrency = 100, rates = TWILIO_RATES, latencyMs = 0, toleranceMs = 50, now = Date.now } = options;
  const expected = `Basic ${Buffer.from(`${accountSid}:${authToken}`).toString('base64')}`;
  const buckets = rates.map((rate) => ({ rate, bucket: new LeakyBucket({ perSecond: rate.perSecond, burst: rate.burst ?? 1, toleranceMs }) }));
  let inFlight = 0;
  const timers = new Set();
  /** @type {import('./twilio.d.mts').FakeTwilio} */
  const twilio = {
    url: '',
    arrivals: [],
    stats: { accepted: 0, unauthorized: 0, limited: 0 },
    inFlightMax: 0,
    close: async () => {
      for (const t of timers) clearTimeout(t);
      await close(server);
    },
  };

  const server = createServer((req, res) => {
    const at = now();
    const method = req.method ?? 'GET';
    const path = (req.url ?? '/').split('?')[0];
    const arrival = { at, method, path, authorization: req.headers.authorization, status: 0, limit: undefined };
    twilio.arrivals.push(arrival);
    req.resume();
    const answer = (status, body, headers) => {
      arrival.status = status;
      if (status === 401) twilio.stats.unauthorized++;
      else if (status === 429) twilio.stats.limited++;
      else twilio.stats.accepted++;
      sendJson(res, status, body, headers);
    };
    if (req.headers.authorization !== expected) return answer(401, AUTHENTICATE);
    if (inFlight >= concurrency) {
      arrival.limit = 'concurrency';
      return answer(429, TOO_MANY, { 'retry-after': '1' });
    }
    for (const { rate, bucket } of buckets) {
      if (rate.method !== method || !rate.path.test(path)) continue;
      if (!bucket.take(at)) {
        arrival.limit = rate.name;
        return answer(429, TOO_MANY, { 'retry-after': String(Math.max(1, Math.ceil(bucket.waitMs(at) / 1000))) });
      }
    }
    inFlight++;
    twilio.inFlightMax = Math.max(twilio.inFlightMax, inFlight);
    const timer = setTimeout(() => {
      timers.delete(timer);
      inFlight--;
      if (method === 'POST') answer(201, { sid: `${path.endsWith('/Calls.json') ? 'CA' : 'SM'}${randomBytes(16).toString('hex')}`, account_sid: accountSid, status: 'queued', uri: path });
      else answer(200, { uri: path });
    }, latencyMs);
    timers.add(timer);
  });
  twilio.url = await listen(server);
  return twilio;
}
