// The demo's tenants: open-loop load generators that send requests at a fixed rate whatever the
// answers (as independent services would), a bit above what the upstreams allow, send a refused
// request again when its Retry-After says, and count what each request got in the end. acme goes through the gateway as HTTP_PROXY (absolute-form requests to the real
// API hosts), globex by base URL (/twilio/..., X-Sluice-Key); both send made-up credentials of
// their own, which the gateway must replace (the fakes answer 401 to anything but theirs).
import { setTimeout as sleep } from 'node:timers/promises';
import { ProxyAgent, request } from 'undici';

/**
 * What each tenant asks of each upstream, per second: about 1.5 times what routes.yaml allows
 * (Twilio messages 1/s with bursts of 5, BaseLinker 2 tokens x 100/min, ServiceDesk Plus 60/min
 * with bursts of 1, and 950/h with bursts of 50).
 */
export const PLAN = [
  { tenant: 'acme', upstream: 'twilio', perSecond: 1 },
  { tenant: 'globex', upstream: 'twilio', perSecond: 0.5 },
  { tenant: 'acme', upstream: 'baselinker', perSecond: 2.5 },
  { tenant: 'globex', upstream: 'baselinker', perSecond: 2 },
  { tenant: 'acme', upstream: 'servicedesk', perSecond: 0.5 },
  { tenant: 'globex', upstream: 'servicedesk', perSecond: 0.25 },
];

/** Requests a generator keeps in flight at most; past it a tick is skipped (counted). */
const MAX_IN_FLIGHT = 20;
/**
 * The clients are well-behaved: a request refused for a limit is sent again when its Retry-After
 * says (the gateway's fair share is promised to such clients), for up to this long, then dropped.
 */
export const PATIENCE_MS = 10_000;
const RETRYABLE = new Set(['rate_limited', 'concurrency_limited', 'queue_full', 'upstream_paused', 'upstream_limited']);

/** The API call each upstream gets: host and prefix as routes.yaml routes them. */
function apiCall(upstream, accountSid) {
  switch (upstream) {
    case 'twilio':
      return {
        host: 'api.twilio.com',
        prefix: '/twilio',
        path: `/2010-04-01/Accounts/${accountSid}/Messages.json`,
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: 'Basic Y2xpZW50OmhhcyBubyBzZWNyZXQ=' },
        body: 'To=%2B15005550006&From=%2B15005550001&Body=Your+order+has+shipped',
      };
    case 'baselinker':
      return {
        host: 'api.baselinker.com',
        prefix: '/baselinker',
        path: '/connector.php',
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-bltoken': 'client-has-no-token' },
        body: 'method=getOrders&parameters=%7B%22status_id%22%3A1%7D',
      };
    case 'servicedesk':
      return {
        host: 'sdpondemand.manageengine.com',
        prefix: '/sdp',
        path: '/api/v3/requests',
        method: 'GET',
        headers: { accept: 'application/vnd.manageengine.sdp.v3+json', authorization: 'Zoho-oauthtoken client-has-no-token' },
        body: undefined,
      };
    default:
      throw new Error(`no API call for upstream ${upstream}`);
  }
}

/**
 * What an attempt got, as its client can tell: `forwarded` (2xx), the upstream's own limit answer
 * passed on (`upstream_limited`: the gateway marks it), the gateway's refusal code (its JSON
 * `error`), or `upstream_<status>` for another upstream answer; and when to ask again, if it says.
 * @returns {{ outcome: string, retryAfterMs: number | undefined }}
 */
export function answerOf(status, headers, text) {
  const header = Number(headers['retry-after']);
  let retryAfterMs = Number.isFinite(header) ? header * 1000 : undefined;
  if (headers['x-sluice-upstream-limited'] === 'true') return { outcome: 'upstream_limited', retryAfterMs };
  if (status >= 200 && status < 300) return { outcome: 'forwarded', retryAfterMs: undefined };
  try {
    const body = JSON.parse(text);
    // The gateway's refusals say exactly when (retryAfterMs); Retry-After is rounded up to seconds.
    if (typeof body.retryAfterMs === 'number') retryAfterMs = body.retryAfterMs;
    if (typeof body.error === 'string' && typeof body.message === 'string') return { outcome: body.error, retryAfterMs };
  } catch {}
  return { outcome: `upstream_${status}`, retryAfterMs };
}

/** The counts of one tenant's requests to one upstream. */
export class Tally {
  constructor(tenant, upstream) {
    this.tenant = tenant;
    this.upstream = upstream;
    this.sent = 0;
    this.inFlight = 0;
    /** Attempts refused and made again after their Retry-After. */
    this.retries = 0;
    /** @type {Map<string, number>} final outcome → requests */
    this.outcomes = new Map();
  }

  add(outcome) {
    this.outcomes.set(outcome, (this.outcomes.get(outcome) ?? 0) + 1);
  }

  get forwarded() {
    return this.outcomes.get('forwarded') ?? 0;
  }

  /** Every outcome but forwarded, most frequent first. */
  refusals() {
    return [...this.outcomes].filter(([o]) => o !== 'forwarded').sort((a, b) => b[1] - a[1]);
  }
}

/**
 * Starts one generator per PLAN entry against the gateway; `stop(graceMs)` stops sending, waits up
 * to graceMs for the answers still due (a queued request may wait seconds) and cuts the rest
 * (counted as `unfinished_at_end`, as are requests waiting to be sent again).
 * @param {{ proxyUrl: string, keys: Record<string, string>, accountSid: string }} options
 */
export function startLoad({ proxyUrl, keys, accountSid }) {
  const abort = new AbortController();
  const stopSending = new AbortController();
  const acme = new ProxyAgent({ uri: proxyUrl, token: `Basic ${Buffer.from(`acme:${keys.acme}`).toString('base64')}`, proxyTunnel: false });
  const inFlight = new Set();
  const tallies = PLAN.map((p) => new Tally(p.tenant, p.upstream));

  /** One attempt: its outcome and Retry-After. */
  async function attempt(plan) {
    const call = apiCall(plan.upstream, accountSid);
    const viaProxy = plan.tenant === 'acme';
    const url = viaProxy ? `http://${call.host}${call.path}` : `${proxyUrl}${call.prefix}${call.path}`;
    const headers = viaProxy ? call.headers : { ...call.headers, 'x-sluice-key': `${plan.tenant}:${keys[plan.tenant]}` };
    try {
      const res = await request(url, {
        method: call.method,
        headers,
        body: call.body,
        signal: abort.signal,
        headersTimeout: 15_000,
        bodyTimeout: 15_000,
        ...(viaProxy ? { dispatcher: acme } : {}),
      });
      return answerOf(res.statusCode, res.headers, await res.body.text());
    } catch (err) {
      return { outcome: abort.signal.aborted ? 'unfinished_at_end' : `client_error (${err.code ?? err.name})`, retryAfterMs: undefined };
    }
  }

  /**
   * One request, sent again after each refusal that says when (Retry-After), within PATIENCE_MS;
   * its final outcome is counted, and each attempt refused on the way as a retry.
   */
  async function send(plan, tally) {
    const deadline = performance.now() + PATIENCE_MS;
    tally.sent++;
    tally.inFlight++;
    try {
      for (;;) {
        const { outcome, retryAfterMs } = await attempt(plan);
        if (!RETRYABLE.has(outcome) || retryAfterMs === undefined || performance.now() + retryAfterMs > deadline) return void tally.add(outcome);
        tally.retries++;
        // The end of the demo ends the wait too: the request is not sent again.
        await sleep(retryAfterMs, undefined, { signal: stopSending.signal }).catch(() => undefined);
        if (stopSending.signal.aborted) return void tally.add('unfinished_at_end');
      }
    } finally {
      tally.inFlight--;
    }
  }

  async function generate(plan, tally) {
    const intervalMs = 1000 / plan.perSecond;
    // Spread the generators' first requests over their interval, as independent clients would be.
    let next = performance.now() + Math.random() * intervalMs;
    while (!stopSending.signal.aborted) {
      await sleep(Math.max(0, next - performance.now()), undefined, { signal: stopSending.signal }).catch(() => undefined);
      if (stopSending.signal.aborted) break;
      next += intervalMs;
      if (tally.inFlight >= MAX_IN_FLIGHT) {
        tally.add('skipped (client busy)');
        continue;
      }
      const pending = send(plan, tally);
      inFlight.add(pending);
      pending.finally(() => inFlight.delete(pending));
    }
  }

  const generators = PLAN.map((plan, i) => generate(plan, tallies[i]));
  return {
    tallies,
    async stop(graceMs) {
      stopSending.abort();
      await Promise.all(generators);
      const settled = Promise.all([...inFlight]);
      const timer = setTimeout(() => abort.abort(), graceMs);
      await settled;
      clearTimeout(timer);
      await acme.close();
    },
  };
}
