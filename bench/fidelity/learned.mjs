// The fidelity benchmark's learned-limit scenario (issue 6): `node bench/fidelity/learned.mjs` after
// `npx tsc -b`, or `npm run bench:learned`; run.mjs also runs it (scenario key `learned`). See
// README.md here ("Limits learned from the upstream").
//
// The upstream's real limit is lower than the gateway's configured one: upstream.mjs in its limit
// mode allows 10 requests per fixed 2 s window (5/s) and answers the rest 429 with
// `Retry-After: <seconds until its window ends, rounded up>`, while the gateway's rule says
// `rate: 20/s, burst: 5`. Open-loop clients send 30/s through the gateway, with and without
// `feedback.headers` (variants interleaved, the same load for both), on the memory store (1
// instance) and on Redis (2 instances sharing one prefix). Afterwards, from the upstream's record:
//   - its 429s per window: the first one, and the "extra" ones after it (the gateway learned the
//     pause from the first; aim: close to 0 per pause with feedback);
//   - the requests that reached it per second, and those it accepted, against its real limit;
// and from the clients: the success rate (2xx / requests sent; a 429 is a failure and the client
// goes on to its next slot: it never waits out a Retry-After, so the figures show what the
// gateway alone spares the upstream); from the gateways' log: the pauses they learned.
//
// Environment: FIDELITY_LEARNED_SECONDS (24, per run, rounded up to whole windows; at least 6),
// FIDELITY_LEARNED_RPS (30, the clients' total rate), FIDELITY_LEARNED_CLIENTS (4),
// FIDELITY_LEARNED_ROUNDS (1: rounds of with/without per store, interleaved),
// FIDELITY_LEARNED_STORES ("memory,redis"), FIDELITY_REDIS_URL (redis://127.0.0.1:6379),
// FIDELITY_KEEP_TMP=1 (keep configs and gateway logs), FIDELITY_LEARNED_JSON=FILE (run.mjs: the
// figures go to FILE and the exit status is 0 whatever the verdict; alone, a missed aim exits 1).
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { trackChildren } from '../lib/children.mjs';
import { f1, table } from '../lib/format.mjs';
import { freePorts } from '../lib/ports.mjs';
import { cleanRedis, redisAnswers } from '../lib/redis.mjs';
import { waitReady } from '../lib/ready.mjs';
import { median } from './checks.mjs';
import { drive, nowMs } from './load.mjs';
import { startChildServer } from './child-server.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const env = process.env;
const int = (v, d, min = 1) => (v !== undefined && v !== '' && Number.isInteger(Number(v)) && Number(v) >= min ? Number(v) : d);
const REDIS_URL = env.FIDELITY_REDIS_URL ?? 'redis://127.0.0.1:6379';
const JSON_OUT = env.FIDELITY_LEARNED_JSON;
const PREFIX = `sluice-fidelity-learned-${process.pid}-${randomBytes(3).toString('hex')}`;

/** The upstream's real limit: fixed windows aligned to its clock. */
const REAL = { count: 10, windowMs: 2_000 };
const REAL_RPS = (REAL.count * 1000) / REAL.windowMs;
/** What the gateway is told (routes.yaml): four times the real limit, with a small burst. */
const CONFIGURED_RPS = 20;
const CONFIGURED_BURST = 5;
const SECONDS = Math.ceil(int(env.FIDELITY_LEARNED_SECONDS, 24, 6) / (REAL.windowMs / 1000)) * (REAL.windowMs / 1000);
const RPS = int(env.FIDELITY_LEARNED_RPS, 30);
const CLIENTS = int(env.FIDELITY_LEARNED_CLIENTS, 4);
const ROUNDS = int(env.FIDELITY_LEARNED_ROUNDS, 1);
const TENANT = { name: 'a', key: 'a-fidelity-key-8e1c' };
const ALL_STORES = [
  { key: 'memory', label: 'memory, 1 instance', instances: 1 },
  { key: 'redis', label: 'Redis, 2 instances', instances: 2 },
];
const wanted = new Set((env.FIDELITY_LEARNED_STORES ?? 'memory,redis').split(',').map((s) => s.trim()));
const STORES = ALL_STORES.filter((s) => wanted.has(s.key));
const VARIANTS = [
  { key: 'feedback', label: 'with feedback', yaml: '{ headers: true }' },
  { key: 'none', label: 'feedback.headers: false', yaml: '{ headers: false }' },
];
/** The aim, with feedback: extra 429s per pause (upstream window that had a 429), median and max. */
const AIM = { median: 0, max: 1 };

// ---------------------------------------------------------------------------------------------
// Processes.

const { work, track, stopChild, stopAll, stopping } = trackChildren({
  label: 'fidelity-learned',
  keepTmpVar: 'FIDELITY_KEEP_TMP',
  onSignal: () => cleanRedis(REDIS_URL, PREFIX),
});

let upstream;

async function startUpstream() {
  // Its windows are on its clock: upstream.offset is its clock minus ours.
  const server = await startChildServer(join(HERE, 'upstream.mjs'), [], { track, name: 'upstream' });
  upstream = { ...server, port: server.listening, url: `http://127.0.0.1:${server.listening}` };
}

const rpc = (cmd, more) => upstream.rpc(cmd, more);

function gatewayYaml(dir, port, adminPort, store, variant, prefix) {
  return `# Generated by bench/fidelity/learned.mjs (${store.key}, ${variant.key})
log: { level: info }
listen: { proxy: 127.0.0.1:${port}, admin: 127.0.0.1:${adminPort}, drainTimeout: 2s }
tls: { caDir: ${join(dir, 'ca')} }
${store.key === 'redis' ? `store: { type: redis, url: "${REDIS_URL}", prefix: ${prefix} }` : ''}
tenants:
  ${TENANT.name}: { key: ${TENANT.key} }
upstreams:
  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
    feedback: ${variant.yaml}
    limits:
      - { name: calls, rate: ${CONFIGURED_RPS}/s, burst: ${CONFIGURED_BURST} }
`;
}

let gatewaySeq = 0;
async function startGateway(store, variant, prefix, pauses) {
  const name = `gw${++gatewaySeq}-${store.key}-${variant.key}`;
  const [port, adminPort] = await freePorts(2);
  const dir = join(work, name);
  mkdirSync(dir);
  const configPath = join(dir, 'routes.yaml');
  writeFileSync(configPath, gatewayYaml(dir, port, adminPort, store, variant, prefix));
  const child = track(
    spawn(process.execPath, [join(ROOT, 'dist/cli.js'), 'start', '--config', configPath, '--no-watch'], {
      cwd: dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { PATH: env.PATH, NODE_ENV: 'production' },
    }),
    name,
  );
  // stdout: the request log (kept in the temp dir only with FIDELITY_KEEP_TMP=1) and the warnings,
  // among them one line per pause learned ("the upstream asked for a pause ...").
  const keep = env.FIDELITY_KEEP_TMP === '1' ? createWriteStream(join(dir, 'stdout')) : undefined;
  createInterface({ input: child.stdout }).on('line', (line) => {
    keep?.write(`${line}\n`);
    if (!line.includes('asked for a pause')) return;
    try {
      const o = JSON.parse(line);
      pauses.push({ at: o.time, gw: name, pauseMs: o.pauseMs, source: o.source });
    } catch {}
  });
  const errLines = [];
  createInterface({ input: child.stderr }).on('line', (line) => errLines.push(line));
  await waitReady(child, name, adminPort, () => `:\n${errLines.slice(-15).join('\n')}`);
  return { child, name, url: `http://127.0.0.1:${port}`, errLines };
}

// ---------------------------------------------------------------------------------------------
// One run: a store, a variant.

async function runOnce(store, variant, round) {
  const prefix = `${PREFIX}-${store.key}-${variant.key}-${round}`;
  const pauses = [];
  const gateways = await Promise.all(Array.from({ length: store.instances }, () => startGateway(store, variant, prefix, pauses)));
  try {
    await rpc('limit', REAL);
    await rpc('reset');
    // Start on one of the upstream's window boundaries, so that the run holds whole windows.
    const o = upstream.offset;
    const start = Math.ceil((nowMs() + 300 + o) / REAL.windowMs) * REAL.windowMs - o;
    const durationMs = SECONDS * 1000;
    const deadline = start + durationMs;
    // The clients' schedules are staggered by 1/RPS, so that together they send evenly at RPS
    // (started together, their requests would come in bunches of CLIENTS).
    const results = await Promise.all(
      Array.from({ length: CLIENTS }, (_, i) =>
        drive({
          gateways: gateways.map((g) => g.url),
          path: '/api/x',
          tenant: TENANT.name,
          key: TENANT.key,
          workers: 4,
          rps: RPS / CLIENTS,
          retry: 'none',
          start: start + (i * 1000) / RPS,
          durationMs: durationMs - (i * 1000) / RPS,
        }),
      ),
    );
    await sleep(300); // the last answers reach the record
    const { arrivals } = await rpc('dump');
    await rpc('limit', {});
    const dead = gateways.filter((g) => g.child.exitCode !== null);
    if (dead.length) throw new Error(`${dead.map((g) => g.name).join(', ')} died during the run:\n${dead[0].errLines.slice(-15).join('\n')}`);
    return measure(store, variant, round, { start, deadline, arrivals, results, pauses });
  } finally {
    await Promise.all(gateways.map((g) => stopChild(g.child)));
    if (store.key === 'redis') await cleanRedis(REDIS_URL, prefix).catch((err) => console.error(`fidelity-learned: Redis cleanup of ${prefix} failed: ${err.message}`));
  }
}

function measure(store, variant, round, { start, deadline, arrivals, results, pauses }) {
  const o = upstream.offset;
  const T = (deadline - start) / 1000;
  // Arrivals on the upstream's clock (its windows), kept when they fall in the run.
  const list = arrivals.map(([at, , , status]) => ({ at, status })).filter((a) => a.at - o >= start && a.at - o < deadline + 1_000);
  const firstWindow = Math.round((start + o) / REAL.windowMs);
  const windows = new Map();
  for (const a of list) {
    const k = Math.floor(a.at / REAL.windowMs) - firstWindow;
    const w = windows.get(k) ?? { ok: 0, limited: 0, firstLimitedAt: Infinity };
    if (a.status === 429) {
      w.limited++;
      w.firstLimitedAt = Math.min(w.firstLimitedAt, a.at);
    } else w.ok++;
    windows.set(k, w);
  }
  const paused = [...windows.values()].filter((w) => w.limited > 0);
  const extras = paused.map((w) => w.limited - 1);
  const inRun = list.filter((a) => a.at - o < deadline);
  const m = {
    store: store.key,
    storeLabel: store.label,
    variant: variant.key,
    variantLabel: variant.label,
    round,
    seconds: T,
    upstream: {
      requests: inRun.length,
      ok: inRun.filter((a) => a.status !== 429).length,
      limited: inRun.filter((a) => a.status === 429).length,
    },
    windows: Math.round(T / (REAL.windowMs / 1000)),
    windowsLimited: paused.length,
    extras: { total: extras.reduce((n, x) => n + x, 0), median: median(extras), max: extras.length ? Math.max(...extras) : 0, list: extras },
    // Pauses learned during the run (the log line's time is the gateway's Date.now(): our clock).
    pauses: pauses.filter((p) => p.at >= start && p.at < deadline + 1_000).length,
    pauseMs: median(pauses.map((p) => p.pauseMs)),
  };
  m.upstream.rps = m.upstream.requests / T;
  m.upstream.okRps = m.upstream.ok / T;
  const codes = {};
  for (const r of results) for (const [, , code] of r.refusals) codes[code || '(none)'] = (codes[code || '(none)'] ?? 0) + 1;
  const statuses = {};
  for (const r of results) for (const [st, c] of Object.entries(r.statuses)) statuses[st] = (statuses[st] ?? 0) + c;
  m.client = {
    sent: results.reduce((n, r) => n + r.sent, 0),
    ok: results.reduce((n, r) => n + r.admitted, 0),
    errors: results.reduce((n, r) => n + r.errors, 0),
    statuses,
    refusals: codes,
  };
  m.client.success = m.client.sent > 0 ? m.client.ok / m.client.sent : NaN;
  return m;
}

// ---------------------------------------------------------------------------------------------
// Report.

const pct = (x) => (Number.isFinite(x) ? `${(100 * x).toFixed(1)}%` : '–');
const L = (label, text) => console.log(`  ${label.padEnd(34)} ${text}`);

function printRun(m) {
  L(
    `${m.storeLabel}, ${m.variantLabel}${ROUNDS > 1 ? ` #${m.round + 1}` : ''}`,
    `upstream: ${m.upstream.requests} requests (${f1(m.upstream.rps)}/s), ${m.upstream.ok} accepted (${f1(m.upstream.okRps)}/s, real limit ${REAL_RPS}/s), ${m.upstream.limited} answered 429`,
  );
  L(
    '',
    `windows with a 429: ${m.windowsLimited} of ${m.windows}; extra 429s after the first, per window: median ${f1(m.extras.median)}, max ${m.extras.max}, total ${m.extras.total}` +
      (m.extras.list.length && m.extras.list.length <= 16 ? ` [${m.extras.list.join(' ')}]` : ''),
  );
  L('', `pauses learned (gateway log lines): ${m.pauses}${m.pauses ? `, median ${f1(m.pauseMs)} ms` : ''}`);
  L(
    '',
    `clients: ${m.client.sent} sent, ${m.client.ok} succeeded (${pct(m.client.success)}); 429s by code ${JSON.stringify(m.client.refusals)}; statuses ${JSON.stringify(m.client.statuses)}` +
      (m.client.errors ? `, ${m.client.errors} ERRORS` : ''),
  );
}

/** Per store and variant, over the rounds: sums and the median/max of extras over every window. */
function combine(runs) {
  const out = [];
  for (const store of STORES) {
    for (const variant of VARIANTS) {
      const rs = runs.filter((r) => r.store === store.key && r.variant === variant.key);
      if (!rs.length) continue;
      const sum = (f) => rs.reduce((n, r) => n + f(r), 0);
      const extras = rs.flatMap((r) => r.extras.list);
      const T = sum((r) => r.seconds);
      out.push({
        store: store.key,
        storeLabel: store.label,
        variant: variant.key,
        variantLabel: variant.label,
        seconds: T,
        upstreamRequests: sum((r) => r.upstream.requests),
        upstreamOk: sum((r) => r.upstream.ok),
        upstream429: sum((r) => r.upstream.limited),
        upstreamRps: sum((r) => r.upstream.requests) / T,
        upstreamOkRps: sum((r) => r.upstream.ok) / T,
        windows: sum((r) => r.windows),
        windowsLimited: sum((r) => r.windowsLimited),
        extrasMedian: median(extras),
        extrasMax: extras.length ? Math.max(...extras) : 0,
        extrasTotal: extras.reduce((n, x) => n + x, 0),
        pauses: sum((r) => r.pauses),
        clientSent: sum((r) => r.client.sent),
        clientOk: sum((r) => r.client.ok),
        clientErrors: sum((r) => r.client.errors),
        success: sum((r) => r.client.ok) / Math.max(1, sum((r) => r.client.sent)),
      });
    }
  }
  for (const c of out) {
    if (c.variant !== 'feedback') continue;
    c.aimMet = c.windowsLimited === 0 || (c.extrasMedian <= AIM.median && c.extrasMax <= AIM.max);
  }
  return out;
}

function summaryTable(combined) {
  return table(
    ['store', 'variant', 'upstream requests (/s)', 'accepted /s (real limit)', 'upstream 429s', 'windows with a 429', 'extra 429s per pause, median / max', 'pauses learned', 'client success'],
    combined.map((c) => [
      c.storeLabel,
      c.variantLabel,
      `${c.upstreamRequests} (${f1(c.upstreamRps)})`,
      `${f1(c.upstreamOkRps)} (${REAL_RPS})`,
      String(c.upstream429),
      `${c.windowsLimited} / ${c.windows}`,
      `${f1(c.extrasMedian)} / ${c.extrasMax}`,
      String(c.pauses),
      `${pct(c.success)} (${c.clientOk}/${c.clientSent})`,
    ]),
  );
}

async function main() {
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npx tsc -b` first');
  if (STORES.some((s) => s.key === 'redis') && !(await redisAnswers(REDIS_URL))) {
    throw new Error(`Redis does not answer at ${REDIS_URL} (start it, set FIDELITY_REDIS_URL, or FIDELITY_LEARNED_STORES=memory)`);
  }
  console.log(
    [
      `### Limits learned from the upstream: real limit ${REAL.count} per ${REAL.windowMs / 1000} s (${REAL_RPS}/s), gateway told ${CONFIGURED_RPS}/s  [learned]`,
      ...(JSON_OUT ? [] : [`  machine   ${cpus().length} x ${cpus()[0]?.model?.trim()}, Linux ${release()}, Node ${process.version}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`]),
      `  upstream  upstream.mjs with a real limit: fixed ${REAL.windowMs / 1000} s windows of ${REAL.count}, over it 429 with Retry-After = whole seconds to the window's end (rounded up)`,
      `  gateways  rate: ${CONFIGURED_RPS}/s, burst: ${CONFIGURED_BURST}; ${STORES.map((s) => s.label).join(' and ')}${STORES.some((s) => s.key === 'redis') ? ` (prefix ${PREFIX}-*, deleted afterwards)` : ''}; ` +
        `feedback: { headers: true } vs { headers: false }, interleaved, ${ROUNDS} round${ROUNDS === 1 ? '' : 's'}`,
      `  load      ${CLIENTS} open-loop clients, ${RPS}/s together (staggered: evenly spaced), round robin over the instances, ${SECONDS} s per run from a window boundary; a 429 counts as a failure and the client goes on (no waiting out Retry-After)`,
    ].join('\n'),
  );
  await startUpstream();
  const runs = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      for (const store of STORES) {
        // Interleaved; the order alternates between rounds.
        const order = round % 2 === 0 ? VARIANTS : [...VARIANTS].reverse();
        for (const variant of order) {
          const m = await runOnce(store, variant, round);
          runs.push(m);
          printRun(m);
        }
      }
    }
  } finally {
    await stopChild(upstream.child);
  }
  const combined = combine(runs);
  console.log('');
  console.log(summaryTable(combined));
  console.log('');
  const fb = combined.filter((c) => c.variant === 'feedback');
  for (const c of fb) {
    const off = combined.find((x) => x.store === c.store && x.variant === 'none');
    console.log(
      `  ${c.aimMet ? 'met' : 'MISSED'}: ${c.storeLabel}, extra 429s per pause with feedback median ${f1(c.extrasMedian)} / max ${c.extrasMax} (aim ≤ ${AIM.median} / ≤ ${AIM.max})` +
        (off ? `; without feedback ${f1(off.extrasMedian)} / ${off.extrasMax}; upstream 429s ${c.upstream429} vs ${off.upstream429}; client success ${pct(c.success)} vs ${pct(off.success)}` : ''),
    );
  }
  const pass = fb.every((c) => c.aimMet);
  if (JSON_OUT) {
    writeFileSync(
      JSON_OUT,
      JSON.stringify({ real: REAL, realRps: REAL_RPS, configuredRps: CONFIGURED_RPS, rps: RPS, clients: CLIENTS, seconds: SECONDS, rounds: ROUNDS, aim: AIM, combined, runs }),
    );
  }
  return pass;
}

main()
  .then((pass) => {
    process.exitCode = pass || JSON_OUT ? 0 : 1;
  })
  .catch(async (err) => {
    if (stopping()) return;
    console.error(`fidelity-learned: ${err.stack ?? err}`);
    await stopAll();
    await cleanRedis(REDIS_URL, PREFIX).catch(() => undefined);
    process.exit(1);
  });
