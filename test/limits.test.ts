/**
 * Limits end to end on the memory store: a strict upstream records every arrival and the checks of
 * helpers/limit-check.ts count violations of the configured limit; refusals carry exact
 * Retry-After and RateLimit headers; queues wait, order by priority, give up when hopeless and
 * forget clients that leave; leases come back however a request ends.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { concurrencyViolations, rateViolations, utilisation } from './helpers/limit-check.js';
import { drive } from './helpers/load.js';
import { nowMs, startStrictUpstream, type StrictUpstream } from './helpers/strict-upstream.js';

const ACME = { tenant: 'acme', key: 'acme-secret-key-1' };
const GLOBEX = { tenant: 'globex', key: 'globex-secret-key-2' };

let upstream: StrictUpstream;
let gw: TestGateway | undefined;

beforeAll(async () => {
  upstream = await startStrictUpstream();
});
afterAll(() => upstream.close());
afterEach(async () => {
  await gw?.close();
  gw = undefined;
  upstream.reset();
});

function limited(rules: string, extra = ''): string {
  return testConfig(`  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
${extra}    limits:
${rules}`);
}

async function get(path: string, who = ACME, headers: Record<string, string> = {}, signal?: AbortSignal) {
  const res = await request(`${gw!.proxyUrl}${path}`, {
    headers: { 'x-sluice-key': `${who.tenant}:${who.key}`, 'x-test-tenant': who.tenant, ...headers },
    ...(signal ? { signal } : {}),
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

describe('rate', () => {
  it('never lets the upstream see more than the rate, and uses what it allows', async () => {
    gw = await startGateway(limited('      - { name: steady, rate: 20/s, burst: 2 }'));
    const started = nowMs();
    const result = await drive({ gatewayUrl: gw.proxyUrl, path: '/api/x', ...ACME, concurrency: 8, durationMs: 2_000 });
    const times = upstream.arrivals.map((a) => a.at);
    expect(result.refused).toBeGreaterThan(0);
    expect(rateViolations(times, { count: 20, periodMs: 1_000, burst: 2 }), 'violations').toBe(0);
    expect(utilisation(times, { count: 20, periodMs: 1_000, burst: 2 }, started, started + 2_000), 'utilisation').toBeGreaterThan(0.9);
  });

  it('refuses with 429, an exact Retry-After, the RateLimit headers and the rule name', async () => {
    gw = await startGateway(limited('      - { name: calls, rate: 2/s }'));
    expect((await get('/api/a')).status).toBe(200);
    const refused = await get('/api/a');
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ error: 'rate_limited', upstream: 'api', tenant: 'acme' });
    const waitMs = refused.body.retryAfterMs as number;
    expect(waitMs).toBeGreaterThan(400);
    expect(waitMs).toBeLessThanOrEqual(500);
    expect(refused.headers['retry-after']).toBe('1');
    expect(refused.headers['x-sluice-limit']).toBe('calls');
    expect(refused.headers['ratelimit-policy']).toBe('"calls";q=2;w=1');
    expect(refused.headers.ratelimit).toBe('"calls";r=0;t=1');
    // Waiting exactly what it said admits.
    await sleep(waitMs);
    const again = await get('/api/a');
    expect(again.status).toBe(200);
    expect(again.headers['ratelimit-policy']).toBe('"calls";q=2;w=1');
    expect(again.headers.ratelimit).toMatch(/^"calls";r=0;t=1$/);
  });

  it('matches rules by method and path glob, and consumes nothing when one rule refuses', async () => {
    gw = await startGateway(
      limited(`      - { name: all, rate: 2/min, burst: 2 }
      - { name: calls, match: { method: POST, path: /v1/*/Calls.json }, rate: 1/min }`),
    );
    const post = async (path: string) =>
      (await request(`${gw!.proxyUrl}/api${path}`, { method: 'POST', headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } })).statusCode;
    expect(await post('/v1/AC1/Calls.json')).toBe(200); // all: 1 left, calls: 0 left
    const refused = await get('/api/v1/AC1/Calls.json', ACME, {}); // GET: only "all" applies
    expect(refused.status).toBe(200); // all: 0 left
    expect(await post('/v1/AC1/Calls.json')).toBe(429);
    expect(await post('/v1/AC1/x/Calls.json')).toBe(429); // "*" is one segment: only "all" applies, and it is spent
    expect(upstream.arrivals).toHaveLength(2);
  });

  it('keeps each rule to the requests it matches, and answers both rules atomically', async () => {
    gw = await startGateway(
      limited(`      - { name: wide, rate: 2/min, burst: 2 }
      - { name: narrow, match: { path: /narrow/** }, rate: 1/min }`),
    );
    expect((await get('/api/narrow/a/b')).status).toBe(200); // wide 1 left, narrow spent
    const refused = await get('/api/narrow/a/b');
    expect(refused.status).toBe(429);
    expect(refused.headers['x-sluice-limit']).toBe('narrow');
    // The refused request took nothing from "wide": one more goes elsewhere, then wide is spent.
    expect((await get('/api/other')).status).toBe(200);
    expect((await get('/api/other')).headers['x-sluice-limit']).toBe('wide');
  });
});

describe('per: credential', () => {
  it('gives each pool token its own limit and sends each request on the least-loaded token with room', async () => {
    gw = await startGateway(
      testConfig(`  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: pool, header: X-BLToken, tokens: [token-one, token-two, token-three] }
    limits:
      - { name: per-token, rate: 2/min, burst: 2, per: credential }`),
    );
    const statuses = [];
    for (let i = 0; i < 7; i++) statuses.push((await get('/api/x')).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 429]);
    // Least loaded first: the three tokens in turn, then each a second time.
    expect(upstream.arrivals.map((a) => a.key)).toEqual(['token-one', 'token-two', 'token-three', 'token-one', 'token-two', 'token-three']);
  });
});

describe('concurrency', () => {
  it('never has more in flight upstream than the limit', async () => {
    gw = await startGateway(limited('      - { name: inflight, concurrency: 3 }'));
    const result = await drive({ gatewayUrl: gw.proxyUrl, path: '/api/slow/60', ...ACME, concurrency: 10, durationMs: 1_500 });
    const intervals = upstream.arrivals.map((a) => ({ start: a.at, end: a.end ?? Infinity }));
    expect(concurrencyViolations(intervals, 3)).toBe(0);
    expect(upstream.inFlightMax()).toBe(3);
    expect(result.statuses[429]).toBeGreaterThan(0);
    expect(result.admitted).toBeGreaterThan(40);
  });

  it('releases the lease when the upstream fails, when it is unreachable, and when the client leaves', async () => {
    gw = await startGateway(limited('      - { name: one, concurrency: 1 }'));
    expect((await get('/api/status/500')).status).toBe(500);
    expect((await get('/api/x')).status).toBe(200);
    // The client leaves while the upstream is still working on it.
    const gone = new AbortController();
    const pending = get('/api/slow/5000', ACME, {}, gone.signal).catch((err: Error) => err.name);
    await sleep(100);
    expect((await get('/api/x')).headers['x-sluice-limit']).toBe('one');
    gone.abort();
    expect(await pending).toBe('AbortError');
    await sleep(50);
    expect((await get('/api/x')).status).toBe(200);
  });

  it('refuses with concurrency_limited and a Retry-After of 1 s', async () => {
    gw = await startGateway(limited('      - { name: one, concurrency: 1 }'));
    const slow = get('/api/slow/300');
    await sleep(50);
    const refused = await get('/api/x');
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ error: 'concurrency_limited', retryAfterMs: 1000 });
    expect(refused.headers['retry-after']).toBe('1');
    expect((await slow).status).toBe(200);
  });
});

describe('quota', () => {
  it('counts per tenant per calendar hour and refuses until the hour ends', async () => {
    gw = await startGateway(limited('      - { name: hourly, quota: 3/h, per: tenant }'));
    for (let i = 0; i < 3; i++) expect((await get('/api/x')).status).toBe(200);
    const refused = await get('/api/x');
    expect(refused.status).toBe(429);
    expect(refused.body.error).toBe('quota_exceeded');
    const untilHourEnd = 3_600_000 - (Date.now() % 3_600_000);
    expect(Math.abs((refused.body.retryAfterMs as number) - untilHourEnd)).toBeLessThan(2_000);
    expect(refused.headers['ratelimit-policy']).toBe('"hourly";q=3;w=3600');
    // Another tenant has its own quota.
    expect((await get('/api/x', GLOBEX)).status).toBe(200);
  });
});

describe('onLimit: queue', () => {
  const queued = (rules: string, queue: string) => limited(rules, `    onLimit: ${queue}\n`);

  it('holds requests until they can go instead of refusing them', async () => {
    gw = await startGateway(queued('      - { name: calls, rate: 10/s }', '{ queue: 2s }'));
    const results = await Promise.all(Array.from({ length: 8 }, () => get('/api/x')));
    expect(results.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(rateViolations(upstream.arrivals.map((a) => a.at), { count: 10, periodMs: 1_000 })).toBe(0);
    expect(gw.logs.filter((l) => typeof l.queuedMs === 'number').length).toBeGreaterThanOrEqual(6);
  });

  it('refuses at once a request that could not be admitted within the queue time', async () => {
    gw = await startGateway(queued('      - { name: calls, rate: 2/s }', '{ queue: 300ms }'));
    expect((await get('/api/x')).status).toBe(200);
    const asked = performance.now();
    const refused = await get('/api/x');
    expect(refused.status).toBe(429);
    expect(performance.now() - asked).toBeLessThan(150);
    expect(refused.body.retryAfterMs).toBeGreaterThan(300);
  });

  it('serves queued requests by priority, then arrival', async () => {
    gw = await startGateway(queued('      - { name: calls, rate: 5/s }', '{ queue: 5s }'));
    expect((await get('/api/first')).status).toBe(200);
    const order = ['low-1', 'normal-1', 'low-2', 'critical-1', 'high-1', 'normal-2'];
    const pending = [];
    for (const name of order) {
      pending.push(get(`/api/${name}`, ACME, { 'x-sluice-priority': name.split('-')[0]! }));
      await sleep(5);
    }
    expect((await Promise.all(pending)).map((r) => r.status)).toEqual(Array(6).fill(200));
    // All six arrive within one interval (200 ms), so the first of them is not served before the others queue.
    const served = upstream.arrivals.slice(1).map((a) => a.path.slice(1));
    expect(served).toEqual(['critical-1', 'high-1', 'normal-1', 'normal-2', 'low-1', 'low-2']);
  });

  it('forgets a queued request whose client left, and the next one moves up', async () => {
    gw = await startGateway(queued('      - { name: calls, rate: 2/s }', '{ queue: 5s }'));
    expect((await get('/api/first')).status).toBe(200);
    const gone = new AbortController();
    const abandoned = get('/api/abandoned', ACME, {}, gone.signal).catch((err: Error) => err.name);
    await sleep(50);
    const waiting = get('/api/waiting');
    await sleep(50);
    gone.abort();
    expect(await abandoned).toBe('AbortError');
    expect((await waiting).status).toBe(200);
    expect(upstream.arrivals.map((a) => a.path)).toEqual(['/first', '/waiting']);
    // It took the slot the abandoned request had: one interval after the first, not two.
    expect(upstream.arrivals[1]!.at - upstream.arrivals[0]!.at).toBeLessThan(700);
  });

  it('answers queue_full past maxQueue', async () => {
    gw = await startGateway(queued('      - { name: calls, rate: 1/s }', '{ queue: 5s, maxQueue: 2 }'));
    expect((await get('/api/x')).status).toBe(200);
    const pending = [get('/api/q1'), get('/api/q2')];
    await sleep(50);
    const full = await get('/api/q3');
    expect(full.status).toBe(429);
    expect(full.body.error).toBe('queue_full');
    expect((await Promise.all(pending)).map((r) => r.status)).toEqual([200, 200]);
  });

  it('answers 429 when the queue time runs out before room comes', async () => {
    gw = await startGateway(queued('      - { name: one, concurrency: 1 }', '{ queue: 300ms }'));
    const slow = get('/api/slow/1500');
    await sleep(50);
    const asked = performance.now();
    const refused = await get('/api/x');
    const waited = performance.now() - asked;
    expect(refused.status).toBe(429);
    expect(refused.body.error).toBe('concurrency_limited');
    expect(waited).toBeGreaterThanOrEqual(290);
    expect(waited).toBeLessThan(800);
    expect((await slow).status).toBe(200);
  });

  it('waits for a request in flight to end under a concurrency limit', async () => {
    gw = await startGateway(queued('      - { name: one, concurrency: 1 }', '{ queue: 2s }'));
    const results = await Promise.all([get('/api/slow/200'), get('/api/slow/200'), get('/api/slow/200')]);
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(upstream.inFlightMax()).toBe(1);
  });
});

describe('mode: shadow', () => {
  it('reports what it would refuse and refuses nothing', async () => {
    gw = await startGateway(limited('      - { name: trial, rate: 1/min, mode: shadow }'));
    const results = [await get('/api/x'), await get('/api/x'), await get('/api/x')];
    expect(results.map((r) => r.status)).toEqual([200, 200, 200]);
    expect(results.map((r) => r.headers['x-sluice-shadow-limit'])).toEqual([undefined, 'trial', 'trial']);
    expect(gw.logs.filter((l) => l.msg === 'request').map((l) => l.shadowLimited)).toEqual([undefined, ['trial'], ['trial']]);
  });

  it('applies to every rule of an upstream with mode: shadow', async () => {
    gw = await startGateway(limited('      - { name: a, rate: 1/min }\n      - { name: b, concurrency: 1 }', '    mode: shadow\n'));
    const results = await Promise.all([get('/api/slow/100'), get('/api/slow/100')]);
    expect(results.map((r) => r.status)).toEqual([200, 200]);
    expect(results.map((r) => r.headers['x-sluice-shadow-limit']).filter(Boolean)).toEqual(['a, b']);
  });
});
