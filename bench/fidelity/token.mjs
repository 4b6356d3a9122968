// The fidelity benchmark's OAuth2 token scenario: `npm run bench:token` (builds dist/ first), or
// `node bench/fidelity/token.mjs` after `npx tsc -b`; run.mjs also runs it (scenario key `token`).
// See README.md here ("OAuth2 token refresh").
//
// Three gateways (node dist/cli.js start, one process each) share one Redis prefix and one
// upstream whose credential is a Zoho-style OAuth2 refresh_token grant. A fake token endpoint and
// a fake API (token-endpoint.mjs, a child process) issue short-lived tokens and accept any
// unexpired one, except during periodic "401 storms" when the API answers 401 to everything.
// Closed-loop clients send through the gateways round robin. Afterwards:
//   - token-endpoint calls against refreshLimit: the most in any `per` window (never over `max`),
//     and the smallest gap between two calls (never under `every`);
//   - requests that waited on a refresh (latency >= the endpoint's delay, or 503
//     credentials_unavailable), outside storms (must be 0) and during them.
//
// The clock is scaled 1:60: one real second stands for one minute (see SCALE below).
// Environment: FIDELITY_TOKEN_SECONDS (60), FIDELITY_TOKEN_WORKERS (6), FIDELITY_TOKEN_PAUSE_MS
// (5, each client's pause between requests), FIDELITY_TOKEN_STORMS_MS ("600,1000,1400,1800",
// storm lengths used in turn), FIDELITY_REDIS_URL (redis://127.0.0.1:6379),
// FIDELITY_KEEP_TMP=1 (keep configs and gateway logs), FIDELITY_TOKEN_VERBOSE=1 (print the
// gateways' credential log lines), FIDELITY_TOKEN_JSON=FILE (run.mjs: the figures go to FILE and
// the exit status is 0 whatever the verdict; alone, a FAIL exits 1).
import { randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { trackChildren } from '../lib/children.mjs';
import { f0, f1 } from '../lib/format.mjs';
import { cleanRedis, redisAnswers } from '../lib/redis.mjs';
import { startGatewayChild } from '../lib/gateway-child.mjs';
import { int } from '../lib/settings.mjs';
import { maxInWindow, median, percentile } from './checks.mjs';
import { nowMs } from './load.mjs';
import { startChildServer } from './child-server.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const env = process.env;
const REDIS_URL = env.FIDELITY_REDIS_URL ?? 'redis://127.0.0.1:6379';
const JSON_OUT = env.FIDELITY_TOKEN_JSON;
const VERBOSE = env.FIDELITY_TOKEN_VERBOSE === '1';
const PREFIX = `sluice-fidelity-token-${process.pid}-${randomBytes(3).toString('hex')}`;

// ---------------------------------------------------------------------------------------------
// The scaled clock. 1 real second stands for 1 minute (1:60), so refreshLimit is Zoho's own
// budget (10 access tokens per refresh token per 10 minutes) at scale. Tokens are deliberately
// shorter than Zoho's hour (6 simulated minutes): refresh ahead then runs about ten times in a
// run and shares the budget with the storms, which is harsher than the real thing. The token
// endpoint's delay is real time (a slow token endpoint), not scaled: it is what makes a request
// that waited on a refresh visible in its latency.

const SCALE = 60;
const SECONDS = int(env.FIDELITY_TOKEN_SECONDS, 60, 20);
const WORKERS = int(env.FIDELITY_TOKEN_WORKERS, 6);
const PAUSE_MS = int(env.FIDELITY_TOKEN_PAUSE_MS, 5, 0);
const INSTANCES = 3;
const LIFETIME_S = 6;
const REFRESH_BEFORE_MS = 2_000;
const BUDGET = { everyMs: 1_000, max: 10, perMs: 10_000 };
const ENDPOINT_DELAY_MS = 200;
const ENDPOINT_TIMEOUT_MS = 5_000;
/**
 * Storms start 10 s into the load and every 15 s after; their lengths (about a second) cycle
 * through `lengthsMs`. They differ on purpose: a storm as long as `every` hides a refresh the
 * budget deferred to just after the storm inside the storm's tail.
 */
const STORM = {
  firstMs: 10_000,
  everyMs: 15_000,
  lengthsMs: (env.FIDELITY_TOKEN_STORMS_MS ?? '600,1000,1400,1800')
    .split(',')
    .map((x) => int(x.trim(), NaN, 100))
    .filter((x) => Number.isFinite(x) && x < 15_000),
};
if (STORM.lengthsMs.length === 0) STORM.lengthsMs = [1_000];
/** The storms of a load of durationMs: [offset from its start, length], ending 2 s before its end. */
function stormPlan(durationMs) {
  const plan = [];
  for (let t = STORM.firstMs, k = 0; t + STORM.lengthsMs[k % STORM.lengthsMs.length] <= durationMs - 2_000; t += STORM.everyMs, k++) {
    plan.push([t, STORM.lengthsMs[k % STORM.lengthsMs.length]]);
  }
  return plan;
}
/**
 * A storm's tail: a refresh asked for by a 401 from the storm's last moment reaches the endpoint a
 * few ms after the storm and answers the endpoint's delay later; requests waiting on it get their
 * answer then. Requests that overlap a storm or its tail count as "during the storm".
 */
const STORM_TAIL_MS = ENDPOINT_DELAY_MS + 50;
/**
 * Calls are timed where they arrive (the fake endpoint), the budget is counted where they are
 * granted (Redis TIME); the hop between the two (the gateway's event loop, a new connection) varies
 * by a few ms, so two calls may look up to this much closer than the store spaced them.
 */
const TOLERANCE_MS = 50;
const PATH = '/sdp/api/v3/requests';
const SECRETS = { clientId: '1000.FIDELITYCLIENT', clientSecret: `cs-${randomBytes(8).toString('hex')}`, refreshToken: `1000.rt-${randomBytes(8).toString('hex')}` };
const TENANT = { name: 'desk', key: `desk-token-key-${randomBytes(4).toString('hex')}` };

const scaled = (ms) => {
  const s = (ms * SCALE) / 1000;
  return s >= 3600 ? `${+(s / 3600).toFixed(2)} h` : s >= 60 ? `${+(s / 60).toFixed(2)} min` : `${+s.toFixed(1)} s`;
};

// ---------------------------------------------------------------------------------------------
// Processes.

const { work, track, stopChild, stopAll, stopping } = trackChildren({
  label: 'fidelity-token',
  keepTmpVar: 'FIDELITY_KEEP_TMP',
  onSignal: () => cleanRedis(REDIS_URL, PREFIX),
});

let fake;

async function startFake() {
  const args = [JSON.stringify({ lifetimeS: LIFETIME_S, delayMs: ENDPOINT_DELAY_MS, ...SECRETS })];
  const server = await startChildServer(join(HERE, 'token-endpoint.mjs'), args, { track, name: 'token-endpoint' });
  const ports = server.listening;
  fake = { ...server, tokenUrl: `http://127.0.0.1:${ports.tokenPort}/oauth/v2/token`, apiUrl: `http://127.0.0.1:${ports.apiPort}` };
}

const rpc = (cmd, more) => fake.rpc(cmd, more);

function gatewayYaml(dir, port, adminPort) {
  const s = (ms) => `${ms}ms`;
  return `# Generated by bench/fidelity/token.mjs
log: { level: info }
listen: { proxy: 127.0.0.1:${port}, admin: 127.0.0.1:${adminPort}, drainTimeout: 2s }
tls: { caDir: ${join(dir, 'ca')} }
store: { type: redis, url: "${REDIS_URL}", prefix: ${PREFIX} }
tenants:
  ${TENANT.name}: { key: ${TENANT.key} }
upstreams:
  sdp:
    match: { prefix: /sdp }
    target: ${fake.apiUrl}
    allowPrivate: true
    credentials:
      type: oauth2
      grant: refresh_token
      tokenUrl: "${fake.tokenUrl}"
      clientId: "${SECRETS.clientId}"
      clientSecret: "${SECRETS.clientSecret}"
      refreshToken: "${SECRETS.refreshToken}"
      format: "Zoho-oauthtoken {token}"
      refreshBefore: ${s(REFRESH_BEFORE_MS)}
      refreshLimit: { every: ${s(BUDGET.everyMs)}, max: ${BUDGET.max}, per: ${s(BUDGET.perMs)} }
      timeout: ${s(ENDPOINT_TIMEOUT_MS)}
`;
}

/** The gateways' log lines other than the request log (credentials, warnings), on our clock. */
const gatewayLog = [];

/** Its stdout's lines other than the request log (the credential lines) go to the report's log. */
function startGateway(i) {
  const name = `gw${i + 1}`;
  return startGatewayChild({
    work,
    track,
    name,
    config: (dir, port, adminPort) => gatewayYaml(dir, port, adminPort),
    onLine: (line) => {
      if (line.includes('"msg":"request"')) return;
      try {
        const o = JSON.parse(line);
        gatewayLog.push({ at: o.time, gw: name, level: o.level, msg: o.msg, line: o });
      } catch {
        gatewayLog.push({ at: Date.now(), gw: name, level: 0, msg: line, line: {} });
      }
    },
  });
}


// ---------------------------------------------------------------------------------------------
// The load: closed-loop clients, request i to gateway i mod 3. Bounded: nothing starts after the
// deadline, at most MAX_REQUESTS, and whatever is in flight 5 s after the deadline is aborted.

const MAX_REQUESTS = 500_000;
const headers = { 'x-sluice-key': `${TENANT.name}:${TENANT.key}` };

async function send(url, agent, signal) {
  const res = await request(url, { headers, dispatcher: agent, signal });
  const text = await res.body.text();
  let code = '';
  if (res.statusCode === 503) {
    try {
      code = JSON.parse(text).error ?? '';
    } catch {}
  }
  return { status: res.statusCode, code };
}

async function load(gateways, start, deadline) {
  for (const g of gateways) if (!g.url.startsWith('http://127.0.0.1:')) throw new Error(`only 127.0.0.1, not ${g.url}`);
  const agent = new Agent({ connections: WORKERS, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000, headersTimeout: 10_000, bodyTimeout: 10_000 });
  const abort = new AbortController();
  const hardStop = setTimeout(() => abort.abort(), deadline - nowMs() + 5_000);
  /** [start, end, status, code, gateway]; an error has status 0 and its code. */
  const records = [];
  let seq = 0;
  const worker = async () => {
    while (nowMs() < start) await sleep(Math.max(1, start - nowMs()));
    while (records.length < MAX_REQUESTS && !abort.signal.aborted) {
      const t0 = nowMs();
      if (t0 >= deadline) return;
      const g = seq++ % gateways.length;
      try {
        const { status, code } = await send(`${gateways[g].url}${PATH}`, agent, abort.signal);
        records.push([t0, nowMs(), status, code, g]);
      } catch (err) {
        records.push([t0, nowMs(), 0, err?.code ?? err?.name ?? 'error', g]);
      }
      if (PAUSE_MS > 0) await sleep(PAUSE_MS);
    }
  };
  try {
    await Promise.all(Array.from({ length: WORKERS }, worker));
  } finally {
    clearTimeout(hardStop);
    await agent.close().catch(() => undefined);
  }
  return records;
}

// ---------------------------------------------------------------------------------------------
// The scenario.

async function run() {
  await startFake();
  const gateways = await Promise.all(Array.from({ length: INSTANCES }, (_, i) => startGateway(i)));
  try {
    // Warm-up (not counted): every instance has its first token. They ask for one at start-up,
    // and the first call's grant makes the other two adopt it.
    const agent = new Agent({ connections: 1 });
    try {
      for (const g of gateways) {
        for (let attempt = 0; ; attempt++) {
          const { status } = await send(`${g.url}${PATH}`, agent).catch(() => ({ status: 0 }));
          if (status === 200) break;
          if (attempt >= 50) throw new Error(`${g.name} answered ${status} to the warm-up for 5 s`);
          await sleep(100);
        }
      }
    } finally {
      await agent.close();
    }
    const start = nowMs() + 300;
    const deadline = start + SECONDS * 1000;
    const storms = stormPlan(deadline - start).map(([at, length]) => [start + at, start + at + length]);
    await rpc('storms', { storms: storms.map(([a, b]) => [a + fake.offset, b + fake.offset]) });
    const records = await load(gateways, start, deadline);
    await sleep(300); // the last answers reach the record
    const dump = await rpc('dump');
    const dead = gateways.filter((g) => g.child.exitCode !== null);
    if (dead.length) throw new Error(`${dead.map((g) => g.name).join(', ')} died during the run${dead[0].errTail()}`);
    return { start, deadline, storms, records, dump };
  } finally {
    await Promise.all(gateways.map((g) => stopChild(g.child)));
    await stopChild(fake.child);
    await cleanRedis(REDIS_URL, PREFIX).catch((err) => console.error(`fidelity-token: Redis cleanup of ${PREFIX} failed: ${err.message}`));
  }
}

function measure({ start, deadline, storms, records, dump }) {
  const o = fake.offset;
  const calls = dump.calls.map(([at, answered, malformed]) => ({ at: at - o, answered: answered < 0 ? Infinity : answered - o, malformed }));
  const times = calls.map((c) => c.at).sort((a, b) => a - b);
  const m = { seconds: SECONDS, instances: INSTANCES, workers: WORKERS, storms: storms.length, budget: BUDGET, delayMs: ENDPOINT_DELAY_MS, toleranceMs: TOLERANCE_MS };

  // 1. The token endpoint against refreshLimit, over every call (warm-up included: it counts).
  m.calls = calls.length;
  m.callsInRun = times.filter((t) => t >= start && t <= deadline).length;
  m.malformed = calls.filter((c) => c.malformed).length;
  m.unanswered = calls.filter((c) => !Number.isFinite(c.answered)).length;
  m.maxInWindow = maxInWindow(times, BUDGET.perMs);
  // max + 1 calls within per - tolerance: one over the budget (the tolerance: see TOLERANCE_MS).
  m.tightestSpanMs = Infinity;
  for (let i = 0; i + BUDGET.max < times.length; i++) m.tightestSpanMs = Math.min(m.tightestSpanMs, times[i + BUDGET.max] - times[i]);
  m.overBudget = 0;
  for (let i = 0; i + BUDGET.max < times.length; i++) if (times[i + BUDGET.max] - times[i] < BUDGET.perMs - TOLERANCE_MS) m.overBudget++;
  m.minGapMs = Infinity;
  for (let i = 1; i < times.length; i++) m.minGapMs = Math.min(m.minGapMs, times[i] - times[i - 1]);
  m.underEvery = 0;
  for (let i = 1; i < times.length; i++) if (times[i] - times[i - 1] < BUDGET.everyMs - TOLERANCE_MS) m.underEvery++;
  // Calls per storm (within the storm and its tail) and outside.
  const inStormTail = (t) => storms.some(([a, b]) => t >= a && t < b + STORM_TAIL_MS);
  m.callsInStorms = times.filter(inStormTail).length;

  // 2. Requests: waited on a refresh = latency >= the endpoint's delay, or 503 credentials_unavailable.
  const stormOf = (r) => storms.findIndex(([a, b]) => r[0] < b + STORM_TAIL_MS && r[1] > a);
  const overlapsCall = (r) => calls.some((c) => r[0] < c.answered && r[1] > c.at);
  const out = { n: 0, waited: 0, waitedOnCall: 0, slow: 0, unavailable: 0, statuses: {}, latencies: [], examples: [] };
  const during = { n: 0, waited: 0, slow: 0, unavailable: 0, statuses: {}, latencies: [] };
  const perStorm = storms.map(() => ({ n: 0, waited: 0, s401: 0, lastWaitStartMs: -Infinity }));
  for (const r of records) {
    const k = stormOf(r);
    const bucket = k >= 0 ? during : out;
    const latency = r[1] - r[0];
    const key = r[2] === 0 ? `error ${r[3]}` : r[2] === 503 ? `503 ${r[3]}` : String(r[2]);
    bucket.n++;
    bucket.statuses[key] = (bucket.statuses[key] ?? 0) + 1;
    bucket.latencies.push(latency);
    const unavailable = r[2] === 503 && r[3] === 'credentials_unavailable';
    const slow = latency >= ENDPOINT_DELAY_MS;
    if (unavailable) bucket.unavailable++;
    if (slow) bucket.slow++;
    if (slow || unavailable) {
      bucket.waited++;
      if (k < 0) {
        if (overlapsCall(r)) out.waitedOnCall++;
        if (out.examples.length < 12) out.examples.push(r);
      }
    }
    if (k >= 0) {
      perStorm[k].n++;
      if (slow || unavailable) {
        perStorm[k].waited++;
        // When the last request that waited was sent, from the storm's end (> 0: in the tail).
        perStorm[k].lastWaitStartMs = Math.max(perStorm[k].lastWaitStartMs, r[0] - storms[k][1]);
      }
      if (r[2] === 401) perStorm[k].s401++;
    }
  }
  for (const b of [out, during]) {
    b.p50 = median(b.latencies);
    b.p99 = percentile(b.latencies, 99);
    b.max = b.latencies.length ? Math.max(...b.latencies) : NaN;
    delete b.latencies;
  }
  m.outside = out;
  m.during = during;
  m.perStorm = perStorm;
  m.callsPerStorm = storms.map(([a, b]) => times.filter((t) => t >= a && t < b + STORM_TAIL_MS).length);
  m.nonOkOutside = out.n - (out.statuses['200'] ?? 0);
  m.api = dump.api;
  m.apiOffStorm = dump.offStorm.map(([at, reason]) => [at - o, reason]);
  m.requests = records.length;
  m.rps = records.length / SECONDS;

  m.budgetOk = m.overBudget === 0 && m.underEvery === 0;
  m.waitOk = out.waited === 0;
  m.pass = m.budgetOk && m.waitOk;
  m.start = start;
  m.stormWindows = storms;
  m.callWindows = calls.map((c) => [c.at, c.answered]);
  return m;
}

// ---------------------------------------------------------------------------------------------
// Report.

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const rel = (t, start) => `t=${((t - start) / 1000).toFixed(3)} s`;
const statusText = (s) =>
  Object.entries(s)
    .sort((a, b) => b[1] - a[1])
    .map(([k, v]) => `${k}: ${v}`)
    .join(', ') || '–';

function report(m) {
  const L = (label, text) => console.log(`  ${label.padEnd(22)} ${text}`);
  const verdict = (ok) => (ok ? 'ok' : 'FAIL');
  L(
    'token endpoint',
    `${plural(m.calls, 'call')} (${m.callsInRun} during the load, ${m.callsInStorms} in storms and their tails; per storm ${m.callsPerStorm.join(', ')})` +
      (m.malformed ? `, ${m.malformed} MALFORMED` : '') +
      (m.unanswered ? `, ${m.unanswered} still unanswered when the load ended` : ''),
  );
  L(
    'budget (refreshLimit)',
    `max ${m.maxInWindow} calls in any ${m.budget.perMs / 1000} s window, allowed ${m.budget.max}; ` +
      `tightest ${m.budget.max + 1} calls within ${Number.isFinite(m.tightestSpanMs) ? `${f0(m.tightestSpanMs)} ms` : '– (never that many)'}: ${m.overBudget} over → ${verdict(m.overBudget === 0)}`,
  );
  L(
    'spacing (every)',
    `smallest gap between calls ${f1(m.minGapMs)} ms, allowed ${m.budget.everyMs} ms − ${m.toleranceMs} ms tolerance: ${m.underEvery} closer → ${verdict(m.underEvery === 0)}`,
  );
  const o = m.outside;
  L(
    'outside storms',
    `${o.n} requests, waited on a refresh ${o.waited} (${o.slow} took ≥ ${m.delayMs} ms, ${o.unavailable} got 503 credentials_unavailable; ` +
      `${o.waitedOnCall} of them overlap a token-endpoint call) → ${verdict(o.waited === 0)}`,
  );
  L('', `latency p50 ${f1(o.p50)} ms, p99 ${f1(o.p99)} ms, max ${f1(o.max)} ms; statuses ${statusText(o.statuses)}`);
  const d = m.during;
  L('during storms (+tail)', `${d.n} requests, waited on a refresh ${d.waited} (${d.slow} took ≥ ${m.delayMs} ms, ${d.unavailable} got 503 credentials_unavailable)`);
  L('', `latency p50 ${f1(d.p50)} ms, p99 ${f1(d.p99)} ms, max ${f1(d.max)} ms; statuses ${statusText(d.statuses)}`);
  m.perStorm.forEach((s, k) => {
    const [a, b] = m.stormWindows[k];
    const last = s.waited ? `, the last sent ${f0(Math.abs(s.lastWaitStartMs))} ms ${s.lastWaitStartMs >= 0 ? 'after' : 'before'} its end` : '';
    L(
      k === 0 ? 'per storm' : '',
      `#${k + 1} t=${((a - m.start) / 1000).toFixed(1)} s, ${((b - a) / 1000).toFixed(1)} s long: ${s.n} requests, ${s.s401} got 401, ${s.waited} waited${last}; ${plural(m.callsPerStorm[k], 'endpoint call')}`,
    );
  });
  L(
    'fake API',
    `accepted ${m.api.accepted}, 401 in storms ${m.api.stormRejected}, 401 outside: expired token ${m.api.expired}, unknown token ${m.api.unknown}, no token ${m.api.missing}`,
  );
  if (o.examples.length) {
    console.log('  requests that waited outside storms (first ones):');
    for (const r of o.examples) {
      const ended = m.stormWindows.filter(([, b]) => b <= r[0]).at(-1);
      const call = m.callWindows.find(([at, answered]) => r[0] < answered && r[1] > at);
      console.log(
        `    sent ${rel(r[0], m.start)} to gw${r[4] + 1}: ${f1(r[1] - r[0])} ms → ${r[2]}${r[3] ? ` ${r[3]}` : ''}` +
          (ended ? `; ${f0(r[0] - ended[1])} ms after storm #${m.stormWindows.indexOf(ended) + 1} ended` : '') +
          (call ? `; overlaps the endpoint call of ${rel(call[0], m.start)}–${((call[1] - m.start) / 1000).toFixed(3)} s` : '; overlaps no endpoint call'),
      );
    }
  }
  if (m.apiOffStorm.length) {
    console.log(`  401s outside storms at the API (first ones): ${m.apiOffStorm.slice(0, 8).map(([at, why]) => `${rel(at, m.start)} ${why}`).join('; ')}`);
  }
  if (VERBOSE || !m.pass) {
    const lifecycle = new Set(['sluice is listening', 'stopping', 'draining', 'stopped']);
    // On a FAIL, the lines from 1.5 s before to 0.5 s after each request that waited outside storms.
    const near = (t) => VERBOSE || o.examples.length === 0 || o.examples.some((r) => t >= r[0] - 1_500 && t <= r[1] + 500);
    const lines = gatewayLog.filter((l) => !lifecycle.has(l.msg) && near(l.at)).slice(0, VERBOSE ? 1_000 : 60);
    console.log(
      `  gateway log (${VERBOSE ? 'all but start and stop' : 'around the requests above'}: ${lines.length} of ${gatewayLog.length} lines; times from the load's start):`,
    );
    for (const l of lines) {
      const { level, time, pid, hostname, msg, ...rest } = l.line;
      console.log(`    ${rel(l.at, m.start)} ${l.gw} ${msg} ${JSON.stringify(rest)}`);
    }
  }
  console.log(
    `  ${m.pass ? 'PASS' : 'FAIL'}: token-endpoint calls ${m.budgetOk ? 'within' : 'OVER'} refreshLimit in every window; ` +
      `${m.outside.waited} request${m.outside.waited === 1 ? '' : 's'} waited on a refresh outside storms (aim 0)`,
  );
}

async function main() {
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npx tsc -b` first');
  if (!(await redisAnswers(REDIS_URL))) throw new Error(`Redis does not answer at ${REDIS_URL} (start it, or set FIDELITY_REDIS_URL)`);
  const storms = stormPlan(SECONDS * 1000);
  console.log(
    [
      `### OAuth2 token refresh: ${INSTANCES} instances on Redis, 401 storms, clock 1:${SCALE}  [token]`,
      // run.mjs has printed the machine already.
      ...(JSON_OUT ? [] : [`  machine   ${cpus().length} x ${cpus()[0]?.model?.trim()}, Linux ${release()}, Node ${process.version}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`]),
      `  clock     1:${SCALE}, 1 s stands for 1 min: the run, ${SECONDS} s, is ${scaled(SECONDS * 1000)}; refreshLimit { every: ${BUDGET.everyMs / 1000}s, max: ${BUDGET.max}, per: ${BUDGET.perMs / 1000}s } is ` +
        `${BUDGET.max} per ${scaled(BUDGET.perMs)}, ${scaled(BUDGET.everyMs)} apart (Zoho's budget)`,
      `            tokens live ${LIFETIME_S} s (${scaled(LIFETIME_S * 1000)}, shorter than Zoho's hour on purpose), refreshBefore ${REFRESH_BEFORE_MS / 1000}s (${scaled(REFRESH_BEFORE_MS)}); ` +
        `${plural(storms.length, 'storm')} (401 to everything) every ${STORM.everyMs / 1000} s (${scaled(STORM.everyMs)}) from t=${STORM.firstMs / 1000} s, ` +
        `lasting ${storms.map(([, l]) => `${l / 1000}`).join(', ')} s (${storms.map(([, l]) => scaled(l)).join(', ')})`,
      `            the token endpoint answers after ${ENDPOINT_DELAY_MS} ms (real time, not scaled): a request that took that long waited on a refresh`,
      `  load      ${WORKERS} closed-loop clients (undici, ${PAUSE_MS} ms pause), round robin over ${INSTANCES} gateways (node dist/cli.js start; Redis prefix ${PREFIX}, deleted afterwards)`,
    ].join('\n'),
  );
  const result = await run();
  const m = measure(result);
  report(m);
  const { stormWindows, callWindows, start, ...figures } = m;
  if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify(figures));
  return m.pass;
}

main()
  .then((pass) => {
    process.exitCode = pass || JSON_OUT ? 0 : 1;
  })
  .catch(async (err) => {
    if (stopping()) return;
    console.error(`fidelity-token: ${err.stack ?? err}`);
    await stopAll();
    await cleanRedis(REDIS_URL, PREFIX).catch(() => undefined);
    process.exit(1);
  });
