// The overhead benchmark's driver (run by run.sh, after `tsc -b`): starts one upstream and every
// target in front of it, drives them with wrk in interleaved rounds, and prints medians and ratios.
//
//   targets   direct (wrk -> upstream), Sluice (dist/cli.js), nginx proxy_pass, bare forwarders on
//             undici and on http-proxy; all in front of the same Node upstream
//   load      wrk, 1 thread, pinned to BENCH_LOAD_CPU (core 0); targets and the upstream pinned to
//             BENCH_SERVER_CPU (core 1)
//   CPU       utime+stime of the proxy process(es) from /proc/PID/stat, before and after each run
//
// Environment: BENCH_SECONDS (5), BENCH_ROUNDS (3), BENCH_WARMUP seconds (2), BENCH_CONNECTIONS
// ("1,50"), BENCH_LOAD_CPU (0), BENCH_SERVER_CPU (1), BENCH_TARGETS (comma list of target keys,
// default: all but the opt-in ones; keys: sluice nginx undici httpproxy, and opt-in sluice-quiet
// sluice-limits sluice-limits-redis), BENCH_BASELINE=DIR (also run DIR/dist/cli.js, another build of
// the gateway, e.g. a worktree of an earlier commit, as target sluice-baseline: changes compared in
// one interleaved run), BENCH_PROFILE=1 (afterwards, profile the gateway under load with --cpu-prof into
// /tmp and summarise it), BENCH_JSON=FILE (also write every run's figures there), BENCH_REDIS_URL
// (redis://127.0.0.1:6379, for sluice-limits-redis).
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync, existsSync } from 'node:fs';
import { request } from 'node:http';
import { cpus, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { trackChildren } from '../lib/children.mjs';
import { CLK_TCK, coreTicks, cpuTicks } from '../lib/cpu.mjs';
import { f0, f1, f3, ratio, RUN_HEAD, runCells, table } from '../lib/format.mjs';
import { freePorts } from '../lib/ports.mjs';
import { firstLine, have, PIN, pinned, starter, stderrOf } from '../lib/spawn.mjs';
import { overheadSettings } from '../lib/settings.mjs';
import { summarise } from './profile-summary.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const env = process.env;
const { SECONDS, ROUNDS, WARMUP, CONNS, LOAD_CPU, SERVER_CPU, TENANT, KEY } = overheadSettings(env);

const ONLY = env.BENCH_TARGETS ? new Set(env.BENCH_TARGETS.split(',').map((s) => s.trim())) : undefined;
const PROFILE = env.BENCH_PROFILE === '1';
/** Another build of the gateway to compare with in the same run (a checkout with dist/ built). */
const BASELINE = env.BENCH_BASELINE ? resolve(env.BENCH_BASELINE) : undefined;
const REDIS_URL = env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
// The limits variants' store prefix: unique to this run, its Redis keys deleted at the end.
const REDIS_PREFIX = `sluice-bench-${process.pid}-${Date.now().toString(36)}`;
// Targets that run only when BENCH_TARGETS names them.
const OPT_IN = new Set(['sluice-quiet', 'sluice-limits', 'sluice-limits-redis']);
const AUTH_HEADER = `X-Sluice-Key: ${TENANT}:${KEY}`;
const PATH = '/bench/rest';

// ---------------------------------------------------------------------------------------------
// Processes: every child is remembered and ended at exit (run.sh's trap is the second net).

const { work, track, stopAll, stopping } = trackChildren({ label: 'bench', keepTmpVar: 'BENCH_KEEP_TMP' });
const start = starter({ work, track });

function get(url, headers = {}) {
  return new Promise((resolvePromise, reject) => {
    const req = request(url, { headers, agent: false, timeout: 2_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolvePromise({ status: res.statusCode, headers: res.headers, rawHeaders: res.rawHeaders, body: Buffer.concat(chunks) }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

async function waitForHttp(url, child, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) throw new Error(`${child.benchName} exited (${child.exitCode})${stderrOf(child)}`);
    try {
      return await get(url, { 'x-sluice-key': `${TENANT}:${KEY}` });
    } catch (err) {
      last = err;
      await sleep(100);
    }
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms (${last?.message})${child ? stderrOf(child) : ''}`);
}

// ---------------------------------------------------------------------------------------------
// CPU accounting.

function childPids(pid) {
  try {
    return readdirSync(`/proc/${pid}/task`).flatMap((tid) =>
      readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number),
    );
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------------------------------------
// wrk.

async function wrk(url, conns, seconds) {
  const [cmd, args] = pinned(LOAD_CPU, 'wrk', [
    '-t1', `-c${conns}`, `-d${seconds}s`, '--timeout', '5s', '--latency',
    '-s', join(HERE, 'report.lua'), '-H', AUTH_HEADER, url,
  ]);
  const child = track(spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }), 'wrk');
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const killer = setTimeout(() => child.kill('SIGKILL'), (seconds + 30) * 1000);
  const [code] = await once(child, 'exit');
  clearTimeout(killer);
  const m = /BENCH_JSON (\{.*\})/.exec(out);
  if (code !== 0 || !m) throw new Error(`wrk failed (exit ${code}) on ${url}:\n${out}\n${err}`);
  return JSON.parse(m[1]);
}

// ---------------------------------------------------------------------------------------------
// Targets.

// The limits variants (opt-in targets sluice-limits and sluice-limits-redis): a rate rule and a
// concurrency rule so generous that they never refuse, so every request pays for a decision (and
// a lease and its release) without any being turned away.
const GENEROUS_LIMITS = `    limits:
      - { name: generous, rate: 1000000/s, burst: 1000 }
      - { name: inflight, concurrency: 100000 }
`;

function sluiceConfig(dir, port, adminPort, upstreamPort, logLevel, limits) {
  const store = limits === 'redis' ? `store: { type: redis, url: "${REDIS_URL}", prefix: ${REDIS_PREFIX} }\n` : '';
  return `# Generated by bench/overhead: one tenant, one upstream, the gateway's defaults otherwise.
${logLevel ? `log: { level: ${logLevel} }\n` : ''}${store}listen:
  proxy: 127.0.0.1:${port}
  admin: 127.0.0.1:${adminPort}
tls:
  caDir: ${join(dir, 'ca')}
tenants:
  ${TENANT}: { key: ${KEY} }
upstreams:
  bench:
    match: { prefix: /bench }
    target: http://127.0.0.1:${upstreamPort}
    allowPrivate: true
${limits ? GENEROUS_LIMITS : ''}`;
}

/** Deletes the Redis keys the sluice-limits-redis target left (ioredis is loaded only then). */
async function cleanRedis() {
  const { Redis } = await import('ioredis');
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  try {
    let cursor = '0';
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `*${REDIS_PREFIX}*`, 'COUNT', 1000);
      if (keys.length > 0) await client.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    client.disconnect();
  }
}

async function startSluice(name, upstreamPort, { nodeArgs = [], logLevel, limits, root = ROOT } = {}) {
  const [port, adminPort] = await freePorts(2);
  const dir = join(work, name);
  mkdirSync(dir);
  const configPath = join(dir, 'routes.yaml');
  writeFileSync(configPath, sluiceConfig(dir, port, adminPort, upstreamPort, logLevel, limits));
  // stdout is the request log (one JSON line per request): to /dev/null.
  const child = start(name, SERVER_CPU, process.execPath, [...nodeArgs, join(root, 'dist/cli.js'), 'start', '--config', configPath], {
    stdout: 'null',
    cwd: dir,
  });
  const url = `http://127.0.0.1:${port}${PATH}`;
  await waitForHttp(url, child);
  return { child, url, pids: () => [child.pid], configPath };
}

async function startNodeForwarder(name, script, upstreamPort) {
  const child = start(name, SERVER_CPU, process.execPath, [join(HERE, script), '0', `http://127.0.0.1:${upstreamPort}`]);
  const [, port] = await firstLine(child, /listening (\d+)/);
  return { child, url: `http://127.0.0.1:${port}${PATH}`, pids: () => [child.pid] };
}

async function startNginx(upstreamPort) {
  const [port] = await freePorts(1);
  const dir = join(work, 'nginx');
  mkdirSync(join(dir, 'tmp'), { recursive: true });
  const conf = join(dir, 'nginx.conf');
  writeFileSync(
    conf,
    `# Generated by bench/overhead: 1 worker, keep-alive to the upstream, no access log.
worker_processes 1;
daemon off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  upstream bench_upstream {
    server 127.0.0.1:${upstreamPort};
    keepalive 64;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://bench_upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`,
  );
  const child = start('nginx', SERVER_CPU, 'nginx', ['-p', dir, '-e', `${dir}/error.log`, '-c', conf]);
  const url = `http://127.0.0.1:${port}${PATH}`;
  await waitForHttp(url, child);
  return { child, url, pids: () => [child.pid, ...childPids(child.pid)], errorLog: `${dir}/error.log` };
}

/** First line a tool prints about its version (nginx -v writes to stderr, wrk -v exits 1). */
function version(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return `${r.stdout ?? ''}\n${r.stderr ?? ''}`.split('\n').map((l) => l.trim()).find(Boolean)?.replace(/ Copyright.*$/, '') ?? 'unknown';
}

// ---------------------------------------------------------------------------------------------
// Statistics (number formats and table(): bench/lib/format.mjs).

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// ---------------------------------------------------------------------------------------------

async function main() {
  if (CONNS.length === 0) throw new Error('BENCH_CONNECTIONS names no concurrency');
  if (!have('wrk')) throw new Error('wrk is not installed (apt-get install -y wrk)');
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npx tsc -b` first');

  const upstream = start('upstream', SERVER_CPU, process.execPath, [join(HERE, 'upstream.mjs'), '0']);
  const [, upstreamPortText, bodyBytes] = await firstLine(upstream, /listening (\d+) body=(\d+)/);
  const upstreamPort = Number(upstreamPortText);

  const targets = [{ key: 'direct', label: 'direct to upstream', url: `http://127.0.0.1:${upstreamPort}${PATH}`, pids: () => [] }];
  const skipped = [];
  // 'sluice-quiet' (the gateway with log.level silent, to see what the request log costs) and the
  // limits variants run only when BENCH_TARGETS names them.
  // The baseline runs whenever BENCH_BASELINE names one.
  const want = (key) => key === 'direct' || key === 'sluice-baseline' || (ONLY ? ONLY.has(key) : !OPT_IN.has(key));
  const tryStart = async (key, label, fn) => {
    if (!want(key)) return;
    try {
      targets.push({ key, label, ...(await fn()) });
    } catch (err) {
      skipped.push(`${label}: ${err.message.split('\n')[0]}`);
      console.error(`bench: ${label} not started: ${err.message}`);
    }
  };
  await tryStart('sluice', 'Sluice gateway', () => startSluice('sluice', upstreamPort));
  await tryStart('sluice-quiet', 'Sluice, log silent', () => startSluice('sluice-quiet', upstreamPort, { logLevel: 'silent' }));
  await tryStart('sluice-limits', 'Sluice, limits memory', () => startSluice('sluice-limits', upstreamPort, { limits: 'memory' }));
  await tryStart('sluice-limits-redis', 'Sluice, limits Redis', () => startSluice('sluice-limits-redis', upstreamPort, { limits: 'redis' }));
  if (BASELINE) {
    await tryStart('sluice-baseline', `Sluice baseline (${BASELINE})`, () => startSluice('sluice-baseline', upstreamPort, { root: BASELINE }));
  }
  if (have('nginx')) await tryStart('nginx', 'nginx proxy_pass', () => startNginx(upstreamPort));
  else if (want('nginx')) skipped.push('nginx proxy_pass: nginx is not installed');
  await tryStart('undici', 'undici forwarder', () => startNodeForwarder('undici', 'forward-undici.mjs', upstreamPort));
  await tryStart('httpproxy', 'http-proxy forwarder', () => startNodeForwarder('httpproxy', 'forward-http-proxy.mjs', upstreamPort));

  // Every target must answer the same request with the upstream's body before anything is timed.
  const reference = await get(targets[0].url);
  for (const t of targets) {
    const r = await get(t.url, { 'x-sluice-key': `${TENANT}:${KEY}` });
    if (r.status !== 200 || !r.body.equals(reference.body)) {
      throw new Error(`${t.label} answered ${r.status} ${r.body.toString().slice(0, 200)} instead of the upstream's body`);
    }
  }

  const setup = [
    `Sluice overhead benchmark: GET ${PATH} answered by a Node upstream with a ${bodyBytes}-byte JSON body`,
    `  machine   ${cpus().length} x ${cpus()[0]?.model?.trim()}, Linux ${release()}, Node ${process.version}`,
    `  tools     ${version('wrk', ['-v'])}; ${have('nginx') ? version('nginx', ['-v']) : 'nginx absent'}`,
    PIN
      ? `  pinning   wrk (1 thread) on core ${LOAD_CPU}; every proxy and the upstream on core ${SERVER_CPU} (taskset)`
      : `  pinning   NONE (fewer than 2 cores, no taskset, or BENCH_NO_PIN=1): figures are noisier`,
    `  runs      ${ROUNDS} rounds x ${SECONDS}s per target per concurrency (${CONNS.join(', ')}), targets interleaved, ${WARMUP}s warm-up each; medians reported`,
    `  gateway   node dist/cli.js start, log level info, request log (stdout) -> /dev/null; config: 1 tenant (X-Sluice-Key), 1 upstream, prefix /bench`,
    `  CPU       utime+stime of the proxy process from /proc/PID/stat (nginx: master + worker) / requests; clock tick ${1000 / CLK_TCK} ms`,
  ];
  console.log(setup.join('\n'));
  if (skipped.length) console.log(`  skipped   ${skipped.join('; ')}`);

  // Is anything else busy? Let the targets settle, then sample both cores for a second.
  await sleep(1000);
  const idleBefore = [coreTicks(LOAD_CPU), coreTicks(SERVER_CPU)];
  await sleep(1000);
  const idleAfter = [coreTicks(LOAD_CPU), coreTicks(SERVER_CPU)];
  const busyPct = idleAfter.map((a, i) => (100 * (a.busy - idleBefore[i].busy)) / Math.max(1, a.total - idleBefore[i].total));
  console.log(`  idle check  core ${LOAD_CPU} ${busyPct[0].toFixed(0)}% busy, core ${SERVER_CPU} ${busyPct[1].toFixed(0)}% busy before the runs`);
  if (busyPct.some((p) => p > 15)) console.log('  WARNING   something else is using the CPU: figures will be noisy');
  console.log('');

  if (WARMUP > 0) {
    for (const t of targets) await wrk(t.url, Math.max(...CONNS), WARMUP);
  }

  const runs = [];
  const total = ROUNDS * CONNS.length * targets.length;
  for (let round = 0; round < ROUNDS; round++) {
    for (const conns of CONNS) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length]);
      for (const t of order) {
        for (const other of targets) {
          if (other.child && other.child.exitCode !== null) throw new Error(`${other.label} died${stderrOf(other.child)}`);
        }
        const pids = t.pids();
        const ticks0 = pids.reduce((n, p) => n + cpuTicks(p, 0), 0);
        const up0 = cpuTicks(upstream.pid, 0);
        const core0 = coreTicks(SERVER_CPU);
        const w = await wrk(t.url, conns, SECONDS);
        const core1 = coreTicks(SERVER_CPU);
        const up1 = cpuTicks(upstream.pid, 0);
        const ticks1 = pids.reduce((n, p) => n + cpuTicks(p, 0), 0);
        const seconds = w.duration_us / 1e6;
        const tickUs = 1e6 / CLK_TCK;
        const run = {
          round: round + 1,
          target: t.key,
          conns,
          requests: w.requests,
          rps: w.requests / seconds,
          p50ms: w.p50_us / 1000,
          p90ms: w.p90_us / 1000,
          p99ms: w.p99_us / 1000,
          maxms: w.max_us / 1000,
          proxyCpuUsPerReq: t.key === 'direct' ? NaN : ((ticks1 - ticks0) * tickUs) / w.requests,
          upstreamCpuUsPerReq: ((up1 - up0) * tickUs) / w.requests,
          serverCoreBusyPct: (100 * (core1.busy - core0.busy)) / Math.max(1, core1.total - core0.total),
          // Time the hypervisor gave the server core to someone else (a VM's steal time).
          stealPct: (100 * (core1.steal - core0.steal)) / Math.max(1, core1.total - core0.total),
          // Busy time on the server core not billed to the proxy or the upstream (other processes,
          // and softirq work the kernel did not charge to them).
          otherPct: (100 * (core1.busy - core0.busy - (ticks1 - ticks0) - (up1 - up0))) / Math.max(1, core1.total - core0.total),
          errors: w.err_connect + w.err_read + w.err_write + w.err_status + w.err_timeout,
          errorDetail: w,
        };
        runs.push(run);
        console.log(
          `[${String(runs.length).padStart(2)}/${total}] round ${run.round} c=${String(conns).padEnd(3)} ${t.label.padEnd(21)} ` +
            `${f0(run.rps).padStart(7)} req/s  p50 ${f3(run.p50ms)} ms  p99 ${f3(run.p99ms)} ms  ` +
            `proxy CPU ${f1(run.proxyCpuUsPerReq).padStart(5)} µs/req  upstream ${f1(run.upstreamCpuUsPerReq)} µs/req  ` +
            `core ${SERVER_CPU} ${run.serverCoreBusyPct.toFixed(0)}% busy (other ${run.otherPct.toFixed(0)}%, steal ${run.stealPct.toFixed(0)}%)` +
            (run.errors ? `  ERRORS ${run.errors} (connect ${w.err_connect}, read ${w.err_read}, write ${w.err_write}, status ${w.err_status}, timeout ${w.err_timeout})` : ''),
        );
      }
    }
  }

  // ---- medians
  const med = new Map();
  for (const t of targets) {
    for (const conns of CONNS) {
      const rs = runs.filter((r) => r.target === t.key && r.conns === conns);
      med.set(`${t.key}/${conns}`, {
        rps: median(rs.map((r) => r.rps)),
        p50ms: median(rs.map((r) => r.p50ms)),
        p99ms: median(rs.map((r) => r.p99ms)),
        cpu: median(rs.map((r) => r.proxyCpuUsPerReq)),
        upCpu: median(rs.map((r) => r.upstreamCpuUsPerReq)),
        other: Math.max(...rs.map((r) => r.otherPct)),
        errors: rs.reduce((n, r) => n + r.errors, 0),
      });
    }
  }
  const M = (key, conns) => med.get(`${key}/${conns}`) ?? {};
  const has = (key) => targets.some((t) => t.key === key);
  const lo = Math.min(...CONNS);
  const hi = Math.max(...CONNS);

  const lines = ['', `## Results (medians of ${ROUNDS} rounds x ${SECONDS}s; wrk on core ${LOAD_CPU}, proxy + upstream on core ${SERVER_CPU})`, ''];
  for (const conns of CONNS) {
    const d = M('direct', conns);
    lines.push(`**Concurrency ${conns}**`, '');
    lines.push(
      table(
        ['target', ...RUN_HEAD, 'proxy CPU µs/req', 'upstream CPU µs/req', 'errors'],
        targets.map((t) => [t.label, ...runCells(M(t.key, conns), d, t.key === 'direct'), String(M(t.key, conns).errors)]),
      ),
      '',
    );
  }

  // ---- ratios against the aims
  const s = (c) => M('sluice', c);
  const checks = [];
  const check = (what, value, shown, aim, ok) => checks.push([what, shown, aim, Number.isFinite(value) ? (ok ? 'met' : 'missed') : '–']);
  if (has('sluice')) {
    const added = s(lo).p50ms - M('direct', lo).p50ms;
    if (lo === 1) check('Sluice added p50 latency, c=1', added, `${f3(added)} ms`, '< 0.100 ms', added < 0.1);
    else checks.push([`Sluice added p50 latency, c=${lo}`, `${f3(added)} ms`, '– (aim is at c=1)', '–']);
    if (has('undici')) {
      for (const c of CONNS) {
        const r = s(c).cpu / M('undici', c).cpu;
        check(`Sluice CPU/request ÷ undici forwarder, c=${c}`, r, `${ratio(r)} (${f1(s(c).cpu)} vs ${f1(M('undici', c).cpu)} µs)`, '≤ 1.15x', r <= 1.15);
      }
    }
    if (has('nginx')) {
      const r = s(hi).rps / M('nginx', hi).rps;
      check(`Sluice req/s ÷ nginx, c=${hi}`, r, ratio(r), '≥ 0.40x', r >= 0.4);
    }
    if (has('httpproxy')) {
      const r = s(hi).rps / M('httpproxy', hi).rps;
      check(`Sluice req/s ÷ http-proxy forwarder, c=${hi}`, r, ratio(r), '≥ 2.00x', r >= 2);
    }
    if (has('undici')) {
      const r = s(hi).rps / M('undici', hi).rps;
      checks.push([`Sluice req/s ÷ undici forwarder, c=${hi}`, ratio(r), '–', '–']);
    }
    for (const c of CONNS) {
      const r = s(c).rps / M('direct', c).rps;
      checks.push([`Sluice req/s ÷ direct, c=${c}`, ratio(r), '–', '–']);
    }
    if (has('sluice-baseline')) {
      for (const c of CONNS) {
        const b = M('sluice-baseline', c);
        checks.push([`Sluice CPU/request ÷ baseline, c=${c}`, `${ratio(s(c).cpu / b.cpu)} (${f1(s(c).cpu)} vs ${f1(b.cpu)} µs)`, '–', '–']);
        checks.push([`Sluice req/s ÷ baseline, c=${c}`, ratio(s(c).rps / b.rps), '–', '–']);
      }
    }
  }
  for (const t of targets) {
    if (t.key === 'direct' || t.key === 'sluice') continue;
    checks.push([`${t.label}: added p50 latency, c=${lo}`, `${f3(M(t.key, lo).p50ms - M('direct', lo).p50ms)} ms`, '–', '–']);
  }
  if (checks.length) lines.push('**Ratios**', '', table(['figure', 'value', 'aim', ''], checks), '');

  const errors = runs.reduce((n, r) => n + r.errors, 0);
  const noisy = Math.max(...runs.map((r) => r.otherPct));
  const steal = Math.max(...runs.map((r) => r.stealPct));
  lines.push(
    `Request: \`GET ${PATH}\` with \`${AUTH_HEADER.replace(KEY, '…')}\`, ${bodyBytes}-byte JSON answer; wrk -t1, keep-alive. ` +
      `Added p50 = p50 through the proxy − p50 direct. CPU = utime+stime of the proxy process per request (nginx: master + 1 worker). ` +
      `Sluice ran with its request log on stdout sent to /dev/null.`,
  );
  if (skipped.length) lines.push('', `Not measured: ${skipped.join('; ')}.`);
  lines.push(
    '',
    `Errors across all runs: ${errors}. Noise: at most ${Math.max(0, noisy).toFixed(0)}% of core ${SERVER_CPU} in one run went to work not billed to the proxy or ` +
      `the upstream (other processes, kernel), and at most ${steal.toFixed(0)}% was stolen by the hypervisor.`,
  );
  if (steal > 5 || noisy > 10) {
    lines.push(
      '',
      `WARNING: with ${steal > 5 ? `up to ${steal.toFixed(0)}% steal` : `up to ${noisy.toFixed(0)}% foreign load`} on core ${SERVER_CPU}, ` +
        'the c=1 latencies (sub-millisecond differences) are not trustworthy; rerun on a quieter machine before quoting them.',
    );
  }
  console.log(lines.join('\n'));

  if (env.BENCH_JSON) {
    writeFileSync(env.BENCH_JSON, JSON.stringify({ setup, runs, medians: Object.fromEntries(med) }, null, 2));
    console.log(`runs written to ${env.BENCH_JSON}`);
  }

  for (const t of targets) {
    if (t.errorLog && existsSync(t.errorLog)) {
      const text = readFileSync(t.errorLog, 'utf8').trim();
      if (text) console.log(`\n${t.label} error log:\n${text.split('\n').slice(-10).join('\n')}`);
    }
    if (t.child) {
      const text = stderrOf(t.child);
      if (text) console.log(`\n${t.label} stderr${text}`);
    }
  }

  if (PROFILE && has('sluice')) await profileSluice(upstreamPort, hi);
  await stopAll();
  if (has('sluice-limits-redis')) await cleanRedis().catch((err) => console.error(`bench: Redis keys under ${REDIS_PREFIX} not deleted: ${err.message}`));
}

/** A separate gateway under `node --cpu-prof`, driven like the others; its profile goes to /tmp. */
async function profileSluice(upstreamPort, conns) {
  // The measured targets stay idle meanwhile; only the profiled gateway and the upstream work.
  const profDir = mkdtempSync(join('/tmp', 'sluice-cpuprof-'));
  const g = await startSluice('sluice-profiled', upstreamPort, { nodeArgs: ['--cpu-prof', `--cpu-prof-dir=${profDir}`] });
  await wrk(g.url, conns, WARMUP || 1);
  const w = await wrk(g.url, conns, SECONDS);
  g.child.kill('SIGTERM');
  await once(g.child, 'exit');
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
  console.log(`\n## CPU profile of the gateway at c=${conns} (${f0(w.requests / (w.duration_us / 1e6))} req/s under the profiler)\n`);
  if (!file) {
    console.log(`no profile written in ${profDir}${stderrOf(g.child)}`);
    return;
  }
  console.log(summarise(join(profDir, file), 20));
  console.log(`\nprofile: ${join(profDir, file)} (open it in Chrome DevTools > Performance, or speedscope)`);
}

main().catch(async (err) => {
  if (stopping()) return; // a signal is already stopping everything; the wrk it killed is no news
  console.error(`bench: ${err.stack ?? err}`);
  await stopAll();
  if (ONLY?.has('sluice-limits-redis')) await cleanRedis().catch(() => undefined);
  process.exit(1);
});
