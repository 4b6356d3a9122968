/**
 * GET /metrics: every outcome a request can have, counted once with its upstream, tenant and rule;
 * the histograms; breaker, queue and credential gauges; and series bounded by the config whatever
 * clients send (10,000 requests with distinct paths, hosts and keys).
 */
import { request, Pool } from 'undici';
import { describe, expect, it } from 'vitest';
import { proxyAuth, testConfig, type TestGateway } from './helpers/gateway.js';
import { perTestFixtures } from './helpers/fixtures.js';
import { parseMetrics, scrape } from './helpers/metrics.js';
import { sdpUpstream, startTokenCheckingUpstream, startTokenEndpoint } from './helpers/oauth.js';
import { rawExchange } from './helpers/raw.js';
import type { FakeUpstream } from './helpers/upstream.js';
import { until } from './helpers/wait.js';

const ACME = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const GLOBEX = { 'x-sluice-key': 'globex:globex-secret-key-2' };

const { upstream, gateway, onCleanup } = perTestFixtures();

/** A fake upstream, and the lines of an upstream's config that send to it. */
async function targetUpstream(): Promise<{ up: FakeUpstream; target: string }> {
  const up = await upstream();
  return { up, target: `target: "${up.url}"\n    allowPrivate: true` };
}

async function get(gw: TestGateway, path: string, headers: Record<string, string> = ACME, signal?: AbortSignal): Promise<number> {
  const res = await request(`${gw.proxyUrl}${path}`, { headers, ...(signal ? { signal } : {}) });
  await res.body.text();
  return res.statusCode;
}

describe('request metrics', () => {
  it('counts each outcome once, with the refusing rule, and observes queue wait, upstream time and overhead', async () => {
    const { up, target } = await targetUpstream();
    const gw = await gateway(
      testConfig(`
  plain:
    match: { prefix: /plain }
    ${target}
  lim:
    match: { prefix: /lim }
    ${target}
    limits:
      - { name: tight, rate: 1/min, burst: 2, match: { path: /r/** } }
      - { name: daily, quota: 1/h, per: tenant, match: { path: /q/** } }
  one:
    match: { prefix: /one }
    ${target}
    limits:
      - { name: single, concurrency: 1 }
    onLimit: { queue: 150ms, maxQueue: 1 }
  paced:
    match: { prefix: /paced }
    ${target}
    limits:
      - { name: pace, rate: 10/s, burst: 1 }
    onLimit: { queue: 1s }
  flaky:
    match: { prefix: /flaky }
    ${target}
    breaker: { failures: 2, window: 10s, cooldown: 30s }
    retry: { on: [503], attempts: 1, backoff: { base: 10ms, max: 10ms } }
  dead:
    match: { prefix: /dead }
    target: "http://127.0.0.1:1"
    allowPrivate: true
  nocreds:
    match: { prefix: /nocreds }
    ${target}
    credentials: { type: header, header: X-Api-Key, value: "\${UNSET_API_KEY}" }
`),
    );

    expect(await get(gw, '/plain/echo')).toBe(200);
    expect(await get(gw, '/plain/status/429')).toBe(429);
    expect(await get(gw, '/plain/status/500')).toBe(500);
    expect(await get(gw, '/lim/r/1')).toBe(200);
    expect(await get(gw, '/lim/r/2')).toBe(200);
    expect(await get(gw, '/lim/r/3')).toBe(429);
    expect(await get(gw, '/lim/q/1')).toBe(200);
    expect(await get(gw, '/lim/q/2')).toBe(429);
    expect(await get(gw, '/lim/q/3', GLOBEX)).toBe(200); // per tenant: globex has its own
    // One in flight; the next waits and times out; a third finds the queue (maxQueue 1) full.
    const slow = get(gw, '/one/slow/500');
    await until(() => up.arrivals.some((a) => a.url === '/slow/500'));
    const waiting = get(gw, '/one/echo', GLOBEX);
    await until(async () => (await scrape(gw.adminUrl)).value('sluice_queue_depth', { upstream: 'one', tenant: 'globex' }) === 1);
    expect(await get(gw, '/one/echo')).toBe(429); // queue_full
    expect(await waiting).toBe(429); // queue_timeout
    expect(await slow).toBe(200);
    // Two at once at 10/s, burst 1: the second waits ~100 ms, then goes.
    expect(await Promise.all([get(gw, '/paced/a'), get(gw, '/paced/b')])).toEqual([200, 200]);
    // 503, retried once, 503 again: two failures open the breaker; the next is refused by it.
    expect(await get(gw, '/flaky/status/503')).toBe(503);
    expect(await get(gw, '/flaky/echo')).toBe(503);
    expect(await get(gw, '/dead/x')).toBe(502);
    expect(await get(gw, '/nocreds/x')).toBe(503);
    expect(await get(gw, '/plain/echo', { 'x-sluice-key': 'acme:wrong' })).toBe(401);
    expect(await get(gw, '/nowhere')).toBe(403);
    const connect = await rawExchange(gw.port, `CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\nProxy-Authorization: ${proxyAuth('acme', 'acme-secret-key-1')}\r\n\r\n`);
    expect(connect.response?.status).toBe(403);
    const leaving = new AbortController();
    const gone = get(gw, '/plain/slow/2000', ACME, leaving.signal).catch(() => 'aborted');
    await until(() => up.arrivals.some((a) => a.url === '/slow/2000'));
    leaving.abort();
    expect(await gone).toBe('aborted');

    await until(async () => ((await scrape(gw.adminUrl)).value('sluice_requests_total', { outcome: 'client_gone' }) ?? 0) === 1);
    const m = await scrape(gw.adminUrl);
    const count = (upstream: string, tenant: string, outcome: string, rule = '') => m.value('sluice_requests_total', { upstream, tenant, outcome, rule });
    expect(count('plain', 'acme', 'forwarded')).toBe(1);
    expect(count('plain', 'acme', 'upstream_limited')).toBe(1);
    expect(count('plain', 'acme', 'upstream_error')).toBe(1);
    expect(count('plain', 'acme', 'client_gone')).toBe(1);
    expect(count('lim', 'acme', 'forwarded')).toBe(3);
    expect(count('lim', 'acme', 'rate_limited', 'tight')).toBe(1);
    expect(count('lim', 'acme', 'quota_exceeded', 'daily')).toBe(1);
    expect(count('lim', 'globex', 'forwarded')).toBe(1);
    expect(count('one', 'acme', 'forwarded')).toBe(1);
    expect(count('one', 'acme', 'queue_full')).toBe(1);
    expect(count('one', 'globex', 'queue_timeout', 'single')).toBe(1);
    expect(count('paced', 'acme', 'forwarded')).toBe(1);
    expect(count('paced', 'acme', 'queued_then_forwarded')).toBe(1);
    expect(count('flaky', 'acme', 'upstream_error')).toBe(1);
    expect(count('flaky', 'acme', 'circuit_open')).toBe(1);
    expect(count('dead', 'acme', 'upstream_error')).toBe(1);
    expect(count('nocreds', 'acme', 'credentials_unavailable')).toBe(1);
    expect(count('', '', 'rejected')).toBe(1); // the wrong key: neither tenant nor upstream known
    expect(count('', 'acme', 'rejected')).toBe(2); // no route, and the CONNECT to a host no upstream lists
    const total = m.all('sluice_requests_total').reduce((sum, s) => sum + s.value, 0);
    expect(total).toBe(22);

    // Upstream responses by class, the retried 503 included; the retry by its reason.
    expect(m.value('sluice_upstream_responses_total', { upstream: 'flaky', tenant: 'acme', class: '5xx' })).toBe(2);
    expect(m.value('sluice_upstream_responses_total', { upstream: 'plain', tenant: 'acme', class: '4xx' })).toBe(1);
    expect(m.value('sluice_upstream_responses_total', { upstream: 'lim', tenant: 'acme', class: '2xx' })).toBe(3);
    expect(m.value('sluice_retries_total', { upstream: 'flaky', reason: 'status' })).toBe(1);
    expect(m.value('sluice_breaker_state', { upstream: 'flaky', credential: '', state: 'open' })).toBe(1);
    expect(m.value('sluice_breaker_state', { upstream: 'flaky', credential: '', state: 'closed' })).toBe(0);
    expect(m.value('sluice_breaker_state', { upstream: 'flaky', credential: '', state: 'half_open' })).toBe(0);

    // Queue wait: the timed-out wait (~150 ms) and the paced one (<= 100 ms), each observed once.
    expect(m.value('sluice_queue_wait_seconds_count', { upstream: 'one', tenant: 'globex' })).toBe(1);
    expect(m.value('sluice_queue_wait_seconds_sum', { upstream: 'one', tenant: 'globex' })).toBeGreaterThanOrEqual(0.14);
    expect(m.value('sluice_queue_wait_seconds_count', { upstream: 'paced', tenant: 'acme' })).toBe(1);
    expect(m.value('sluice_queue_wait_seconds_count', { upstream: 'one', tenant: 'acme' })).toBeUndefined();
    // Upstream time: the 500 ms answer is in it; the gateway's own time excludes it and the queue.
    expect(m.value('sluice_upstream_duration_seconds_bucket', { upstream: 'one', le: '0.25' })).toBe(0);
    expect(m.value('sluice_upstream_duration_seconds_bucket', { upstream: 'one', le: '1' })).toBe(1);
    expect(m.value('sluice_gateway_overhead_seconds_count', { upstream: 'one' })).toBe(3);
    expect(m.value('sluice_gateway_overhead_seconds_bucket', { upstream: 'one', le: '0.1' })).toBe(3);
    expect(m.value('sluice_gateway_overhead_seconds_count', { upstream: '' })).toBe(2); // the refused CONNECT has no pipeline time

    // Gauges of the state now: capacities from the config, usage from the store.
    expect(m.value('sluice_limit_capacity', { upstream: 'lim', rule: 'tight' })).toBe(2);
    expect(m.value('sluice_limit_capacity', { upstream: 'lim', rule: 'daily' })).toBe(1);
    expect(m.value('sluice_limit_remaining', { upstream: 'lim', rule: 'tight', tenant: '', credential: '' })).toBe(0);
    expect(m.value('sluice_limit_utilisation_ratio', { upstream: 'lim', rule: 'tight', tenant: '', credential: '' })).toBe(1);
    expect(m.value('sluice_limit_utilisation_ratio', { upstream: 'lim', rule: 'daily', tenant: 'acme', credential: '' })).toBe(1);
    expect(m.value('sluice_limit_remaining', { upstream: 'lim', rule: 'daily', tenant: 'globex', credential: '' })).toBe(0);
    expect(m.value('sluice_queue_depth', { upstream: 'one', tenant: 'globex' })).toBeUndefined(); // nobody waits now
    expect(m.value('sluice_store_fallback', { mode: 'local' })).toBe(0);
    expect(m.value('sluice_tunnels_open', { mode: 'blind' })).toBe(0);
    expect(m.value('sluice_pause_seconds', { upstream: 'plain', credential: '' })).toBe(0);
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(m.value('sluice_process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(m.all('sluice_nodejs_eventloop_lag_seconds').length).toBe(1);
  });

  it('counts OAuth2 refreshes by outcome, and shows the token expiry and the refresh budget used', async () => {
    const endpoint = await startTokenEndpoint({ lifetimeS: 3600 });
    const api = await startTokenCheckingUpstream(endpoint);
    onCleanup(() => endpoint.close(), () => api.close());
    const gw = await gateway(testConfig(sdpUpstream(endpoint, api, '      refreshLimit: { max: 4, per: 10m }')));
    expect(await get(gw, '/sdp/api/v3/requests')).toBe(200);
    let m = await scrape(gw.adminUrl);
    expect(m.value('sluice_credential_refreshes_total', { upstream: 'sdp', outcome: 'ok' })).toBe(1);
    expect(m.value('sluice_credential_expiry_seconds', { upstream: 'sdp' })).toBeGreaterThan(3500);
    expect(m.value('sluice_credential_expiry_seconds', { upstream: 'sdp' })).toBeLessThanOrEqual(3600);
    expect(m.value('sluice_credential_refresh_budget_used_ratio', { upstream: 'sdp' })).toBe(0.25);

    endpoint.mode = 'invalid_grant';
    const forced = await request(`${gw.adminUrl}/credentials/sdp/refresh?force=true`, { method: 'POST' });
    expect(forced.statusCode).toBe(503);
    await forced.body.text();
    m = await scrape(gw.adminUrl);
    expect(m.value('sluice_credential_refreshes_total', { upstream: 'sdp', outcome: 'revoked' })).toBe(1);
    expect(m.value('sluice_credential_refresh_budget_used_ratio', { upstream: 'sdp' })).toBe(0.5);
  });
});

describe('cardinality', () => {
  it('keeps the series bounded by the config after 10,000 requests with distinct paths, hosts and keys', async () => {
    const { target } = await targetUpstream();
    const gw = await gateway(
      testConfig(`
  hosted:
    match: { hosts: [api.hosted.test] }
    ${target}
  plain:
    match: { prefix: /plain }
    ${target}
    limits:
      - { name: wide, rate: 100000/s, burst: 100000 }
`),
    );
    const pool = new Pool(gw.proxyUrl, { connections: 8, pipelining: 8 });
    onCleanup(() => pool.close());
    const send = async (i: number): Promise<number> => {
      const tenant = i % 2 === 0 ? 'acme' : 'globex';
      const key = `${tenant}:${tenant === 'acme' ? 'acme-secret-key-1' : 'globex-secret-key-2'}`;
      const auth = { 'proxy-authorization': proxyAuth(tenant, tenant === 'acme' ? 'acme-secret-key-1' : 'globex-secret-key-2') };
      let path: string;
      let headers: Record<string, string>;
      switch (i % 10) {
        case 0:
          [path, headers] = [`/plain/path-${i}?q=${i}`, { 'x-sluice-key': key, host: `vhost-${i}.example` }];
          break;
        case 1:
          [path, headers] = [`http://api.hosted.test/path-${i}`, auth];
          break;
        case 7:
          [path, headers] = [`/plain/path-${i}`, { 'x-sluice-key': `${tenant}:wrong-key-${i}` }];
          break;
        case 8:
          [path, headers] = [`http://host-${i}.example/path-${i}`, { 'proxy-authorization': proxyAuth(`tenant-${i}`, `key-${i}`) }];
          break;
        case 9:
          [path, headers] = [`/nowhere-${i}/path-${i}`, { 'x-sluice-key': key }];
          break;
        default:
          [path, headers] = [`http://host-${i}.example/path-${i}`, auth];
      }
      const res = await pool.request({ path, method: 'GET', headers });
      await res.body.dump();
      return res.statusCode;
    };
    const statuses = new Map<number, number>();
    for (let start = 0; start < 10_000; start += 500) {
      const batch = await Promise.all(Array.from({ length: 500 }, (_, j) => send(start + j)));
      for (const status of batch) statuses.set(status, (statuses.get(status) ?? 0) + 1);
    }
    expect(Object.fromEntries(statuses)).toEqual({ 200: 2_000, 401: 1_000, 403: 6_000, 407: 1_000 });

    const m = await scrape(gw.adminUrl);
    // Nothing a client sent is a label value.
    for (const sent of [/path-\d/, /vhost-/, /host-\d/, /wrong-key/, /tenant-\d/, /key-\d/, /nowhere/, /\.example/, /secret-key/]) {
      expect(m.text).not.toMatch(sent);
    }
    const total = m.all('sluice_requests_total').reduce((sum, s) => sum + s.value, 0);
    expect(total).toBe(10_000);
    expect(m.value('sluice_requests_total', { upstream: '', tenant: '', outcome: 'rejected', rule: '' })).toBe(2_000);

    // Every label value from the config or a fixed set, so each family's series are bounded by the config.
    const allowed: Record<string, ReadonlySet<string>> = {
      upstream: new Set(['', 'plain', 'hosted']),
      tenant: new Set(['', 'acme', 'globex']),
      rule: new Set(['', 'wide']),
      credential: new Set(['']),
      outcome: new Set(['forwarded', 'queued_then_forwarded', 'rate_limited', 'quota_exceeded', 'concurrency_limited', 'queue_full', 'queue_timeout',
        'upstream_paused', 'circuit_open', 'upstream_limited', 'upstream_error', 'credentials_unavailable', 'store_unavailable', 'client_gone', 'rejected',
        'gateway_error', 'ok', 'unchanged', 'failed']),
      class: new Set(['1xx', '2xx', '3xx', '4xx', '5xx']),
      reason: new Set(['status', 'connection', 'timeout', 'unprocessed', 'cooling', 'paused', 'breaker']),
      state: new Set(['closed', 'half_open', 'open']),
      store: new Set(['limits', 'tokens']),
      mode: new Set(['allow', 'deny', 'local', 'intercept', 'blind']),
    };
    const families = new Map<string, number>();
    for (const s of m.series) {
      const family = s.name.replace(/_(bucket|sum|count)$/, '');
      families.set(family, (families.get(family) ?? 0) + 1);
      if (/^sluice_(process|nodejs)_/.test(s.name)) continue; // the process's own, fixed by prom-client
      for (const [label, value] of Object.entries(s.labels)) {
        if (label === 'le') continue;
        expect(allowed[label], `${s.name} label ${label}`).toBeDefined();
        expect(allowed[label]!.has(value), `${s.name}{${label}="${value}"}`).toBe(true);
      }
    }
    // The bound: 3 upstreams x 3 tenants x 19 outcomes x 2 rules for the widest family; histograms
    // add their 15 buckets. The process metrics are a fixed few.
    for (const [family, count] of families) expect(count, family).toBeLessThanOrEqual(3 * 3 * 19 * 2);
    expect(m.series.length).toBeLessThan(600);
  });

  it('parses what prom-client writes, labels and all', () => {
    expect(parseMetrics('# HELP x y\nsluice_a{b="c",d=""} 2\nsluice_e 1.5\n')).toEqual([
      { name: 'sluice_a', labels: { b: 'c', d: '' }, value: 2 },
      { name: 'sluice_e', labels: {}, value: 1.5 },
    ]);
  });
});
