/**
 * The dashboard proven against a real Prometheus: a gateway in this process (two tenants; an
 * upstream with a fair-shared rate limit and a queue, a token pool behind a circuit breaker, an
 * OAuth2 upstream on the fake token endpoint) takes a small load that forwards, queues, refuses,
 * opens the breaker, learns a pause and refreshes a token, while Debian's `prometheus` scrapes its
 * /metrics every second. Then every PromQL expression of deploy/grafana/sluice.json is asked of
 * Prometheus's HTTP API as the panel asks it (a range query, the selectors on "All") and must
 * return data; `promtool check metrics` must accept the exposition.
 *
 * Needs `prometheus` and `promtool` on the PATH (Debian's prometheus package; .ci/run installs it).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { concreteQuery, loadDashboard, panelQueries, selectors, variableQuery } from './helpers/dashboard.js';
import { startGateway, tempDir, testConfig, type TestGateway } from './helpers/gateway.js';
import { sdpUpstream, startTokenCheckingUpstream, startTokenEndpoint, type FakeTokenEndpoint, type TokenCheckingUpstream } from './helpers/oauth.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';
import { until } from './helpers/wait.js';

const ACME = 'acme:acme-secret-key-1';
const GLOBEX = 'globex:globex-secret-key-2';
/** Grafana's $__rate_interval for a 1 s scrape interval is 4 s; a little more keeps every window two scrapes wide. */
const RATE_INTERVAL = '5s';

interface PromSeries {
  metric: Record<string, string>;
  values: [number, string][];
}

let gw: TestGateway;
let api: FakeUpstream;
let pool: Server;
let tokenEndpoint: FakeTokenEndpoint;
let sdpApi: TokenCheckingUpstream;
let prometheus: ChildProcess | undefined;
let prometheusUrl: string;
let loadStartedS: number;
let exposition: string;

/** The pool's upstream: /limited answers 429 with a Retry-After (a learned pause), the rest 200. */
async function startPoolUpstream(): Promise<Server> {
  const server = createServer((req, res) => {
    req.resume();
    const status = req.url === '/limited' ? 429 : 200;
    res.writeHead(status, { 'content-type': 'application/json', ...(status === 429 ? { 'retry-after': '120' } : {}) });
    res.end(JSON.stringify({ status }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

function portOf(server: Server): number {
  return (server.address() as AddressInfo).port;
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = portOf(server);
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Prometheus scraping the gateway's admin listener every second, its data in a temp folder. */
async function startPrometheus(adminPort: number): Promise<void> {
  const dir = tempDir();
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    `global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }
scrape_configs:
  - job_name: sluice
    static_configs: [{ targets: ["127.0.0.1:${adminPort}"] }]
`,
  );
  const port = await freePort();
  prometheusUrl = `http://127.0.0.1:${port}`;
  let output = '';
  const child = spawn(
    'prometheus',
    [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  prometheus = child;
  // Whatever becomes of the test, Prometheus goes with the worker.
  process.once('exit', () => child.kill('SIGKILL'));
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const spawned = await Promise.race([once(child, 'spawn').then(() => undefined), once(child, 'error').then(([err]) => err as Error)]);
  if (spawned) throw new Error(`prometheus is not installed (apt-get install prometheus, or run .ci/run): ${spawned.message}`);
  await until(async () => {
    if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}: ${output}`);
    return (await fetch(`${prometheusUrl}/-/ready`).catch(() => undefined))?.ok === true;
  }, 15_000);
}

async function promApi(path: string, params: Record<string, string | string[]>): Promise<unknown> {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) for (const v of [value].flat()) search.append(key, v);
  const res = await fetch(`${prometheusUrl}${path}?${search}`);
  const body = (await res.json()) as { status: string; data: unknown; error?: string };
  if (body.status !== 'success') throw new Error(`${path} ${search}: ${body.error ?? res.status}`);
  return body.data;
}

/** A panel's query as Grafana sends it: over the load's time range, a point a second. */
async function rangeQuery(expr: string): Promise<PromSeries[]> {
  const data = (await promApi('/api/v1/query_range', {
    query: expr,
    start: String(loadStartedS - 2),
    end: String(Date.now() / 1000),
    step: '1',
  })) as { result: PromSeries[] };
  return data.result;
}

/**
 * Waits for a scrape that started after now: what happened so far is in Prometheus. The first
 * takes about 5 s (Prometheus applies discovered targets every 5 s), the others a second.
 */
async function scrapedAfterNow(timeoutMs = 3_000): Promise<void> {
  const since = Date.now() / 1000;
  let last: unknown;
  await until(async () => {
    const targets = (await promApi('/api/v1/targets', {})) as { activeTargets: { health: string; lastScrape: string; lastError: string }[] };
    last = targets.activeTargets;
    const target = targets.activeTargets[0];
    return target?.health === 'up' && Date.parse(target.lastScrape) / 1000 > since;
  }, timeoutMs).catch((err: Error) => {
    throw new Error(`${err.message}: no scrape of the gateway since ${since}: ${JSON.stringify(last)}`);
  });
}

async function send(path: string, key: string | undefined): Promise<number> {
  const res = await fetch(`${gw.proxyUrl}${path}`, { headers: key ? { 'x-sluice-key': key } : {} });
  await res.arrayBuffer();
  return res.status;
}

/**
 * One round of load: a 503 that is retried; a burst both tenants send past the rate (some go at
 * once, some wait in the queue, the last time out in it); a 429 with Retry-After that pauses a pool
 * token, and a request the other token takes (or, once both are paused, the pause refuses);
 * failures that open a breaker and a request it then refuses; an OAuth2 request; a wrong key.
 */
async function loadRound(): Promise<number[]> {
  const retried = await send('/api/status/503', ACME);
  const burst = [...Array.from({ length: 8 }, () => send('/api/slow/20', ACME)), ...Array.from({ length: 4 }, () => send('/api/slow/20', GLOBEX))];
  const others: number[] = [];
  for (const [path, key] of [
    ['/pool/limited', ACME],
    ['/pool/ok', GLOBEX],
    ['/flaky/status/500', GLOBEX],
    ['/flaky/status/500', GLOBEX],
    ['/flaky/status/500', GLOBEX],
    ['/flaky/echo', ACME],
    ['/sdp/requests', GLOBEX],
    ['/api/echo', 'acme:not-the-key'],
  ] as const) {
    others.push(await send(path, key));
  }
  return [retried, ...(await Promise.all(burst)), ...others];
}

beforeAll(async () => {
  [api, pool, tokenEndpoint] = await Promise.all([startUpstream(), startPoolUpstream(), startTokenEndpoint()]);
  sdpApi = await startTokenCheckingUpstream(tokenEndpoint);
  gw = await startGateway(
    testConfig(`
  api:
    match: { prefix: /api }
    target: "${api.url}"
    allowPrivate: true
    limits:
      - { name: per-second, rate: 5/s, burst: 2, share: fair }
      - { name: daily, quota: 10000/day, per: tenant }
    onLimit: { queue: 1200ms }
    retry: { on: [503], attempts: 1, methods: [GET], backoff: { base: 10ms, max: 10ms } }
  pool:
    match: { prefix: /pool }
    target: "http://127.0.0.1:${portOf(pool)}"
    allowPrivate: true
    credentials: { type: pool, header: X-Token, tokens: [pool-token-aaaa-1, pool-token-bbbb-2] }
    limits:
      - { name: per-token, rate: 50/s, burst: 20, per: credential }
  flaky:
    match: { prefix: /flaky }
    target: "${api.url}"
    allowPrivate: true
    breaker: { failures: 3, window: 10s, cooldown: 60s }
${sdpUpstream(tokenEndpoint, sdpApi)}`),
  );
  await startPrometheus(gw.gateway.adminAddress.port);
  await scrapedAfterNow(10_000);

  // Two rounds a scrape apart, so that counters grow between scrapes and rates are more than 0.
  loadStartedS = Date.now() / 1000;
  const first = await loadRound();
  await scrapedAfterNow();
  const second = await loadRound();
  const reload = await gw.gateway.reload();
  expect(reload).toMatchObject({ ok: true, changed: false });
  await scrapedAfterNow();
  await scrapedAfterNow();
  exposition = await (await fetch(`${gw.adminUrl}/metrics`)).text();

  // The load did what the panels are to show: forwarded, queued, timed out in the queue, retried,
  // limited by the upstream, failed upstream, refused by the open breaker, and a wrong key.
  const statuses = [...first, ...second];
  expect(statuses).toContain(200);
  expect(statuses).toContain(429);
  expect(statuses).toContain(503);
  expect(statuses).toContain(500);
  expect(statuses).toContain(401);
  expect(tokenEndpoint.calls.length).toBeGreaterThanOrEqual(1);
}, 40_000);

afterAll(async () => {
  if (prometheus && prometheus.exitCode === null) {
    const exited = once(prometheus, 'exit');
    prometheus.kill('SIGTERM');
    await Promise.race([exited, sleep(5_000).then(() => prometheus?.kill('SIGKILL'))]);
  }
  await gw?.close();
  await Promise.all([api?.close(), sdpApi?.close(), tokenEndpoint?.close()]);
  pool?.closeAllConnections();
  pool?.close();
});

describe('the Grafana dashboard against a real Prometheus', () => {
  const dashboard = loadDashboard();
  const queries = panelQueries(dashboard);

  it('the load provoked every outcome the refusal panels break down', () => {
    for (const outcome of ['forwarded', 'queued_then_forwarded', 'queue_timeout', 'upstream_limited', 'upstream_error', 'circuit_open', 'rejected']) {
      expect(exposition).toMatch(new RegExp(`^sluice_requests_total\\{[^}]*outcome="${outcome}"[^}]*\\} [1-9]`, 'm'));
    }
    expect(exposition).toMatch(/^sluice_credential_refreshes_total\{upstream="sdp",outcome="ok"\} [1-9]/m);
    expect(exposition).toMatch(/^sluice_breaker_state\{upstream="flaky",credential="",state="open"\} 1$/m);
    expect(exposition).toMatch(/^sluice_retries_total\{upstream="api",reason="[a-z_]+"\} [1-9]/m);
    for (const secret of ['acme-secret-key-1', 'globex-secret-key-2', 'pool-token-aaaa-1', 'pool-token-bbbb-2', ...tokenEndpoint.issued]) {
      expect(exposition).not.toContain(secret);
    }
  });

  it.each(queries.map((q) => [`${q.panel} (${q.refId})`, q.expr]))('%s returns data', async (_name, expr) => {
    const series = await rangeQuery(concreteQuery(expr, RATE_INTERVAL));
    expect(series.length, expr).toBeGreaterThan(0);
    // Something a panel can draw: histogram_quantile over a quiet window is NaN, but not everywhere.
    const values = series.flatMap((s) => s.values.map(([, v]) => Number(v)));
    expect(values.some(Number.isFinite), expr).toBe(true);
  });

  it('shows each tenant forwarded, and the queue wait and depth of the burst', async () => {
    const throughput = await rangeQuery(concreteQuery(queries.find((q) => q.panel === 'Throughput per tenant')!.expr, RATE_INTERVAL));
    expect(throughput.map((s) => s.metric.tenant).sort()).toEqual(['acme', 'globex']);
    for (const s of throughput) expect(Math.max(...s.values.map(([, v]) => Number(v))), s.metric.tenant).toBeGreaterThan(0);
    const depth = await rangeQuery(concreteQuery(queries.find((q) => q.panel === 'Queue depth')!.expr, RATE_INTERVAL));
    expect(Math.max(...depth.flatMap((s) => s.values.map(([, v]) => Number(v))))).toBeGreaterThan(0);
    const wait = await rangeQuery(concreteQuery(queries.find((q) => q.panel === 'Queue wait p95')!.expr, RATE_INTERVAL));
    expect(Math.max(...wait.flatMap((s) => s.values.map(([, v]) => Number(v))).filter(Number.isFinite))).toBeGreaterThan(0.05);
  });

  it('narrows to one upstream and one tenant when they are selected', async () => {
    const expr = queries.find((q) => q.panel === 'Throughput per tenant')!.expr;
    const series = await rangeQuery(concreteQuery(expr, RATE_INTERVAL, { upstream: 'api', tenant: 'globex' }));
    expect(series.map((s) => s.metric.tenant)).toEqual(['globex']);
    const limits = queries.find((q) => q.panel === 'Utilisation of each limit')!.expr;
    const ofApi = await rangeQuery(concreteQuery(limits, RATE_INTERVAL, { upstream: 'api', tenant: 'acme' }));
    expect(new Set(ofApi.map((s) => s.metric.upstream))).toEqual(new Set(['api']));
    // acme's daily quota and the upstream-wide rate (tenant "", which Prometheus drops), never globex's.
    expect(new Set(ofApi.map((s) => s.metric.tenant))).toEqual(new Set(['acme', undefined]));
  });

  it("filters every selector by each of its metric's upstream and tenant labels", async () => {
    // Every series Prometheus saw (a queue's depth only exists while requests wait).
    const series = (await promApi('/api/v1/series', { 'match[]': '{__name__=~"sluice_.+"}', start: String(loadStartedS - 2) })) as Record<string, string>[];
    const labelsOf = new Map<string, Set<string>>();
    for (const { __name__: name, ...labels } of series) labelsOf.set(name!, new Set([...(labelsOf.get(name!) ?? []), ...Object.keys(labels)]));
    // Prometheus drops empty labels: the exposition says which labels a metric has.
    for (const m of exposition.matchAll(/^(sluice_\w+)\{([^}]*)\}/gm)) {
      for (const pair of m[2]!.matchAll(/(\w+)="/g)) labelsOf.get(m[1]!)?.add(pair[1]!);
    }
    for (const { expr } of queries) {
      for (const { metric, matchers } of selectors(expr)) {
        expect(labelsOf.has(metric), `${metric} was never scraped`).toBe(true);
        const labels = labelsOf.get(metric)!;
        if (labels.has('upstream')) expect(matchers, `${metric} in ${expr}`).toContain('upstream=~"$upstream"');
        if (labels.has('tenant')) expect(matchers.some((m) => /^tenant=~"\$tenant\|?"$/.test(m)), `${metric} in ${expr}`).toBe(true);
      }
    }
  });

  it("offers the config's upstreams, tenants and the instance in its selectors", async () => {
    const values = async (name: string): Promise<string[]> => {
      const variable = dashboard.templating.list.find((v) => v.name === name)!;
      const [, selector, label] = /^label_values\((.+), (\w+)\)$/.exec(variableQuery(variable))!;
      return (await promApi(`/api/v1/label/${label}/values`, { 'match[]': concreteQuery(selector!, RATE_INTERVAL), start: String(loadStartedS - 2) })) as string[];
    };
    expect(await values('instance')).toEqual([`127.0.0.1:${gw.gateway.adminAddress.port}`]);
    expect(await values('upstream')).toEqual(expect.arrayContaining(['api', 'pool', 'sdp']));
    expect(await values('tenant')).toEqual(expect.arrayContaining(['acme', 'globex']));
  });

  it('passes promtool check metrics', () => {
    const check = spawnSync('promtool', ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
    if (check.error) expect.fail(`promtool is not installed (apt-get install prometheus, or run .ci/run): ${check.error.message}`);
    expect(check.stdout + check.stderr).toBe('');
    expect(check.status).toBe(0);
  });
});
