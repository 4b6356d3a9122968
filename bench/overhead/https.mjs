// The overhead benchmark's HTTPS_PROXY part (run by run.sh after the wrk part, or alone by
// run-https.sh = `npm run bench:https`): what an intercepted CONNECT tunnel costs against talking
// TLS to the upstream directly.
//
//   upstream  upstream-https.mjs: node:https with a leaf for api.bench.test and 127.0.0.1 signed by a
//             throwaway test CA (openssl, in the run's temp dir); the 96-byte JSON of upstream.mjs
//   gateway   node dist/cli.js start: one tenant, one upstream matching api.bench.test and
//             *.fresh.bench.test, intercept: true, target https://127.0.0.1:PORT (ca: the test CA),
//             its own CA in the temp dir (tls.caDir), read back from GET /status (tls.ca)
//   load      this process, with undici (wrk cannot CONNECT): closed loop, C workers each awaiting
//             one request at a time; through the gateway a ProxyAgent (CONNECT, then TLS with the
//             gateway's leaf), directly an Agent to https://127.0.0.1:PORT with servername
//             api.bench.test. Pinned to BENCH_LOAD_CPU by the shell script; the gateway and the
//             upstream to BENCH_SERVER_CPU (taskset)
//   tunnels   the first request on a new ProxyAgent (TCP + CONNECT + TLS handshake + request), to
//             api.bench.test (leaf cached) and to h<i>.fresh.bench.test (a new leaf each time),
//             against a new direct TLS connection
//
// Environment: BENCH_SECONDS (5), BENCH_ROUNDS (3), BENCH_WARMUP seconds (2), BENCH_CONNECTIONS
// ("1,50"), BENCH_TUNNELS (50), BENCH_LOAD_CPU (0), BENCH_SERVER_CPU (1), BENCH_NO_PIN=1,
// BENCH_HTTPS_JSON=FILE (also write every figure there), BENCH_KEEP_TMP=1.
//
// No DNS: the ProxyAgent hands the host name to the gateway in the CONNECT, the gateway connects to
// its target 127.0.0.1, and the direct client connects to 127.0.0.1 with a servername. Any name
// lookup this process attempts fails (dns.lookup is replaced below) and is counted in the report.
import { execFileSync } from 'node:child_process';
import dns from 'node:dns';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { isIP } from 'node:net';
import { cpus, release } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Agent, ProxyAgent, request } from 'undici';
import { trackChildren } from '../lib/children.mjs';
import { CLK_TCK, coreTicks, cpuTicks } from '../lib/cpu.mjs';
import { f0, f1, f3, RUN_HEAD, runCells, table } from '../lib/format.mjs';
import { freePorts } from '../lib/ports.mjs';
import { waitReady } from '../lib/ready.mjs';
import { firstLine, have, PIN, starter, stderrOf } from '../lib/spawn.mjs';
import { int, overheadSettings } from '../lib/settings.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const env = process.env;
const { SECONDS, ROUNDS, WARMUP, CONNS, LOAD_CPU, SERVER_CPU, TENANT, KEY } = overheadSettings(env);

const TUNNELS = int(env.BENCH_TUNNELS, 50);
/** Each timed run starts on a new client: this long untimed first, to open its connections. */
const PREROLL_S = 1;
/** A run gives up after this many failed requests (a dead gateway would otherwise spin until the deadline). */
const MAX_ERRORS = 100;

const TOKEN = `Basic ${Buffer.from(`${TENANT}:${KEY}`).toString('base64')}`;
const HOST = 'api.bench.test';
const FRESH = 'fresh.bench.test';
const PATH = '/bench/rest';

// No DNS in this benchmark (see the header): a lookup of a name fails, and is counted. IP literals
// pass (server.listen('127.0.0.1') goes through dns.lookup, which answers them without asking anyone).
let dnsLookups = 0;
const ipLookup = dns.lookup;
dns.lookup = (hostname, options, callback) => {
  if (isIP(hostname) !== 0) return ipLookup(hostname, options, callback);
  dnsLookups++;
  const cb = typeof options === 'function' ? options : callback;
  process.nextTick(cb, Object.assign(new Error(`bench: no DNS lookups here (asked for ${hostname})`), { code: 'ENOTFOUND' }));
};

// ---------------------------------------------------------------------------------------------
// Processes: every child is remembered and ended at exit (run.sh's trap is the second net).

const { work, track, stopAll, stopping } = trackChildren({ label: 'bench-https', keepTmpVar: 'BENCH_KEEP_TMP' });
const startOn = starter({ work, track });
/** Every server of this benchmark runs on the server core. */
const start = (name, cmd, args, options) => startOn(name, SERVER_CPU, cmd, args, options);

/** GET a JSON document from the admin listener. */
function getJson(url) {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 2_000 }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        try {
          if (res.statusCode !== 200) throw new Error(`${url} answered ${res.statusCode}`);
          resolvePromise(JSON.parse(Buffer.concat(chunks).toString()));
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

// ---------------------------------------------------------------------------------------------
// Certificates: a throwaway test CA and the upstream's leaf (api.bench.test and 127.0.0.1).

function testCertificates() {
  const dir = join(work, 'test-ca');
  mkdirSync(dir);
  const ssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const p256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  ssl('req', '-x509', ...p256, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=Sluice bench test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  writeFileSync(
    join(dir, 'leaf.ext'),
    [
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
      `subjectAltName=DNS:${HOST},IP:127.0.0.1`,
      'subjectKeyIdentifier=hash',
      'authorityKeyIdentifier=keyid',
    ].join('\n'),
  );
  ssl('req', '-new', ...p256, '-keyout', 'leaf.key', '-out', 'leaf.csr', '-subj', `/CN=${HOST}`);
  ssl('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', `0x${Date.now().toString(16)}`,
    '-days', '2', '-out', 'leaf.crt', '-extfile', 'leaf.ext');
  return { ca: join(dir, 'ca.crt'), cert: join(dir, 'leaf.crt'), key: join(dir, 'leaf.key') };
}

function gatewayConfig(port, adminPort, upstreamPort, testCa) {
  return `# Generated by bench/overhead/https.mjs: one tenant, one intercepted upstream, defaults otherwise.
listen:
  proxy: 127.0.0.1:${port}
  admin: 127.0.0.1:${adminPort}
tls:
  caDir: ${join(work, 'gateway-ca')}
tenants:
  ${TENANT}: { key: ${KEY} }
upstreams:
  bench:
    match: { hosts: [${HOST}, "*.${FRESH}"] }
    target: https://127.0.0.1:${upstreamPort}
    ca: ${testCa}
    allowPrivate: true
    intercept: true
`;
}

// ---------------------------------------------------------------------------------------------
// Load.

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
/** Exact quantile of sorted values: the smallest value with at least q of them at or below it. */
const quantile = (sorted, q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] : NaN);

/** One request; resolves to its latency in ns, or throws. */
async function timedRequest(dispatcher, url, bodyBytes) {
  const t = process.hrtime.bigint();
  const { statusCode, body } = await request(url, { dispatcher });
  const bytes = (await body.arrayBuffer()).byteLength;
  const ns = Number(process.hrtime.bigint() - t);
  if (statusCode !== 200 || bytes !== bodyBytes) throw new Error(`${url}: status ${statusCode}, ${bytes} bytes`);
  return ns;
}

/** Closed loop: `conns` workers, each awaiting one request at a time, until `seconds` have passed. */
async function drive(dispatcher, url, conns, seconds, bodyBytes) {
  const latencies = [];
  let errors = 0;
  let firstError;
  const deadline = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const worker = async () => {
    while (process.hrtime.bigint() < deadline && errors < MAX_ERRORS) {
      try {
        latencies.push(await timedRequest(dispatcher, url, bodyBytes));
      } catch (err) {
        errors++;
        firstError ??= err;
      }
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: conns }, worker));
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  return { latencies, errors, firstError, elapsed };
}

// ---------------------------------------------------------------------------------------------

async function main() {
  if (CONNS.length === 0) throw new Error('BENCH_CONNECTIONS names no concurrency');
  if (!have('openssl')) throw new Error('openssl is not installed (apt-get install -y openssl)');
  if (!existsSync(join(ROOT, 'dist/cli.js'))) throw new Error('dist/cli.js is missing: run `npx tsc -b` first');

  const certs = testCertificates();
  const testCaPem = readFileSync(certs.ca);
  const upstream = start('upstream-https', process.execPath, [join(HERE, 'upstream-https.mjs'), '0', certs.cert, certs.key]);
  const [, upstreamPortText, bodyBytesText] = await firstLine(upstream, /listening (\d+) body=(\d+)/);
  const upstreamPort = Number(upstreamPortText);
  const bodyBytes = Number(bodyBytesText);

  const [proxyPort, adminPort] = await freePorts(2);
  const dir = join(work, 'gateway');
  mkdirSync(dir);
  const configPath = join(dir, 'routes.yaml');
  writeFileSync(configPath, gatewayConfig(proxyPort, adminPort, upstreamPort, certs.ca));
  // stdout is the request log (one JSON line per request and per tunnel): to /dev/null.
  const gateway = start('gateway', process.execPath, [join(ROOT, 'dist/cli.js'), 'start', '--config', configPath], { stdout: 'null', cwd: dir });
  await waitReady(gateway, 'gateway', adminPort, () => stderrOf(gateway));
  const statusUrl = `http://127.0.0.1:${adminPort}/status`;
  const leaves = async () => (await getJson(statusUrl)).tls?.leaves ?? {};
  const status = await getJson(statusUrl);
  if (!status.tls?.ca) throw new Error(`GET /status has no tls.ca: ${JSON.stringify(status).slice(0, 300)}`);
  const gatewayCaPem = readFileSync(status.tls.ca);

  const direct = {
    key: 'direct',
    label: 'direct HTTPS',
    url: `https://127.0.0.1:${upstreamPort}${PATH}`,
    client: (connections) => new Agent({ connections, connect: { ca: testCaPem, servername: HOST } }),
  };
  const proxied = {
    key: 'gateway',
    label: 'through HTTPS_PROXY (intercepted, keep-alive)',
    url: `https://${HOST}${PATH}`,
    client: (connections) =>
      new ProxyAgent({ uri: `http://127.0.0.1:${proxyPort}`, token: TOKEN, requestTls: { ca: gatewayCaPem }, connections }),
  };
  const targets = [direct, proxied];

  // Both answer the upstream's body before anything is timed (timedRequest() checks status and size).
  for (const t of targets) {
    const d = t.client(1);
    try {
      await timedRequest(d, t.url, bodyBytes);
    } catch (err) {
      throw new Error(`${t.label}: ${err.message}${t === proxied ? stderrOf(gateway) : ''}`);
    } finally {
      await d.close();
    }
  }

  const undiciVersion = JSON.parse(readFileSync(join(ROOT, 'node_modules/undici/package.json'), 'utf8')).version;
  const setup = [
    `Sluice HTTPS_PROXY benchmark: GET https://${HOST}${PATH} answered by a Node HTTPS upstream with a ${bodyBytes}-byte JSON body`,
    `  machine   ${cpus().length} x ${cpus()[0]?.model?.trim()}, Linux ${release()}, Node ${process.version}, undici ${undiciVersion}, ${execFileSync('openssl', ['version']).toString().trim()}`,
    PIN
      ? `  pinning   the load (this Node process, undici) on core ${LOAD_CPU}; the gateway and the upstream on core ${SERVER_CPU} (taskset)`
      : `  pinning   NONE (fewer than 2 cores, no taskset, or BENCH_NO_PIN=1): figures are noisier`,
    `  runs      ${ROUNDS} rounds x ${SECONDS}s per target per concurrency (${CONNS.join(', ')}), interleaved; ${WARMUP}s warm-up each, and ${PREROLL_S}s untimed on every new client; medians reported`,
    `  gateway   node dist/cli.js start, log level info, request log (stdout) -> /dev/null; 1 tenant (Proxy-Authorization on the CONNECT), 1 upstream, intercept: true, target https://127.0.0.1:${upstreamPort}`,
    `  clients   direct: undici Agent to https://127.0.0.1:${upstreamPort} (servername ${HOST}); gateway: undici ProxyAgent, CONNECT ${HOST}:443, TLS with the gateway's leaf`,
    `  CPU       utime+stime of the gateway (and of the upstream) from /proc/PID/stat / requests; clock tick ${1000 / CLK_TCK} ms`,
  ];
  console.log(setup.join('\n'));

  await sleep(500);
  const idle0 = [coreTicks(LOAD_CPU), coreTicks(SERVER_CPU)];
  await sleep(1000);
  const idle1 = [coreTicks(LOAD_CPU), coreTicks(SERVER_CPU)];
  const busyPct = idle1.map((a, i) => (100 * (a.busy - idle0[i].busy)) / Math.max(1, a.total - idle0[i].total));
  console.log(`  idle check  core ${LOAD_CPU} ${busyPct[0].toFixed(0)}% busy, core ${SERVER_CPU} ${busyPct[1].toFixed(0)}% busy before the runs`);
  if (busyPct.some((p) => p > 15)) console.log('  WARNING   something else is using the CPU: figures will be noisy');
  console.log('');

  // ---- keep-alive throughput and latency
  const hiConns = Math.max(...CONNS);
  if (WARMUP > 0) {
    for (const t of targets) {
      const d = t.client(hiConns);
      await drive(d, t.url, hiConns, WARMUP, bodyBytes);
      await d.close();
    }
  }

  const runs = [];
  const total = ROUNDS * CONNS.length * targets.length;
  const tickUs = 1e6 / CLK_TCK;
  for (let round = 0; round < ROUNDS; round++) {
    for (const conns of CONNS) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length]);
      for (const t of order) {
        for (const c of [upstream, gateway]) if (c.exitCode !== null) throw new Error(`${c.benchName} died${stderrOf(c)}`);
        const d = t.client(conns);
        await drive(d, t.url, conns, PREROLL_S, bodyBytes);
        const gw0 = cpuTicks(gateway.pid, 0);
        const up0 = cpuTicks(upstream.pid, 0);
        const core0 = coreTicks(SERVER_CPU);
        const load0 = coreTicks(LOAD_CPU);
        const r = await drive(d, t.url, conns, SECONDS, bodyBytes);
        const load1 = coreTicks(LOAD_CPU);
        const core1 = coreTicks(SERVER_CPU);
        const up1 = cpuTicks(upstream.pid, 0);
        const gw1 = cpuTicks(gateway.pid, 0);
        await d.close();
        const n = r.latencies.length;
        const sorted = Float64Array.from(r.latencies).sort();
        const coreTotal = Math.max(1, core1.total - core0.total);
        const run = {
          round: round + 1,
          target: t.key,
          conns,
          requests: n,
          seconds: r.elapsed,
          rps: n / r.elapsed,
          p50ms: quantile(sorted, 0.5) / 1e6,
          p99ms: quantile(sorted, 0.99) / 1e6,
          maxms: (sorted[n - 1] ?? NaN) / 1e6,
          gatewayCpuUsPerReq: t.key === 'direct' ? NaN : ((gw1 - gw0) * tickUs) / n,
          upstreamCpuUsPerReq: ((up1 - up0) * tickUs) / n,
          serverCoreBusyPct: (100 * (core1.busy - core0.busy)) / coreTotal,
          // The load generator is one Node process: near 100% here, it (not the server side) set the pace.
          loadCoreBusyPct: (100 * (load1.busy - load0.busy)) / Math.max(1, load1.total - load0.total),
          stealPct: (100 * (core1.steal - core0.steal)) / coreTotal,
          otherPct: (100 * (core1.busy - core0.busy - (gw1 - gw0) - (up1 - up0))) / coreTotal,
          errors: r.errors,
          firstError: r.firstError?.message,
        };
        runs.push(run);
        console.log(
          `[${String(runs.length).padStart(2)}/${total}] round ${run.round} c=${String(conns).padEnd(3)} ${t.label.padEnd(46)} ` +
            `${f0(run.rps).padStart(7)} req/s  p50 ${f3(run.p50ms)} ms  p99 ${f3(run.p99ms)} ms  ` +
            `gateway CPU ${f1(run.gatewayCpuUsPerReq).padStart(5)} µs/req  upstream ${f1(run.upstreamCpuUsPerReq)} µs/req  ` +
            `core ${SERVER_CPU} ${run.serverCoreBusyPct.toFixed(0)}% busy (other ${run.otherPct.toFixed(0)}%, steal ${run.stealPct.toFixed(0)}%), load core ${run.loadCoreBusyPct.toFixed(0)}%` +
            (run.errors ? `  ERRORS ${run.errors} (first: ${run.firstError})` : ''),
        );
      }
    }
  }

  // ---- the cost of a new tunnel
  // Each measurement: a new client, its first request, the client closed. The three kinds take
  // turns (their order rotates), the gateway's issued-leaf count and CPU are read around each.
  const kinds = [
    { key: 'direct', label: '(c) new direct TLS connection', client: () => direct.client(1), url: () => direct.url },
    { key: 'cached', label: `(a) new tunnel to ${HOST} (leaf cached)`, client: () => proxied.client(1), url: () => proxied.url },
    { key: 'fresh', label: `(b) new tunnel to h<i>.${FRESH} (new leaf)`, client: () => proxied.client(1), url: (i) => `https://h${i}.${FRESH}${PATH}` },
  ];
  const firstRequest = async (kind, url) => {
    const d = kind.client();
    try {
      return await timedRequest(d, url, bodyBytes);
    } finally {
      await d.close();
    }
  };
  // Warm-up (the gateway's handshake and issuance paths), not recorded: names w<i>, not h<i>.
  for (let i = 0; i < 5; i++) {
    for (const k of kinds) await firstRequest(k, k.key === 'fresh' ? `https://w${i}.${FRESH}${PATH}` : k.url(i));
  }
  const tunnel = Object.fromEntries(kinds.map((k) => [k.key, { ns: [], issued: 0, ticks: 0 }]));
  const leavesBefore = await leaves();
  for (let i = 0; i < TUNNELS; i++) {
    for (let j = 0; j < kinds.length; j++) {
      const k = kinds[(i + j) % kinds.length];
      const issued0 = (await leaves()).issued;
      const gw0 = cpuTicks(gateway.pid, 0);
      tunnel[k.key].ns.push(await firstRequest(k, k.url(i)));
      const gw1 = cpuTicks(gateway.pid, 0);
      await sleep(5); // the gateway sees the close and logs the tunnel before the next read
      tunnel[k.key].issued += (await leaves()).issued - issued0;
      tunnel[k.key].ticks += gw1 - gw0;
    }
  }
  const leavesAfter = await leaves();
  const T = Object.fromEntries(
    kinds.map((k) => {
      const sorted = Float64Array.from(tunnel[k.key].ns).sort();
      return [k.key, { ...tunnel[k.key], p50: quantile(sorted, 0.5) / 1e6, p90: quantile(sorted, 0.9) / 1e6, cpuMs: (tunnel[k.key].ticks * tickUs) / 1000 / TUNNELS }];
    }),
  );
  const paired = (x, y) => median(tunnel[x].ns.map((v, i) => (v - tunnel[y].ns[i]) / 1e6));

  // ---- report
  const med = new Map();
  for (const t of targets) {
    for (const conns of CONNS) {
      const rs = runs.filter((r) => r.target === t.key && r.conns === conns);
      med.set(`${t.key}/${conns}`, {
        rps: median(rs.map((r) => r.rps)),
        p50ms: median(rs.map((r) => r.p50ms)),
        p99ms: median(rs.map((r) => r.p99ms)),
        cpu: median(rs.map((r) => r.gatewayCpuUsPerReq)),
        upCpu: median(rs.map((r) => r.upstreamCpuUsPerReq)),
        serverCore: median(rs.map((r) => r.serverCoreBusyPct)),
        loadCore: median(rs.map((r) => r.loadCoreBusyPct)),
        errors: rs.reduce((n, r) => n + r.errors, 0),
      });
    }
  }
  const M = (key, conns) => med.get(`${key}/${conns}`) ?? {};

  const lines = ['', `## HTTPS_PROXY results (medians of ${ROUNDS} rounds x ${SECONDS}s; load on core ${LOAD_CPU}, gateway + upstream on core ${SERVER_CPU})`, ''];
  for (const conns of CONNS) {
    const d = M('direct', conns);
    lines.push(`**Keep-alive, concurrency ${conns}**`, '');
    lines.push(
      table(
        ['target', ...RUN_HEAD, 'gateway CPU µs/req', 'upstream CPU µs/req', `core ${SERVER_CPU} / load core busy`, 'errors'],
        targets.map((t) => {
          const m = M(t.key, conns);
          return [t.label, ...runCells(m, d, t.key === 'direct'), `${f0(m.serverCore)}% / ${f0(m.loadCore)}%`, String(m.errors)];
        }),
      ),
      '',
    );
    const bound = targets.filter((t) => M(t.key, conns).loadCore >= 90).map((t) => t.label);
    if (bound.length) {
      lines.push(`At c=${conns} the load generator's core was saturated for ${bound.join(' and ')}: that figure is the client's limit, not the server side's.`, '');
    }
  }
  lines.push(
    `**A new tunnel: the first request on a new client (${TUNNELS} of each, interleaved, after 5 untimed)**`,
    '',
    table(
      ['case', 'median ms', 'p90 ms', 'leaves issued', 'gateway CPU ms/tunnel'],
      kinds.map((k) => [k.label, f3(T[k.key].p50), f3(T[k.key].p90), String(T[k.key].issued), k.key === 'direct' ? '–' : f3(T[k.key].cpuMs)]),
    ),
    '',
    table(
      ['difference', 'of the medians ms', 'median of the paired differences ms'],
      [
        ['(b) − (a): issuing a leaf', f3(T.fresh.p50 - T.cached.p50), f3(paired('fresh', 'cached'))],
        ['(a) − (c): a tunnel over a direct connection', f3(T.cached.p50 - T.direct.p50), f3(paired('cached', 'direct'))],
      ],
    ),
    '',
    `GET /status tls.leaves before the tunnels ${JSON.stringify(leavesBefore)}, after ${JSON.stringify(leavesAfter)}: ` +
      `issued grew by ${leavesAfter.issued - leavesBefore.issued} (expected ${TUNNELS}: one per fresh host in (b), none in (a)).`,
  );
  if (T.fresh.issued !== TUNNELS || T.cached.issued !== 0) {
    lines.push('', `WARNING: expected ${TUNNELS} leaves issued during (b) and 0 during (a), saw ${T.fresh.issued} and ${T.cached.issued}.`);
  }

  const errors = runs.reduce((n, r) => n + r.errors, 0);
  const noisy = Math.max(...runs.map((r) => r.otherPct));
  const steal = Math.max(...runs.map((r) => r.stealPct));
  lines.push(
    '',
    `Request: \`GET ${PATH}\`, ${bodyBytes}-byte JSON answer, over TLS both ways (client ↔ gateway with the gateway's leaf, gateway ↔ upstream with the test CA's). ` +
      `Load: undici in one Node process, closed loop (C workers, one request at a time each), a new client per timed run; ` +
      `p50/p99 exact from every request's latency; req/s = requests completed / run time. Added p50 = p50 through the gateway − p50 direct. ` +
      `Gateway CPU = utime+stime of the gateway process per request (per tunnel: summed over the ${TUNNELS}, ${1000 / CLK_TCK} ms ticks, approximate).`,
    '',
    `Errors across all runs: ${errors}. DNS lookups attempted: ${dnsLookups}. Noise: at most ${Math.max(0, noisy).toFixed(0)}% of core ${SERVER_CPU} in one run went to work not billed to the gateway or ` +
      `the upstream (other processes, kernel), and at most ${steal.toFixed(0)}% was stolen by the hypervisor.`,
  );
  if (steal > 5 || noisy > 10) {
    lines.push(
      '',
      `WARNING: with ${steal > 5 ? `up to ${steal.toFixed(0)}% steal` : `up to ${noisy.toFixed(0)}% foreign load`} on core ${SERVER_CPU}, ` +
        'the c=1 latencies are not trustworthy; rerun on a quieter machine before quoting them.',
    );
  }
  const gwErr = stderrOf(gateway);
  if (gwErr) lines.push('', `gateway stderr${gwErr}`);
  console.log(lines.join('\n'));

  if (env.BENCH_HTTPS_JSON) {
    const tunnels = Object.fromEntries(kinds.map((k) => [k.key, { ...T[k.key], ns: undefined, latenciesMs: tunnel[k.key].ns.map((v) => v / 1e6) }]));
    writeFileSync(env.BENCH_HTTPS_JSON, JSON.stringify({ setup, runs, medians: Object.fromEntries(med), tunnels, leavesBefore, leavesAfter }, null, 2));
    console.log(`figures written to ${env.BENCH_HTTPS_JSON}`);
  }
  await stopAll();
}

main().catch(async (err) => {
  if (stopping()) return; // a signal is already stopping everything
  console.error(`bench-https: ${err.stack ?? err}`);
  await stopAll();
  process.exit(1);
});
