// Decision cost: admission decisions per second straight against the built store classes
// (dist/store/memory.js, dist/store/redis.js), no HTTP. Run by run.mjs (pinned to the server core
// when it can), or alone: node bench/fidelity/decide.mjs  (after `npx tsc -b`).
//
//   rule sets   rate           one rate rule (1e9/s: always admits, so every decision also writes)
//               rate+conc      a rate rule and a concurrency rule, then the lease's release: the
//                              store work of one gateway request under the overhead bench's rules
//               fair x4        one share: fair rate rule, four tenants of weight 1 in turn
//   stores      memory (MemoryStore, Date.now clock); redis (RedisStore on FIDELITY_REDIS_URL,
//               a unique prefix, its keys deleted afterwards)
//   outstanding 1 (each decision awaited before the next) for both stores, and 64 for Redis
//               (ioredis auto-pipelines them over its one connection)
//
// Environment: FIDELITY_DECIDE_MS (1000 per measurement), FIDELITY_ROUNDS (3), FIDELITY_REDIS_URL
// (redis://127.0.0.1:6379). Progress on stderr; the figures as one JSON line on stdout
// (DECIDE_JSON {...}) for run.mjs, and a table on stderr.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { CLK_TCK, cpuTicks } from '../lib/cpu.mjs';
import { median, percentile } from './checks.mjs';
import { int } from '../lib/settings.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DURATION_MS = int(process.env.FIDELITY_DECIDE_MS, 1000);
const ROUNDS = int(process.env.FIDELITY_ROUNDS, 3);
const REDIS_URL = process.env.FIDELITY_REDIS_URL ?? 'redis://127.0.0.1:6379';

if (!existsSync(join(ROOT, 'dist/store/memory.js'))) throw new Error('dist/ is missing: run `npx tsc -b` first');
const { MemoryStore } = await import(pathToFileURL(join(ROOT, 'dist/store/memory.js')).href);
const { RedisStore } = await import(pathToFileURL(join(ROOT, 'dist/store/redis.js')).href);
const { Redis } = await import('ioredis');

let redisPid = NaN;

const PREFIX = `sluice-fidelity-decide-${process.pid}-${randomBytes(3).toString('hex')}`;
const tag = `{${PREFIX}:bench}`;
const base = { burst: 1, fair: undefined, shadow: false, periodMs: 0 };
const RATE = { ...base, kind: 'rate', keys: [`${tag}:rate`], limit: 1e9, periodMs: 1000, burst: 1e6 };
const CONC = { ...base, kind: 'concurrency', keys: [`${tag}:inflight`], limit: 100_000 };
const fair = (tenant) => ({
  ...base,
  kind: 'rate',
  keys: [`${tag}:fair`],
  limit: 1e9,
  periodMs: 1000,
  burst: 1e6,
  fair: { tenant, weight: 1, reservePerMs: 0, activeWindowMs: 1000 },
});
const FAIR = ['t0', 't1', 't2', 't3'].map((t) => [fair(t)]);

const SETS = {
  rate: { rules: () => [RATE], release: false },
  'rate+conc': { rules: () => [RATE, CONC], release: true },
  'fair x4': { rules: (i) => FAIR[i % 4], release: false },
};

let leaseSeq = 0;
/** Decisions completed in DURATION_MS with `outstanding` in flight; latencies when outstanding is 1. */
async function measure(store, setName, outstanding) {
  const set = SETS[setName];
  const redisTicks0 = store === redis ? cpuTicks(redisPid, NaN) : NaN;
  const lat = [];
  let done = 0;
  let refused = 0;
  let i = 0;
  const t0 = performance.now();
  const end = t0 + DURATION_MS;
  const worker = async () => {
    while (performance.now() < end) {
      const lease = `l${++leaseSeq}`;
      const s = performance.now();
      const d = await store.decide({ rules: set.rules(i++), candidates: 1, lease, leaseTtlMs: 30_000 });
      if (!d.admitted) refused++;
      if (set.release && d.admitted) await store.release([{ key: CONC.keys[0], id: lease }]);
      if (outstanding === 1) lat.push(performance.now() - s);
      done++;
    }
  };
  await Promise.all(Array.from({ length: outstanding }, worker));
  const seconds = (performance.now() - t0) / 1000;
  // The Redis server's own CPU per decision (its process, read from /proc when it runs here).
  const redisUs = ((cpuTicks(redisPid, NaN) - redisTicks0) * (1e6 / CLK_TCK)) / done;
  return { perSecond: done / seconds, p50us: percentile(lat, 50) * 1000, p99us: percentile(lat, 99) * 1000, refused, redisUs };
}

async function cleanup() {
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  let cursor = '0';
  let deleted = 0;
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `*${PREFIX}*`, 'COUNT', 1000);
    if (keys.length) deleted += await client.del(...keys);
    cursor = next;
  } while (cursor !== '0');
  client.disconnect();
  return deleted;
}

const memory = new MemoryStore();
const redis = RedisStore.connect({ url: REDIS_URL, prefix: PREFIX, timeoutMs: 2_000 });
const results = [];
try {
  if (!(await redis.waitReady(5_000))) throw new Error(`Redis at ${REDIS_URL} did not answer`);
  const info = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  redisPid = Number(/process_id:(\d+)/.exec(await info.info('server'))?.[1]);
  info.disconnect();
  const configs = [
    ...Object.keys(SETS).map((set) => ({ store: 'memory', set, outstanding: 1 })),
    ...Object.keys(SETS).flatMap((set) => [1, 64].map((outstanding) => ({ store: 'redis', set, outstanding }))),
  ];
  // Warm-up (JIT, script load), then rounds with every configuration in each, interleaved.
  for (const c of configs) await measure(c.store === 'memory' ? memory : redis, c.set, c.outstanding);
  const runs = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const c of configs) {
      const r = await measure(c.store === 'memory' ? memory : redis, c.set, c.outstanding);
      runs.push({ ...c, round, ...r });
      process.stderr.write(`  decide round ${round} ${c.store.padEnd(6)} ${c.set.padEnd(9)} outstanding ${String(c.outstanding).padEnd(2)} ` +
        `${Math.round(r.perSecond).toLocaleString('en-US').padStart(9)} /s${c.outstanding === 1 ? `  p50 ${r.p50us.toFixed(1)} µs  p99 ${r.p99us.toFixed(1)} µs` : ''}` +
        `${Number.isFinite(r.redisUs) ? `  Redis server CPU ${r.redisUs.toFixed(1)} µs/decision` : ''}${r.refused ? `  REFUSED ${r.refused}` : ''}\n`);
    }
  }
  for (const c of configs) {
    const rs = runs.filter((r) => r.store === c.store && r.set === c.set && r.outstanding === c.outstanding);
    results.push({
      ...c,
      perSecond: median(rs.map((r) => r.perSecond)),
      p50us: median(rs.map((r) => r.p50us)),
      p99us: median(rs.map((r) => r.p99us)),
      redisUs: median(rs.map((r) => r.redisUs)),
      refused: rs.reduce((n, r) => n + r.refused, 0),
    });
  }
} finally {
  await memory.close();
  await redis.close();
  const deleted = await cleanup().catch((err) => (process.stderr.write(`  decide: cleanup failed: ${err.message}\n`), -1));
  process.stderr.write(`  decide: ${deleted} Redis keys under ${PREFIX} deleted\n`);
}
process.stdout.write(`DECIDE_JSON ${JSON.stringify({ durationMs: DURATION_MS, rounds: ROUNDS, results })}\n`);
