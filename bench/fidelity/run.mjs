// The fidelity benchmark's driver: `npm run bench:fidelity` (builds dist/ first, then run.sh), or
// `node bench/fidelity/run.mjs` after `npx tsc -b`. See README.md here for what each figure means.
//
//   1. Scenarios: the built gateway (node dist/cli.js start) in front of a strict upstream that
//      records every arrival (upstream.mjs), on the memory store (1 instance) and on Redis (3
//      instances, separate processes sharing one prefix). Clients (load.mjs) flood it; afterwards
//      the arrivals are checked against the rule: violations, utilisation, fairness, shares, and
//      how often a refused request is admitted when retried after exactly its retryAfterMs.
//      Then the OAuth2 token scenario (`token`): token.mjs as a child process (it also runs alone),
//      3 instances sharing a token through Redis under 401 storms, on a clock scaled 1:60.
//      Then the learned-limit scenario (`learned`): learned.mjs as a child process (it also runs
//      alone), an upstream whose real limit is lower than configured and answers 429 with
//      Retry-After, through gateways with and without `feedback.headers`.
//   2. Decision cost: decide.mjs, decisions per second straight against the store classes.
//   3. Throughput: bench/overhead with limits off vs generous limits on (memory, Redis), wrk.
//
// Environment: FIDELITY_SECONDS (5, per scenario), FIDELITY_SETTLE_MS (1000), FIDELITY_ROUNDS (3,
// for parts 2 and 3), FIDELITY_ONLY (comma list of scenario keys), FIDELITY_PARTS
// (scenarios,decide,overhead), FIDELITY_WRK_SECONDS (5), FIDELITY_WRK_CONNECTIONS ("1,50"),
// FIDELITY_TOKEN_SECONDS (60, the token scenario; its other settings: token.mjs),
// FIDELITY_LEARNED_SECONDS (24, the learned-limit scenario, per run; its other settings: learned.mjs),
// FIDELITY_REDIS_URL (redis://127.0.0.1:6379), FIDELITY_KEEP_TMP=1 (keep configs and gateway logs).
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { trackChildren } from '../lib/children.mjs';
import { f0, f1, f3, ratio, table } from '../lib/format.mjs';
import { cleanRedis, redisAnswers } from '../lib/redis.mjs';
import { startGatewayChild } from '../lib/gateway-child.mjs';
import { int } from '../lib/settings.mjs';
import { busyMs, concurrencySweep, jainIndex, maxInWindow, median, quotaViolations, rateViolations, tightestSpan } from './checks.mjs';
import { drive, nowMs } from './load.mjs';
import { startChildServer } from './child-server.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const env = process.env;
const SECONDS = int(env.FIDELITY_SECONDS, 5);
const SETTLE_MS = int(env.FIDELITY_SETTLE_MS, 1000, 0);
const ROUNDS = int(env.FIDELITY_ROUNDS, 3);
const REDIS_URL = env.FIDELITY_REDIS_URL ?? 'redis://127.0.0.1:6379';
const ONLY = env.FIDELITY_ONLY ? new Set(env.FIDELITY_ONLY.split(',').map((s) => s.trim())) : undefined;
const PARTS = new Set((env.FIDELITY_PARTS ?? 'scenarios,decide,overhead').split(',').map((s) => s.trim()));
const WRK_SECONDS = int(env.FIDELITY_WRK_SECONDS, 5);
const WRK_CONNECTIONS = env.FIDELITY_WRK_CONNECTIONS ?? '1,50';
const TOKEN_SECONDS = int(env.FIDELITY_TOKEN_SECONDS, 60, 20);
const LEARNED_SECONDS = int(env.FIDELITY_LEARNED_SECONDS, 24, 6);
const BASE_PREFIX = `sluice-fidelity-${process.pid}-${randomBytes(3).toString('hex')}`;
const INSTANCES_ON_REDIS = 3;
const HOUR = 3_600_000;

const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const PIN = cpus().length >= 2 && have('taskset');

// ---------------------------------------------------------------------------------------------
// Processes: every child is remembered and ended at exit (run.sh's trap on the process group is
// the second net).

const { work, track, stopChild, stopAll, stopping } = trackChildren({
  label: 'fidelity',
  keepTmpVar: 'FIDELITY_KEEP_TMP',
  // Each scenario deletes its own keys; after a signal the one cut short has not.
  onSignal: () => cleanRedis(REDIS_URL, BASE_PREFIX),
});

// ---------------------------------------------------------------------------------------------
// The strict upstream (a child process, so its arrival clock is not delayed by the load).

let upstream;

async function startUpstream() {
  const server = await startChildServer(join(HERE, 'upstream.mjs'), [], { track, name: 'upstream' });
  upstream = { ...server, port: server.listening, url: `http://127.0.0.1:${server.listening}` };
  return upstream;
}

const rpc = (cmd, more) => upstream.rpc(cmd, more);

/** Arrivals since the last reset, on our clock: {at, end, tenant}. */
async function arrivals() {
  const { arrivals: list, inFlightMax } = await rpc('dump');
  const o = upstream.offset;
  return {
    list: list.map(([at, end, tenant]) => ({ at: at - o, end: end < 0 ? Infinity : end - o, tenant })),
    inFlightMax,
  };
}

// ---------------------------------------------------------------------------------------------
// Gateways: node dist/cli.js start, one process each.

function gatewayYaml(s, dir, port, adminPort, store) {
  const reserves = s.tenants.filter((t) => t.reserve).map((t) => `${t.name}: ${t.reserve}`);
  return `# Generated by bench/fidelity, scenario ${s.key}
log: { level: info }
listen: { proxy: 127.0.0.1:${port}, admin: 127.0.0.1:${adminPort}, drainTimeout: 2s }
tls: { caDir: ${join(dir, 'ca')} }
${store}
tenants:
${s.tenants.map((t) => `  ${t.name}: { key: ${t.name}-fidelity-key-8e1c, weight: ${t.weight ?? 1} }`).join('\n')}
upstreams:
  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
${s.onLimit ? `    onLimit: ${s.onLimit}\n` : ''}    limits:
      - ${reserves.length ? s.limitYaml.replace(/ \}$/, `, reserve: { ${reserves.join(', ')} } }`) : s.limitYaml}
`;
}

let gatewaySeq = 0;
function startGateway(s, store) {
  return startGatewayChild({ work, track, name: `gw${++gatewaySeq}-${s.key}`, config: (dir, port, adminPort) => gatewayYaml(s, dir, port, adminPort, store) });
}

// ---------------------------------------------------------------------------------------------
// Redis housekeeping.


// ---------------------------------------------------------------------------------------------
// Scenarios.

const RATE = 50;
const FAIR_RATE = 60;
const seconds = SECONDS;

/** rule: what the checks measure against; loads: one drive per entry, through every gateway in turn. */
const SCENARIOS = [
  {
    key: 'rate-b1',
    title: `rate ${RATE}/s, burst 1`,
    limitYaml: `{ name: calls, rate: ${RATE}/s }`,
    rule: { kind: 'rate', count: RATE, periodMs: 1000, burst: 1 },
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', rps: 4 * RATE, workers: 16, retry: 'once' }],
    utilAim: true,
  },
  {
    key: 'rate-b10',
    title: `rate ${RATE}/s, burst 10`,
    limitYaml: `{ name: calls, rate: ${RATE}/s, burst: 10 }`,
    rule: { kind: 'rate', count: RATE, periodMs: 1000, burst: 10 },
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', rps: 4 * RATE, workers: 16, retry: 'once' }],
    utilAim: true,
  },
  {
    key: 'rate-b1-queue',
    title: `rate ${RATE}/s, burst 1, queue 1s`,
    limitYaml: `{ name: calls, rate: ${RATE}/s }`,
    onLimit: '{ queue: 1s }',
    rule: { kind: 'rate', count: RATE, periodMs: 1000, burst: 1 },
    tenants: [{ name: 'a' }],
    // Closed loop: 16 waiting at most, each ~16 slots (320 ms) from its turn, inside the queue time.
    loads: [{ tenant: 'a', workers: 16, retry: 'once' }],
    utilAim: true,
  },
  {
    key: 'retry-rate',
    title: `Retry-After probe: rate ${RATE}/s, 1 client`,
    limitYaml: `{ name: calls, rate: ${RATE}/s }`,
    rule: { kind: 'rate', count: RATE, periodMs: 1000, burst: 1 },
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', workers: 1, retry: 'once' }],
    retryAim: true,
  },
  {
    key: 'retry-fair',
    title: `Retry-After probe: fair ${FAIR_RATE}/s, 1 tenant, 1 client`,
    limitYaml: `{ name: shared, rate: ${FAIR_RATE}/s, share: fair }`,
    rule: { kind: 'rate', count: FAIR_RATE, periodMs: 1000, burst: 1 },
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', workers: 1, retry: 'once' }],
    retryAim: true,
  },
  {
    key: 'conc-reject',
    title: 'concurrency 8, /slow/50, reject',
    limitYaml: '{ name: inflight, concurrency: 8 }',
    rule: { kind: 'concurrency', limit: 8 },
    path: '/api/slow/50',
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', workers: 24, retry: 'once' }],
    utilAim: true,
  },
  {
    key: 'conc-queue',
    title: 'concurrency 8, /slow/50, queue 2s',
    limitYaml: '{ name: inflight, concurrency: 8 }',
    onLimit: '{ queue: 2s }',
    rule: { kind: 'concurrency', limit: 8 },
    path: '/api/slow/50',
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', workers: 24, retry: 'once' }],
    utilAim: true,
  },
  {
    key: 'quota',
    title: 'quota 200/h',
    limitYaml: '{ name: hourly, quota: 200/h }',
    rule: { kind: 'quota', count: 200, periodMs: HOUR },
    tenants: [{ name: 'a' }],
    loads: [{ tenant: 'a', rps: 150, workers: 8, retry: 'once' }],
    seconds: 3,
    utilAim: true,
  },
  {
    key: 'fair-equal',
    title: `fair ${FAIR_RATE}/s, 4 equal tenants flooding`,
    limitYaml: `{ name: shared, rate: ${FAIR_RATE}/s, share: fair }`,
    rule: { kind: 'rate', count: FAIR_RATE, periodMs: 1000, burst: 1 },
    tenants: ['a', 'b', 'c', 'd'].map((name) => ({ name, weight: 1 })),
    loads: ['a', 'b', 'c', 'd'].map((tenant) => ({ tenant, rps: 4 * FAIR_RATE, workers: 12, retry: 'once' })),
    targets: { a: FAIR_RATE / 4, b: FAIR_RATE / 4, c: FAIR_RATE / 4, d: FAIR_RATE / 4 },
    jain: ['a', 'b', 'c', 'd'],
    utilAim: true,
  },
  {
    key: 'fair-weighted',
    title: `fair ${FAIR_RATE}/s, weights 3:2:1 flooding`,
    limitYaml: `{ name: shared, rate: ${FAIR_RATE}/s, share: fair }`,
    rule: { kind: 'rate', count: FAIR_RATE, periodMs: 1000, burst: 1 },
    tenants: [
      { name: 'a', weight: 3 },
      { name: 'b', weight: 2 },
      { name: 'c', weight: 1 },
    ],
    loads: ['a', 'b', 'c'].map((tenant) => ({ tenant, rps: 4 * FAIR_RATE, workers: 12, retry: 'once' })),
    targets: { a: FAIR_RATE / 2, b: FAIR_RATE / 3, c: FAIR_RATE / 6 },
    utilAim: true,
  },
  {
    key: 'fair-reserve',
    title: `fair ${FAIR_RATE}/s, reserve 10/s vs a 100x flooder`,
    limitYaml: `{ name: shared, rate: ${FAIR_RATE}/s, share: fair }`,
    rule: { kind: 'rate', count: FAIR_RATE, periodMs: 1000, burst: 1 },
    // small's weight alone would give it 6/s; its reserve guarantees 10/s, which it asks for.
    tenants: [
      { name: 'flood', weight: 9 },
      { name: 'small', weight: 1, reserve: '10/s' },
    ],
    loads: [
      { tenant: 'flood', rps: 1000, workers: 12, retry: 'none' },
      { tenant: 'small', rps: 10, workers: 4, retry: 'once' },
    ],
    targets: { flood: FAIR_RATE - 10, small: 10 },
    utilAim: true,
  },
  {
    key: 'fair-reserve-persist',
    title: `fair ${FAIR_RATE}/s, reserve 10/s vs a 100x flooder, reserve client retries until admitted`,
    limitYaml: `{ name: shared, rate: ${FAIR_RATE}/s, share: fair }`,
    rule: { kind: 'rate', count: FAIR_RATE, periodMs: 1000, burst: 1 },
    tenants: [
      { name: 'flood', weight: 9 },
      { name: 'small', weight: 1, reserve: '10/s' },
    ],
    loads: [
      { tenant: 'flood', rps: 1000, workers: 12, retry: 'none' },
      { tenant: 'small', rps: 10, workers: 8, retry: 'persist' },
    ],
    targets: { flood: FAIR_RATE - 10, small: 10 },
    utilAim: true,
  },
];

const STORES = [
  { key: 'memory', label: 'memory, 1 instance', instances: 1 },
  { key: 'redis', label: `Redis, ${INSTANCES_ON_REDIS} instances`, instances: INSTANCES_ON_REDIS },
];

async function runScenario(s, store) {
  const prefix = `${BASE_PREFIX}-${s.key}`;
  const storeYaml = store.key === 'redis' ? `store: { type: redis, url: "${REDIS_URL}", prefix: ${prefix} }` : '';
  const runMs = (s.seconds ?? seconds) * 1000;
  if (s.rule.kind === 'quota') {
    // A run that straddles the hour would see two quota windows: start after the boundary instead.
    const left = HOUR - (Date.now() % HOUR);
    if (left < runMs + 10_000) {
      console.log(`    (waiting ${(left / 1000).toFixed(0)} s for the hour to turn, so the run sees one quota window)`);
      await sleep(left + 500);
    }
  }
  const gateways = await Promise.all(Array.from({ length: store.instances }, () => startGateway(s, storeYaml)));
  try {
    await rpc('reset');
    const start = nowMs() + 300;
    const deadline = start + runMs;
    const results = await Promise.all(
      s.loads.map((l) =>
        drive({
          gateways: gateways.map((g) => g.url),
          path: s.path ?? '/api/x',
          tenant: l.tenant,
          key: `${l.tenant}-fidelity-key-8e1c`,
          workers: l.workers,
          rps: l.rps,
          retry: l.retry,
          start,
          durationMs: runMs,
        }),
      ),
    );
    await sleep(200); // the last responses' ends reach the upstream's record
    const { list, inFlightMax } = await arrivals();
    const dead = gateways.filter((g) => g.child.exitCode !== null);
    if (dead.length) throw new Error(`${dead.map((g) => g.name).join(', ')} died during the run${dead[0].errTail()}`);
    return measure(s, store, list, inFlightMax, results, start, deadline);
  } finally {
    await Promise.all(gateways.map((g) => stopChild(g.child)));
    if (store.key === 'redis') await cleanRedis(REDIS_URL, prefix).catch((err) => console.error(`fidelity: Redis cleanup of ${prefix} failed: ${err.message}`));
  }
}

function measure(s, store, list, inFlightMax, results, start, deadline) {
  const rule = s.rule;
  const times = list.map((a) => a.at);
  const T = deadline - start;
  const m = { scenario: s.key, title: s.title, store: store.key, storeLabel: store.label, arrivals: list.length };

  // 1. Upstream violations.
  if (rule.kind === 'rate') {
    m.violations = rateViolations(times, rule);
    m.maxPerPeriod = maxInWindow(times, rule.periodMs);
    m.allowedPerPeriod = rule.count + rule.burst - 1;
    m.tightestMs = tightestSpan(times, rule);
  } else if (rule.kind === 'concurrency') {
    const sweep = concurrencySweep(list.map((a) => ({ start: a.at, end: a.end })), rule.limit);
    m.violations = sweep.over;
    m.maxInFlight = Math.max(sweep.max, inFlightMax);
  } else {
    const q = quotaViolations(times, rule);
    m.violations = q.excess;
    m.quotaWindows = q.windows;
  }

  // 2. Utilisation: admitted over what the rule could have admitted in [start, deadline].
  if (rule.kind === 'rate') {
    const admitted = times.filter((t) => t >= start && t <= deadline).length;
    m.capacity = (rule.count * T) / rule.periodMs + (rule.burst - 1);
    m.utilisation = admitted / m.capacity;
    m.admittedInRun = admitted;
    if (rule.burst === 1) {
      m.slotMs = rule.periodMs / rule.count;
      m.lostPerSlotMs = (1 - m.utilisation) * m.slotMs;
      // The store spaces burst-1 admissions a whole slot apart; arrivals closer than half a slot
      // were bunched on the way (gateway event loop, network, the upstream's own scheduling).
      const t = [...times].sort((a, b) => a - b);
      let bunched = 0;
      let minGap = Infinity;
      for (let i = 1; i < t.length; i++) {
        const gap = t[i] - t[i - 1];
        if (gap < m.slotMs / 2) bunched++;
        minGap = Math.min(minGap, gap);
      }
      m.bunched = bunched;
      m.minGapMs = minGap;
    }
  } else if (rule.kind === 'concurrency') {
    m.utilisation = busyMs(list.map((a) => ({ start: a.at, end: a.end })), start, deadline) / (rule.limit * T);
    m.admittedInRun = list.length;
  } else {
    m.capacity = rule.count * Math.max(1, m.quotaWindows);
    m.utilisation = list.length / m.capacity;
    m.admittedInRun = list.length;
  }

  // 3, 4. Shares after the settle time (the fair-share active window).
  if (s.targets) {
    const from = start + SETTLE_MS;
    const secs = (deadline - from) / 1000;
    m.rates = {};
    for (const t of Object.keys(s.targets)) m.rates[t] = list.filter((a) => a.tenant === t && a.at >= from && a.at <= deadline).length / secs;
    m.targets = s.targets;
    const names = Object.keys(s.targets);
    const sum = (f) => names.reduce((n, t) => n + f(t), 0);
    const got = sum((t) => m.rates[t]);
    const want = sum((t) => s.targets[t]);
    // Shares of what was admitted against the target shares: fairness apart from utilisation.
    m.shares = Object.fromEntries(names.map((t) => [t, got > 0 ? m.rates[t] / got : 0]));
    m.targetShares = Object.fromEntries(names.map((t) => [t, s.targets[t] / want]));
    if (s.jain) m.jain = jainIndex(s.jain.map((t) => m.rates[t]));
    // Jain's index of got/target: 1 when every tenant gets exactly its target share (weighted fairness).
    m.jainVsTarget = jainIndex(names.map((t) => m.shares[t] / m.targetShares[t]));
    m.worstShare = Math.min(...names.map((t) => m.shares[t] / m.targetShares[t]));
  }

  // 5. Retry-After: refused first attempts retried once after exactly retryAfterMs.
  const polite = results.filter((r, i) => s.loads[i].retry === 'once' || s.loads[i].retry === 'persist');
  m.retry = {
    refused: polite.reduce((n, r) => n + r.refused, 0),
    sent: polite.reduce((n, r) => n + r.retry.sent, 0),
    admitted: polite.reduce((n, r) => n + r.retry.admitted, 0),
    skipped: polite.reduce((n, r) => n + r.retry.skipped, 0),
    later: polite.reduce((n, r) => n + r.retry.later, 0),
    laterAdmitted: polite.reduce((n, r) => n + r.retry.laterAdmitted, 0),
    medianRetryAfterMs: median(polite.flatMap((r) => r.refusals.map((x) => x[1]))),
    medianSecondWaitMs: median(polite.flatMap((r) => r.retry.secondWaitMs)),
  };
  m.retry.share = m.retry.sent > 0 ? m.retry.admitted / m.retry.sent : NaN;
  if (rule.kind === 'quota') {
    // The quota's Retry-After should point at the end of the calendar hour: its error, in ms, from
    // the refusal's arrival at the client (the gateway decided a little earlier, so >= 0 is right).
    const errs = results.flatMap((r) => r.refusals.filter((x) => x[2] === 'quota_exceeded').map(([at, wait]) => wait - (HOUR - (at % HOUR))));
    m.quotaRetryAfterErrMs = errs.length ? { min: Math.min(...errs), max: Math.max(...errs), n: errs.length } : undefined;
  }

  // Client side: what they saw.
  m.client = {
    sent: results.reduce((n, r) => n + r.sent + r.retry.sent, 0),
    admitted: results.reduce((n, r) => n + r.admitted, 0),
    errors: results.reduce((n, r) => n + r.errors, 0),
    other: results.reduce((n, r) => n + Object.entries(r.statuses).filter(([st]) => st !== '200' && st !== '429').reduce((k, [, c]) => k + c, 0), 0),
    statuses: results.reduce((acc, r) => {
      for (const [st, c] of Object.entries(r.statuses)) acc[st] = (acc[st] ?? 0) + c;
      return acc;
    }, {}),
  };
  return m;
}

// ---------------------------------------------------------------------------------------------
// Formatting (shared number formats and table(): bench/lib/format.mjs).

const pct = (x, d = 1) => (Number.isFinite(x) ? `${(100 * x).toFixed(d)}%` : '–');

function violationText(m) {
  if (m.maxPerPeriod !== undefined) {
    return `${m.violations} (max ${m.maxPerPeriod} in any 1 s, allowed ${m.allowedPerPeriod}; tightest ${m.allowedPerPeriod + 1} arrivals within ${f1(m.tightestMs)} ms)`;
  }
  if (m.maxInFlight !== undefined) return `${m.violations} (max ${m.maxInFlight} in flight)`;
  return `${m.violations} (${m.arrivals} admitted, ${m.quotaWindows} window${m.quotaWindows === 1 ? '' : 's'})`;
}

function sharesText(m) {
  if (!m.rates) return '–';
  return Object.keys(m.targets)
    .map((t) => `${t} ${f1(m.rates[t])}/${f1(m.targets[t])}`)
    .join(', ');
}

function shareText(m) {
  if (!m.shares) return '–';
  return Object.keys(m.targets)
    .map((t) => `${t} ${pct(m.shares[t])}/${pct(m.targetShares[t])}`)
    .join(', ');
}

function retryText(m) {
  if (m.retry.sent === 0) return m.retry.refused > 0 ? `not retried (${m.retry.refused} refused, wait > run)` : '–';
  return `${pct(m.retry.share)} (${m.retry.admitted}/${m.retry.sent})`;
}

function printScenario(m) {
  const lines = [
    `  ${m.storeLabel.padEnd(21)} violations ${violationText(m)}`,
    `  ${''.padEnd(21)} utilisation ${pct(m.utilisation)}` +
      (m.capacity !== undefined ? ` (${m.admittedInRun} admitted / ${f1(m.capacity)} capacity)` : ` (${m.admittedInRun} admitted)`) +
      // With burst 1 every ms between a slot opening and the next decision is lost: that per slot.
      (m.lostPerSlotMs !== undefined ? `; idle per slot ${f1(m.lostPerSlotMs)} ms of ${f1(m.slotMs)}` : ''),
    ...(m.bunched !== undefined
      ? [`  ${''.padEnd(21)} spacing at the upstream: smallest gap ${f1(m.minGapMs)} ms, ${m.bunched} of ${Math.max(0, m.arrivals - 1)} gaps under half a slot (bunched after the decision)`]
      : []),
  ];
  if (m.rates) {
    lines.push(`  ${''.padEnd(21)} after ${SETTLE_MS} ms, req/s got/target: ${sharesText(m)}; share of admitted got/target: ${shareText(m)}`);
    lines.push(`  ${''.padEnd(21)} ${m.jain !== undefined ? `Jain ${f3(m.jain)}, ` : ''}Jain of share/target share ${f3(m.jainVsTarget)}, worst share/target share ${pct(m.worstShare, 0)}`);
  }
  lines.push(`  ${''.padEnd(21)} retry after exactly retryAfterMs: ${retryText(m)}; median retryAfterMs ${f1(m.retry.medianRetryAfterMs)}` +
    (Number.isFinite(m.retry.medianSecondWaitMs) ? `, refused again with median ${f1(m.retry.medianSecondWaitMs)} ms to wait` : '') +
    (m.retry.later > 0 ? `; later retries ${m.retry.later}, ${m.retry.laterAdmitted} admitted` : ''));
  if (m.quotaRetryAfterErrMs) {
    lines.push(`  ${''.padEnd(21)} quota Retry-After minus ms to the hour's end: ${f1(m.quotaRetryAfterErrMs.min)} to ${f1(m.quotaRetryAfterErrMs.max)} ms (${m.quotaRetryAfterErrMs.n} refusals)`);
  }
  lines.push(`  ${''.padEnd(21)} clients: ${m.client.sent} sent, ${m.client.admitted} admitted, statuses ${JSON.stringify(m.client.statuses)}` +
    (m.client.errors ? `, ${m.client.errors} ERRORS` : '') + (m.client.admitted !== m.arrivals ? ` (upstream saw ${m.arrivals})` : ''));
  console.log(lines.join('\n'));
}

// ---------------------------------------------------------------------------------------------
// Parts 2 and 3: child scripts.

function runChild(label, cmd, args, extraEnv, onLine) {
  return new Promise((resolvePromise, reject) => {
    const child = track(spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, ...extraEnv } }), label);
    let out = '';
    let err = '';
    const feed = (stream, sink) => {
      let buf = '';
      stream.on('data', (d) => {
        buf += d;
        sink(String(d));
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
    };
    feed(child.stdout, (d) => (out += d));
    feed(child.stderr, (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`${label} exited ${code}:\n${err.slice(-3000)}`))));
  });
}

/** The OAuth2 token scenario: token.mjs prints its own lines (header included) and leaves its figures in a file. */
async function tokenScenario() {
  const jsonFile = join(work, 'token.json');
  await runChild(
    'token',
    process.execPath,
    [join(HERE, 'token.mjs')],
    { FIDELITY_TOKEN_JSON: jsonFile, FIDELITY_TOKEN_SECONDS: String(TOKEN_SECONDS), FIDELITY_REDIS_URL: REDIS_URL },
    (line) => console.log(line),
  );
  return JSON.parse(readFileSync(jsonFile, 'utf8'));
}

/** The learned-limit scenario: learned.mjs prints its own lines (header included) and leaves its figures in a file. */
async function learnedScenario() {
  const jsonFile = join(work, 'learned.json');
  await runChild(
    'learned',
    process.execPath,
    [join(HERE, 'learned.mjs')],
    { FIDELITY_LEARNED_JSON: jsonFile, FIDELITY_LEARNED_SECONDS: String(LEARNED_SECONDS), FIDELITY_REDIS_URL: REDIS_URL },
    (line) => console.log(line),
  );
  return JSON.parse(readFileSync(jsonFile, 'utf8'));
}

async function decisionCost() {
  const [cmd, args] = PIN ? ['taskset', ['-c', '1', process.execPath, join(HERE, 'decide.mjs')]] : [process.execPath, [join(HERE, 'decide.mjs')]];
  const out = await runChild('decide', cmd, args, { FIDELITY_ROUNDS: String(ROUNDS), FIDELITY_REDIS_URL: REDIS_URL }, (line) => {
    if (line.startsWith('  decide')) console.log(line);
  });
  const m = /DECIDE_JSON (\{.*\})/.exec(out);
  if (!m) throw new Error('decide.mjs printed no figures');
  return JSON.parse(m[1]);
}

async function overhead() {
  const jsonFile = join(work, 'overhead.json');
  const script = join(ROOT, 'bench/overhead/bench.mjs');
  // As bench/overhead/run.sh does: the driver (and so wrk) on core 0, the servers on core 1.
  const [cmd, args] = PIN ? ['taskset', ['-c', '0', process.execPath, script]] : [process.execPath, [script]];
  await runChild(
    'overhead',
    cmd,
    args,
    {
      BENCH_TARGETS: 'sluice,sluice-limits,sluice-limits-redis',
      BENCH_JSON: jsonFile,
      BENCH_ROUNDS: String(ROUNDS),
      BENCH_SECONDS: String(WRK_SECONDS),
      BENCH_CONNECTIONS: WRK_CONNECTIONS,
      BENCH_REDIS_URL: REDIS_URL,
    },
    (line) => {
      if (/^\[\s*\d+\/\d+\]|idle check|WARNING|pinning|^bench:/.test(line)) console.log(`  ${line}`);
    },
  );
  return JSON.parse(readFileSync(jsonFile, 'utf8'));
}

// ---------------------------------------------------------------------------------------------

async function main() {
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npx tsc -b` first');
  if (!(await redisAnswers(REDIS_URL))) throw new Error(`Redis does not answer at ${REDIS_URL} (start it, or set FIDELITY_REDIS_URL)`);
  const began = Date.now();
  console.log(
    [
      'Sluice limit fidelity benchmark',
      `  machine   ${cpus().length} x ${cpus()[0]?.model?.trim()}, Linux ${release()}, Node ${process.version}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')} at start`,
      `  gateways  node dist/cli.js start --no-watch, log level info (request log to /dev/null); memory store: 1 instance; Redis (${REDIS_URL}): ${INSTANCES_ON_REDIS} instances sharing one prefix (${BASE_PREFIX}-*, deleted afterwards)`,
      `  upstream  bench/fidelity/upstream.mjs in its own process, recording each arrival; clients (undici) in this process, round robin over the instances, a retry to the next instance`,
      `  scenarios ${seconds} s each (quota 3 s), shares measured after ${SETTLE_MS} ms; not pinned (3 gateways, Redis, upstream and clients share the cores)`,
      `  token     bench/fidelity/token.mjs: OAuth2 refresh on ${INSTANCES_ON_REDIS} instances sharing Redis, 401 storms, ${TOKEN_SECONDS} s on a clock scaled 1:60`,
      `  learned   bench/fidelity/learned.mjs: an upstream limited below the configured rate, 429 + Retry-After; feedback on vs off, ${LEARNED_SECONDS} s per run`,
      '',
    ].join('\n'),
  );

  const scenarioResults = [];
  let token;
  let learned;
  if (PARTS.has('scenarios')) {
    const chosen = SCENARIOS.filter((s) => !ONLY || ONLY.has(s.key));
    if (chosen.length) await startUpstream();
    for (const s of chosen) {
      console.log(`### ${s.title}  [${s.key}]`);
      for (const store of STORES) {
        const m = await runScenario(s, store);
        scenarioResults.push({ ...m, utilAim: s.utilAim, retryAim: s.retryAim, jainAim: !!s.jain });
        printScenario(m);
      }
      console.log('');
    }
    if (chosen.length) await stopChild(upstream.child);
    if (!ONLY || ONLY.has('token')) {
      token = await tokenScenario();
      console.log('');
    }
    if (!ONLY || ONLY.has('learned')) {
      learned = await learnedScenario();
      console.log('');
    }
  }

  let decide;
  if (PARTS.has('decide')) {
    console.log(`### Decision cost: store.decide() straight on the store classes (${ROUNDS} rounds, medians)`);
    decide = await decisionCost();
    console.log('');
  }

  let ov;
  if (PARTS.has('overhead')) {
    console.log(`### Throughput through the gateway, limits off vs on (bench/overhead, wrk, ${ROUNDS} rounds x ${WRK_SECONDS} s, medians)`);
    ov = await overhead();
    console.log('');
  }

  // ---- summary
  const out = ['', `## Summary (bench/fidelity, ${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores, Node ${process.version}; shared noisy machine)`, ''];
  const checks = [];
  if (scenarioResults.length) {
    out.push(
      '**Limit fidelity** (upstream violations must be 0; utilisation = admitted / what the rule allows over the run; shares after the first second; retry = share of refused requests admitted when sent again after exactly `retryAfterMs`)',
      '',
      table(
        ['scenario', 'store', 'violations', 'utilisation', 'Jain (equal weights)', 'share of admitted, got / target', 'retry admitted'],
        scenarioResults.map((m) => [
          m.title,
          m.storeLabel,
          String(m.violations),
          pct(m.utilisation),
          m.jain !== undefined ? f3(m.jain) : '–',
          shareText(m),
          retryText(m),
        ]),
      ),
      '',
    );
    const viol = scenarioResults.filter((m) => m.violations > 0);
    const lowUtil = scenarioResults.filter((m) => m.utilAim && m.utilisation < 0.98);
    const lowJain = scenarioResults.filter((m) => m.jainAim && m.jain < 0.99);
    const lowShare = scenarioResults.filter((m) => m.worstShare !== undefined && m.worstShare < 0.9);
    const lowRetry = scenarioResults.filter((m) => m.retryAim && !(m.retry.share >= 0.99));
    const quota = scenarioResults.filter((m) => m.scenario === 'quota');
    checks.push(
      ['upstream violations', 'all 0', viol.length === 0 ? 'met' : `missed: ${viol.map((m) => `${m.scenario}/${m.store} ${m.violations}`).join(', ')}`],
      ['utilisation of flooded rules', '≥ 98%', lowUtil.length === 0 ? 'met' : `missed: ${lowUtil.map((m) => `${m.scenario}/${m.store} ${pct(m.utilisation)}`).join(', ')}`],
      ["Jain's index, equal tenants flooding", '≥ 0.99', lowJain.length === 0 ? 'met' : `missed: ${lowJain.map((m) => `${m.scenario}/${m.store} ${f3(m.jain)}`).join(', ')}`],
      ['worst tenant share / target share (weighted, reserve)', '≥ 90%', lowShare.length === 0 ? 'met' : `missed: ${lowShare.map((m) => `${m.scenario}/${m.store} ${pct(m.worstShare, 0)}`).join(', ')}`],
      ['retry after retryAfterMs admitted, single client', '≥ 99%', lowRetry.length === 0 ? 'met' : `missed: ${lowRetry.map((m) => `${m.scenario}/${m.store} ${pct(m.retry.share)}`).join(', ')}`],
      ...quota.map((m) => [`quota 200/h admitted, ${m.storeLabel}`, 'exactly 200', m.arrivals === 200 ? 'met' : `missed: ${m.arrivals}`]),
    );
  }
  if (token) {
    const t = token;
    const { every, max, per } = { every: t.budget.everyMs / 1000, max: t.budget.max, per: t.budget.perMs / 1000 };
    out.push(
      `**OAuth2 token refresh** (token.mjs: ${t.instances} instances sharing one token through Redis, ${t.workers} closed-loop clients, ${t.storms} 401 storms in ${t.seconds} s; clock 1:60, so refreshLimit { every: ${every}s, max: ${max}, per: ${per}s } is Zoho's ${max} per ${per} min; a request "waited" when it took ≥ the token endpoint's ${t.delayMs} ms or got 503 credentials_unavailable)`,
      '',
      table(
        ['scenario', 'endpoint calls', `most in any ${per} s (allowed ${max})`, `smallest gap, ms (every ${every * 1000})`, 'waited outside storms', 'waited in storms', 'requests outside / in storms'],
        [
          [
            'token, Redis, 3 instances',
            String(t.calls),
            String(t.maxInWindow),
            f1(t.minGapMs),
            String(t.outside.waited),
            String(t.during.waited),
            `${t.outside.n} / ${t.during.n}`,
          ],
        ],
      ),
      '',
    );
    checks.push(
      [`OAuth2 token-endpoint calls, ${t.instances} instances`, `≤ ${max} per ${per} s, ≥ ${every} s apart (−${t.toleranceMs} ms)`, t.budgetOk ? 'met' : `missed: ${t.overBudget} over the window, ${t.underEvery} too close`],
      ['requests that waited on a refresh outside 401 storms', '0', t.waitOk ? 'met' : `missed: ${t.outside.waited}`],
    );
  }
  if (learned) {
    const l = learned;
    out.push(
      `**Limits learned from the upstream** (learned.mjs: the upstream allows ${l.real.count} per ${l.real.windowMs / 1000} s fixed window (${l.realRps}/s) and answers 429 with Retry-After; the gateway's rule says ${l.configuredRps}/s; ${l.clients} open-loop clients at ${l.rps}/s together, a 429 is a failure and the client goes on; ${l.seconds} s per run, ${l.rounds} round${l.rounds === 1 ? '' : 's'}; a pause = an upstream window that had a 429, extra = its 429s after the first)`,
      '',
      table(
        ['store', 'feedback', 'upstream requests /s', 'accepted /s (real limit)', 'upstream 429s', 'extra 429s per pause, median / max', 'pauses learned', 'client success'],
        l.combined.map((c) => [
          c.storeLabel,
          c.variant === 'feedback' ? 'headers: true' : 'headers: false',
          f1(c.upstreamRps),
          `${f1(c.upstreamOkRps)} (${l.realRps})`,
          String(c.upstream429),
          `${f1(c.extrasMedian)} / ${c.extrasMax}`,
          String(c.pauses),
          pct(c.success),
        ]),
      ),
      '',
    );
    for (const c of l.combined.filter((x) => x.variant === 'feedback')) {
      checks.push([
        `extra upstream 429s per pause with feedback, ${c.storeLabel}`,
        `median ≤ ${l.aim.median}, max ≤ ${l.aim.max}`,
        c.aimMet ? `met (${f1(c.extrasMedian)} / ${c.extrasMax})` : `missed: ${f1(c.extrasMedian)} / ${c.extrasMax}`,
      ]);
    }
  }
  if (checks.length) out.push(table(['check', 'aim', 'result'], checks), '');
  if (decide) {
    const d = (store, set, o) => decide.results.find((r) => r.store === store && r.set === set && r.outstanding === o) ?? {};
    const sets = ['rate', 'rate+conc', 'fair x4'];
    out.push(
      `**Decision cost** (store.decide() on the store classes, no HTTP; decisions/s, medians of ${decide.rounds} rounds x ${decide.durationMs} ms; rate+conc includes the lease's release)`,
      '',
      table(
        ['rules', 'memory, 1 outstanding', 'memory p50 µs', 'Redis, 1 outstanding', 'Redis p50 / p99 µs', 'Redis, 64 outstanding', 'Redis server CPU µs/decision (64)'],
        sets.map((set) => [
          set,
          f0(d('memory', set, 1).perSecond),
          f1(d('memory', set, 1).p50us),
          f0(d('redis', set, 1).perSecond),
          `${f1(d('redis', set, 1).p50us)} / ${f1(d('redis', set, 1).p99us)}`,
          f0(d('redis', set, 64).perSecond),
          f1(d('redis', set, 64).redisUs),
        ]),
      ),
      '',
    );
  }
  if (ov) {
    const conns = [...new Set(ov.runs.map((r) => r.conns))].sort((a, b) => a - b);
    const M = (t, c) => ov.medians[`${t}/${c}`] ?? {};
    const rows = [];
    for (const c of conns) {
      for (const [t, label] of [['sluice', 'limits off'], ['sluice-limits', 'limits on, memory'], ['sluice-limits-redis', 'limits on, Redis']]) {
        const m = M(t, c);
        const off = M('sluice', c);
        rows.push([
          `c=${c}, ${label}`,
          f0(m.rps),
          f3(m.p50ms),
          f3(m.p99ms),
          f1(m.cpu),
          t === 'sluice' ? '1.00x' : ratio(m.rps / off.rps),
          t === 'sluice' ? '–' : pct(1 - m.rps / off.rps),
          String(m.errors ?? '–'),
        ]);
      }
    }
    out.push(
      `**Throughput, limits off vs on** (bench/overhead's request through one gateway: rate 1000000/s + concurrency 100000, never refusing; wrk 1 thread on core 0, gateway + upstream on core 1, Redis not pinned; medians of ${ROUNDS} rounds x ${WRK_SECONDS} s)`,
      '',
      table(['run', 'req/s', 'p50 ms', 'p99 ms', 'gateway CPU µs/req', 'req/s ÷ off', 'cost', 'errors'], rows),
      '',
    );
    const hi = Math.max(...conns);
    const costMem = 1 - M('sluice-limits', hi).rps / M('sluice', hi).rps;
    const costRedis = 1 - M('sluice-limits-redis', hi).rps / M('sluice', hi).rps;
    out.push(
      table(
        ['throughput cost of limits', 'value', 'aim', ''],
        [
          [`memory store, c=${hi}`, pct(costMem), '< 10%', costMem < 0.1 ? 'met' : 'missed'],
          [`Redis store, c=${hi}`, pct(costRedis), '< 25%', costRedis < 0.25 ? 'met' : 'missed'],
        ],
      ),
      '',
    );
  }
  out.push(`Whole run: ${((Date.now() - began) / 1000).toFixed(0)} s; load average at the end ${loadavg().map((x) => x.toFixed(2)).join(' ')}.`);
  console.log(out.join('\n'));
  const left = await cleanRedis(REDIS_URL, BASE_PREFIX);
  if (left > 0) console.log(`(${left} leftover Redis keys under ${BASE_PREFIX} deleted)`);
}

main().catch(async (err) => {
  if (stopping()) return;
  console.error(`fidelity: ${err.stack ?? err}`);
  await stopAll();
  await cleanRedis(REDIS_URL, BASE_PREFIX).catch(() => undefined);
  process.exit(1);
});
