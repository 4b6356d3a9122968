// The fidelity benchmark's load: one tenant's clients sending through one or more gateways
// (base-URL form, X-Sluice-Key), round robin: request i goes to gateway i mod n, and its retry to
// the next one, so that a Retry-After given by one instance is tried on another.
//
// Bounded: no request starts after the deadline, at most MAX_REQUESTS are sent, a retry whose wait
// would reach the deadline is not made, and whatever is still in flight graceMs after the deadline
// is aborted (counted as an error). Only http://127.0.0.1 is ever contacted.
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setImmediate as tick, setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';

export const MAX_REQUESTS = 300_000;
export const nowMs = () => performance.timeOrigin + performance.now();

/** Sleeps until the clock reads `t` or later (timers may fire up to a ms early; this never does). */
async function sleepUntil(t) {
  for (;;) {
    const d = t - nowMs();
    if (d <= 0) return;
    if (d > 2) await sleep(d - 1);
    else await tick();
  }
}

function retryAfterOf(text, headers) {
  try {
    const v = JSON.parse(text)?.retryAfterMs;
    if (typeof v === 'number' && Number.isFinite(v)) return v;
  } catch {}
  const h = Number(headers['retry-after']);
  return Number.isFinite(h) ? h * 1000 : undefined;
}

/**
 * @param o.gateways     base URLs (http://127.0.0.1:PORT) of the gateways, used in turn
 * @param o.path         /PREFIX/rest
 * @param o.tenant, o.key
 * @param o.workers      requests in flight at most (and connections per gateway)
 * @param o.rps          open loop: request k is due at start + k/rps (a retry takes no slot);
 *                       absent: closed loop, each worker sends again as soon as it is answered
 * @param o.retry        'once': a 429 whose retryAfterMs is at most retryCapMs is waited out
 *                       exactly and the request sent once more; 'persist': the same, again after
 *                       every refusal until admitted (the client the fair-share tests assume);
 *                       'none': refusals are dropped. Figures of the first retry are kept apart.
 * @param o.start        driver clock (nowMs) at which the load begins; o.durationMs its length
 */
export async function drive(o) {
  for (const g of o.gateways) {
    const u = new URL(g);
    if (u.hostname !== '127.0.0.1' || u.protocol !== 'http:') throw new Error(`drive() only talks to http://127.0.0.1, not ${g}`);
  }
  const n = o.gateways.length;
  const workers = Math.max(1, Math.floor(o.workers));
  const start = o.start ?? nowMs();
  const deadline = start + o.durationMs;
  const interval = o.rps > 0 ? 1000 / o.rps : 0;
  const retryCapMs = o.retryCapMs ?? 5_000;
  const headers = { 'x-sluice-key': `${o.tenant}:${o.key}`, 'x-bench-tenant': o.tenant };
  const agent = new Agent({ connections: workers, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  const abort = new AbortController();
  setMaxListeners(workers * 4 + 16, abort.signal);
  const hardStop = setTimeout(() => abort.abort(), Math.max(0, deadline - nowMs()) + (o.graceMs ?? 5_000));

  const r = {
    tenant: o.tenant,
    sent: 0, // first attempts
    admitted: 0, // 2xx, first attempts and retries
    refused: 0, // 429 on a first attempt
    statuses: {},
    errors: 0,
    refusals: [], // first refusals: [receivedAt, retryAfterMs, code]
    retry: { sent: 0, admitted: 0, refusedAgain: 0, skipped: 0, secondWaitMs: [], waitedMs: [], later: 0, laterAdmitted: 0 },
  };
  let seq = 0;
  let slot = 0;

  const send = async (url) => {
    const res = await request(url, { headers, dispatcher: agent, signal: abort.signal });
    const text = await res.body.text(); // read to the end: the connection goes back to the pool
    r.statuses[res.statusCode] = (r.statuses[res.statusCode] ?? 0) + 1;
    if (res.statusCode !== 429) return { status: res.statusCode };
    let code = '';
    try {
      code = JSON.parse(text).error ?? '';
    } catch {}
    return { status: 429, retryAfterMs: retryAfterOf(text, res.headers), code, at: nowMs() };
  };

  const worker = async () => {
    while (r.sent < MAX_REQUESTS && !abort.signal.aborted) {
      if (interval > 0) {
        const due = start + slot++ * interval;
        if (due >= deadline) return;
        await sleepUntil(due);
      } else if (nowMs() < start) await sleepUntil(start);
      if (nowMs() >= deadline) return;
      const i = seq++;
      r.sent++;
      let first;
      try {
        first = await send(`${o.gateways[i % n]}${o.path}`);
      } catch {
        r.errors++;
        continue;
      }
      if (first.status >= 200 && first.status < 300) r.admitted++;
      if (first.status !== 429) continue;
      r.refused++;
      r.refusals.push([first.at, first.retryAfterMs, first.code]);
      if (o.retry === 'none' || o.retry === undefined) continue;
      let refusal = first;
      for (let attempt = 1; ; attempt++) {
        if (refusal.retryAfterMs === undefined || refusal.retryAfterMs > retryCapMs) break;
        const due = refusal.at + refusal.retryAfterMs;
        if (due >= deadline) {
          // The retry would fall after the end. An open-loop worker goes on to its next slot; a
          // closed-loop one stops (sending again at once would hammer the gateway for the rest).
          if (attempt === 1) r.retry.skipped++;
          if (interval > 0) break;
          return;
        }
        await sleepUntil(due);
        if (attempt === 1) {
          r.retry.sent++;
          r.retry.waitedMs.push(nowMs() - refusal.at);
        } else r.retry.later++;
        let again;
        try {
          again = await send(`${o.gateways[(i + attempt) % n]}${o.path}`);
        } catch {
          r.errors++;
          break;
        }
        if (again.status >= 200 && again.status < 300) {
          r.admitted++;
          if (attempt === 1) r.retry.admitted++;
          else r.retry.laterAdmitted++;
          break;
        }
        if (again.status !== 429) break;
        if (attempt === 1) {
          r.retry.refusedAgain++;
          if (again.retryAfterMs !== undefined) r.retry.secondWaitMs.push(again.retryAfterMs);
        }
        if (o.retry !== 'persist') break;
        refusal = again;
      }
    }
  };

  try {
    await Promise.all(Array.from({ length: workers }, worker));
  } finally {
    clearTimeout(hardStop);
    await agent.close().catch(() => undefined);
  }
  return r;
}
