/**
 * The status API on the admin listener: GET /status (limits, queues, store, credentials), GET
 * /status/tenants/<tenant>, POST /reload (an admin action, audited and counted), no secret in any
 * of them or in /metrics, and a dead Redis that neither fails /status nor the scrape.
 */
import { writeFileSync } from 'node:fs';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { testConfig, type TestGateway } from './helpers/gateway.js';
import { perTestFixtures } from './helpers/fixtures.js';
import { scrape } from './helpers/metrics.js';
import { sdpUpstream, startTokenCheckingUpstream, startTokenEndpoint, ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN } from './helpers/oauth.js';
import { describeWithRedis, ownRedis, sharedRedis } from './helpers/redis.js';
import { until } from './helpers/wait.js';

const ACME = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const GLOBEX = { 'x-sluice-key': 'globex:globex-secret-key-2' };

const { upstream, gateway, onCleanup } = perTestFixtures();

async function get(gw: TestGateway, path: string, headers: Record<string, string> = ACME): Promise<number> {
  const res = await request(`${gw.proxyUrl}${path}`, { headers });
  await res.body.text();
  return res.statusCode;
}

async function admin(gw: TestGateway, path: string, method: 'GET' | 'POST' = 'GET', headers: Record<string, string> = {}) {
  const res = await request(`${gw.adminUrl}${path}`, { method, headers });
  const text = await res.body.text();
  return { status: res.statusCode, text, body: JSON.parse(text) as Record<string, any> };
}

function limitsConfig(url: string, extra = ''): string {
  return testConfig(
    `
  api:
    match: { prefix: /api }
    target: "${url}"
    allowPrivate: true
    limits:
      - { name: inflight, concurrency: 1 }
      - { name: per-hour, quota: 10/h, per: tenant }
    onLimit: { queue: 2s }
  paced:
    match: { prefix: /paced }
    target: "${url}"
    allowPrivate: true
    limits:
      - { name: pace, rate: 10/s }
  free:
    match: { prefix: /free }
    target: "${url}"
    allowPrivate: true
`,
    extra,
  );
}

/** limitsConfig's gateway, its limits kept in Redis (`store`: where) with onError: deny. */
async function redisGateway(store: string): Promise<TestGateway> {
  const fake = await upstream();
  return gateway(limitsConfig(fake.url, `store: { type: redis, onError: deny, ${store} }`));
}

describe('GET /status', () => {
  it('shows each rule with its usage and Retry-After, the queue by tenant, and each tenant its quotas left', async () => {
    const up = await upstream();
    const gw = await gateway(limitsConfig(up.url));
    expect(await get(gw, '/api/echo')).toBe(200);
    const slow = get(gw, '/api/slow/400');
    await until(() => up.arrivals.some((a) => a.url === '/slow/400'));
    const queued = get(gw, '/api/echo', GLOBEX);
    await until(async () => (await admin(gw, '/status')).body.upstreams.api.queue.depth === 1);

    const { status, body } = await admin(gw, '/status');
    expect(status).toBe(200);
    expect(body).toMatchObject({ version: expect.any(String), source: gw.configPath, store: { type: 'memory' } });
    expect(body.upstreams.api.queue).toEqual({ depth: 1, tenants: { globex: 1 } });
    expect(body.upstreams.api.onLimit).toEqual({ queueMs: 2000, maxQueue: 1000 });
    expect(body.upstreams.api.rules).toEqual([
      { rule: 'inflight', kind: 'concurrency', per: 'upstream', capacity: 1, used: 1, remaining: 0, utilisation: 1, retryAfterMs: expect.any(Number), resetMs: 0 },
    ]);
    expect(body.upstreams.api.rules[0].retryAfterMs).toBeGreaterThan(0);
    expect(body.upstreams.free).toEqual({ onLimit: 'reject', queue: { depth: 0, tenants: {} }, rules: [] });
    expect(body.tenants.acme.limits).toEqual([
      expect.objectContaining({ upstream: 'api', rule: 'per-hour', kind: 'quota', tenant: 'acme', capacity: 10, used: 2, remaining: 8, retryAfterMs: 0 }),
    ]);
    expect(body.tenants.acme.quotasLeft).toEqual({ 'api/per-hour': 8 });
    expect(body.tenants.globex.queued).toEqual({ api: 1 });
    // Existing fields stay.
    expect(body).toHaveProperty('tunnels');
    expect(body).toHaveProperty('credentials');

    // The same queue in the metrics.
    expect((await scrape(gw.adminUrl)).value('sluice_queue_depth', { upstream: 'api', tenant: 'globex' })).toBe(1);

    // A tenant's own view: every rule that bounds it (the shared one too), its quotas, its queue.
    const globex = await admin(gw, '/status/tenants/globex');
    expect(globex.status).toBe(200);
    expect(globex.body).toMatchObject({ tenant: 'globex', weight: 2 });
    expect(globex.body.upstreams.api.queued).toBe(1);
    expect(globex.body.upstreams.api.limits.map((l: { rule: string }) => l.rule)).toEqual(['inflight', 'per-hour']);
    expect(globex.body.upstreams.api.quotasLeft).toEqual({ 'per-hour': 10 }); // the queued request counts once admitted
    expect(globex.body.upstreams.free).toEqual({ limits: [], quotasLeft: {}, queued: 0 });
    expect(await slow).toBe(200);
    expect(await queued).toBe(200);
    expect((await admin(gw, '/status/tenants/globex')).body.upstreams.api.quotasLeft).toEqual({ 'per-hour': 9 });
  });

  it('answers 404 for a tenant the config does not name, without repeating what was asked', async () => {
    const up = await upstream();
    const gw = await gateway(limitsConfig(up.url));
    const unknown = await admin(gw, '/status/tenants/acme-secret-key-1');
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toBe('unknown_tenant');
    expect(unknown.text).not.toContain('acme-secret-key-1');
    expect((await admin(gw, '/status/other')).status).toBe(404);
    expect((await admin(gw, '/status/tenants/acme', 'POST')).status).toBe(405);
  });
});

describe('POST /reload', () => {
  it('reloads, says whether anything changed, refuses a bad file with its problems, and is audited and counted', async () => {
    const up = await upstream();
    const gw = await gateway(limitsConfig(up.url));
    expect((await admin(gw, '/reload')).status).toBe(405);
    const unchanged = await admin(gw, '/reload', 'POST');
    expect(unchanged.status).toBe(200);
    expect(unchanged.body).toEqual({ ok: true, version: expect.any(String), changed: false });

    writeFileSync(gw.configPath, limitsConfig(up.url).replace('quota: 10/h', 'quota: 20/h'));
    const changed = await admin(gw, '/reload', 'POST');
    expect(changed.status).toBe(200);
    expect(changed.body).toMatchObject({ ok: true, changed: true });
    expect(changed.body.version).not.toBe(unchanged.body.version);
    expect((await admin(gw, '/status')).body.version).toBe(changed.body.version);

    writeFileSync(gw.configPath, limitsConfig(up.url).replace('quota: 10/h', 'quota: lots'));
    const refused = await admin(gw, '/reload', 'POST');
    expect(refused.status).toBe(422);
    expect(refused.body.ok).toBe(false);
    expect(refused.body.problems.join('\n')).toMatch(/quota/);

    const audits = gw.logs.filter((l) => l.audit === 'config.reload');
    expect(audits.map((a) => a.outcome)).toEqual(['unchanged', 'reloaded', 'rejected']);
    const m = await scrape(gw.adminUrl);
    expect(m.value('sluice_config_reloads_total', { outcome: 'ok' })).toBe(1);
    expect(m.value('sluice_config_reloads_total', { outcome: 'unchanged' })).toBe(1);
    expect(m.value('sluice_config_reloads_total', { outcome: 'failed' })).toBe(1);
    expect(m.value('sluice_config_last_reload_success_timestamp_seconds')).toBeGreaterThan(Date.now() / 1000 - 60);
  });

  it('needs the adminToken as a Bearer token when one is configured; reads stay open', async () => {
    const up = await upstream();
    const gw = await gateway(limitsConfig(up.url).replace('  admin: 127.0.0.1:0', '  admin: 127.0.0.1:0\n  adminToken: ${ADMIN_TOKEN}'), {
      ADMIN_TOKEN: 'admin-token-7e7e7e7e',
    });
    expect((await admin(gw, '/reload', 'POST')).status).toBe(401);
    expect((await admin(gw, '/reload', 'POST', { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await admin(gw, '/reload', 'POST', { authorization: 'Bearer admin-token-7e7e7e7e' })).status).toBe(200);
    expect((await admin(gw, '/status')).status).toBe(200);
    expect((await admin(gw, '/status/tenants/acme')).status).toBe(200);
    expect((await request(`${gw.adminUrl}/metrics`)).statusCode).toBe(200);
  });
});

describe('secrets', () => {
  it('no tenant key, pool token, OAuth2 token or secret, nor the adminToken, in /metrics, /status or /status/tenants', async () => {
    const up = await upstream();
    const endpoint = await startTokenEndpoint();
    const api = await startTokenCheckingUpstream(endpoint);
    onCleanup(() => endpoint.close(), () => api.close());
    const secrets = { ADMIN_TOKEN: 'admin-token-3c3c3c3c', BL_1: 'pool-token-aaaa1111', BL_2: 'pool-token-bbbb2222' };
    const gw = await gateway(
      testConfig(`${sdpUpstream(endpoint, api)}
  bl:
    match: { prefix: /bl }
    target: "${up.url}"
    allowPrivate: true
    credentials: { type: pool, header: X-BLToken, tokens: ["\${BL_1}", "\${BL_2}"] }
    limits:
      - { name: per-token, rate: 100/min, burst: 50, per: credential }
      - { name: per-tenant, quota: 100/h, per: tenant }
    breaker: { failures: 3, window: 10s, cooldown: 10s }
`).replace('  admin: 127.0.0.1:0', '  admin: 127.0.0.1:0\n  adminToken: ${ADMIN_TOKEN}'),
      secrets,
    );
    expect(await get(gw, '/sdp/api/v3/requests')).toBe(200);
    for (let i = 0; i < 4; i++) expect(await get(gw, `/bl/x${i}`, i % 2 ? GLOBEX : ACME)).toBe(200);
    expect(await get(gw, '/bl/status/401')).toBe(401); // a pool token goes cooling

    const pages = [
      (await admin(gw, '/status')).text,
      (await admin(gw, '/status/tenants/acme')).text,
      (await admin(gw, '/status/tenants/globex')).text,
      (await scrape(gw.adminUrl)).text,
    ];
    const m = await scrape(gw.adminUrl);
    expect(m.value('sluice_pool_tokens_out', { upstream: 'bl', reason: 'cooling' })).toBe(1);
    expect(m.all('sluice_limit_remaining', { upstream: 'bl', rule: 'per-token' }).map((s) => s.labels.credential).sort()).toEqual(['0', '1']);
    expect(m.all('sluice_breaker_state', { upstream: 'bl', state: 'closed' }).map((s) => s.labels.credential).sort()).toEqual(['0', '1']);
    expect(JSON.parse(pages[1]!).upstreams.bl.limits.map((l: { rule: string }) => l.rule)).toEqual(['per-token', 'per-token', 'per-tenant']);
    expect(endpoint.issued.length).toBeGreaterThan(0);
    const everything = pages.join('\n');
    for (const secret of [
      'acme-secret-key-1',
      'globex-secret-key-2',
      ...Object.values(secrets),
      ZOHO_CLIENT_SECRET,
      ZOHO_REFRESH_TOKEN,
      ...endpoint.issued,
    ]) {
      expect(everything).not.toContain(secret);
    }
  });
});

const UNREADABLE_LOG = 'cannot read limit usage; /metrics and /status leave it out until it can be read';
const READABLE_LOG = 'limit usage can be read again';
const logged = (gw: TestGateway, msg: string, upstream: string) => gw.logs.filter((l) => l.msg === msg && l.upstream === upstream).length;

await describeWithRedis('a dead Redis', () => {
  it('fails neither /status nor the scrape: usage is left out, real failed calls counted, the fallback shown until a read sees Redis back', async () => {
    const redis = await ownRedis();
    onCleanup(() => redis.kill());
    const gw = await redisGateway(`url: "${redis.url}", timeout: 200ms, prefix: status-test`);
    expect(await get(gw, '/api/echo')).toBe(200);
    let m = await scrape(gw.adminUrl);
    expect(m.value('sluice_limit_remaining', { upstream: 'api', rule: 'inflight', tenant: '', credential: '' })).toBe(1);
    expect(m.value('sluice_limit_remaining', { upstream: 'api', rule: 'per-hour', tenant: 'acme', credential: '' })).toBe(9);
    expect((await admin(gw, '/status')).body.store).toEqual({ type: 'redis', onError: 'deny', fallback: false });

    await redis.kill();
    expect(await get(gw, '/api/echo')).toBe(503); // store_unavailable (onError: deny)
    m = await scrape(gw.adminUrl);
    expect(m.all('sluice_limit_remaining', { upstream: 'api' })).toEqual([]);
    expect(m.all('sluice_limit_utilisation_ratio', { upstream: 'api' })).toEqual([]);
    expect(m.value('sluice_limit_capacity', { upstream: 'api', rule: 'inflight' })).toBe(1);
    const errors = m.value('sluice_store_errors_total', { store: 'limits' })!;
    expect(errors).toBeGreaterThanOrEqual(1);
    // Degraded, reads answer without asking Redis but for one probe a second: four quick scrapes
    // are no four store errors.
    for (let i = 0; i < 3; i++) m = await scrape(gw.adminUrl);
    expect(m.value('sluice_store_errors_total', { store: 'limits' })).toBeLessThanOrEqual(errors + 2);
    expect(m.value('sluice_store_fallback', { mode: 'deny' })).toBe(1);
    expect(m.value('sluice_requests_total', { upstream: 'api', tenant: 'acme', outcome: 'store_unavailable', rule: '' })).toBe(1);
    const status = await admin(gw, '/status');
    expect(status.status).toBe(200);
    expect(status.body.store).toEqual({ type: 'redis', onError: 'deny', fallback: true });
    expect(status.body.upstreams.api).toMatchObject({ rules: null, error: expect.stringContaining('cannot be reached') });
    expect((await admin(gw, '/status/tenants/acme')).body.upstreams.api).toMatchObject({ limits: null, queued: 0 });
    expect(logged(gw, UNREADABLE_LOG, 'api')).toBe(1); // once, not once per scrape

    // Redis back, and no request comes: the status reads probe it and see it.
    await redis.start();
    await until(async () => (await admin(gw, '/status')).body.store.fallback === false);
    m = await scrape(gw.adminUrl);
    expect(m.value('sluice_store_fallback', { mode: 'deny' })).toBe(0);
    expect(m.value('sluice_limit_remaining', { upstream: 'api', rule: 'inflight', tenant: '', credential: '' })).toBe(1);
    expect(logged(gw, READABLE_LOG, 'api')).toBe(1);
  });
});

await describeWithRedis('a Redis that answers a read with an error', () => {
  it('leaves that upstream out of the scrape and /status, counts each failed call, logs it once, and shows it again once it reads', async () => {
    const redis = await sharedRedis();
    onCleanup(() => redis.cleanup());
    const gw = await redisGateway(`url: "${redis.url}", prefix: ${redis.prefix}`);
    // State of another shape under the rule's key: Redis answers the read with WRONGTYPE.
    await redis.client.set(`{${redis.prefix}:api}:inflight:concurrency`, 'not a sorted set');
    // The counter is written before the scrape's own read fails: each scrape shows the previous one's.
    const errors = (await scrape(gw.adminUrl)).value('sluice_store_errors_total', { store: 'limits' })!;
    let m = await scrape(gw.adminUrl);
    expect(m.value('sluice_store_errors_total', { store: 'limits' })).toBe(errors + 1);
    expect(m.all('sluice_limit_remaining', { upstream: 'api' })).toEqual([]);
    expect(m.value('sluice_limit_remaining', { upstream: 'paced', rule: 'pace', tenant: '', credential: '' })).toBe(1);
    expect(m.value('sluice_process_resident_memory_bytes')).toBeGreaterThan(0);
    const status = await admin(gw, '/status');
    expect(status.status).toBe(200);
    expect(status.body.store.fallback).toBe(false); // an error reply is no outage
    expect(status.body.upstreams.api).toMatchObject({ rules: null, error: expect.stringContaining('failed to read') });
    expect(status.body.upstreams.paced.rules).toHaveLength(1);
    expect((await admin(gw, '/status/tenants/acme')).body.upstreams.api).toMatchObject({ limits: null, error: expect.stringContaining('failed to read') });
    expect(logged(gw, UNREADABLE_LOG, 'api')).toBe(1);
    expect(logged(gw, UNREADABLE_LOG, 'paced')).toBe(0);

    await redis.client.del(`{${redis.prefix}:api}:inflight:concurrency`);
    m = await scrape(gw.adminUrl);
    expect(m.value('sluice_limit_remaining', { upstream: 'api', rule: 'inflight', tenant: '', credential: '' })).toBe(1);
    expect(m.value('sluice_limit_remaining', { upstream: 'api', rule: 'per-hour', tenant: 'globex', credential: '' })).toBe(10);
    expect(logged(gw, READABLE_LOG, 'api')).toBe(1);
  });
});
