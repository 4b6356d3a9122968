/**
 * OAuth2 credentials on one instance (memory store), against a fake token endpoint that counts its
 * calls and a fake ServiceDesk Plus that accepts only the tokens it issued: injection, single
 * flight, refresh ahead, the refresh budget under 401 storms, backoff, Zoho's block, a dead grant,
 * the admin refresh, and secrets that never leave the gateway.
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import {
  sdpUpstream,
  startTokenCheckingUpstream,
  startTokenEndpoint,
  ZOHO_CLIENT_SECRET,
  ZOHO_REFRESH_TOKEN,
  type EndpointMode,
  type FakeTokenEndpoint,
  type TokenCheckingUpstream,
} from './helpers/oauth.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

interface World {
  endpoint: FakeTokenEndpoint;
  api: TokenCheckingUpstream;
  gw: TestGateway;
}
let world: World | undefined;

afterEach(async () => {
  await world?.gw.close();
  await world?.endpoint.close();
  await world?.api.close();
  world = undefined;
});

function sdpConfig(endpoint: FakeTokenEndpoint, api: TokenCheckingUpstream, more = ''): string {
  return testConfig(`${sdpUpstream(endpoint, api, more)}
  plain:
    match: { prefix: /plain }
    target: "${api.url}"
    allowPrivate: true
    credentials: { type: header, header: X-Api-Key, value: plain-api-key-123 }
`);
}

interface WorldOptions {
  lifetimeS?: number;
  delayMs?: number;
  /** How the endpoint answers from the start. */
  mode?: EndpointMode;
  /** Lines added to the credentials block. */
  more?: string;
  accept?: TokenCheckingUpstream['accept'];
}

async function start(options: WorldOptions = {}): Promise<World> {
  const endpoint = await startTokenEndpoint({ lifetimeS: options.lifetimeS ?? 3600, delayMs: options.delayMs ?? 0 });
  endpoint.mode = options.mode ?? 'token';
  const api = await startTokenCheckingUpstream(endpoint);
  api.accept = options.accept ?? 'current';
  const gw = await startGateway(sdpConfig(endpoint, api, options.more ?? '      refreshBefore: 1s'));
  world = { endpoint, api, gw };
  return world;
}

async function get(gw: TestGateway, path = '/sdp/api/v3/requests', headers: Record<string, string> = {}) {
  const res = await request(`${gw.proxyUrl}${path}`, { headers: { ...KEY, ...headers } });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, json: () => JSON.parse(text) as Record<string, unknown> };
}

async function admin(gw: TestGateway, path: string, method: 'GET' | 'POST' = 'GET', headers: Record<string, string> = {}) {
  const res = await request(`${gw.adminUrl}${path}`, { method, headers });
  return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Record<string, any> };
}


describe('OAuth2 credentials', () => {
  it('injects the token in place of the client’s own Authorization, and asks the endpoint as RFC 6749 says', async () => {
    const { gw, endpoint, api } = await start();
    const res = await get(gw, '/sdp/api/v3/requests', { authorization: 'Bearer the-clients-own' });
    expect(res.status).toBe(200);
    expect(api.arrivals.map((a) => a.authorization)).toEqual([`Zoho-oauthtoken ${endpoint.issued[0]}`]);
    expect(endpoint.calls).toHaveLength(1);
    expect(endpoint.calls[0]!.form).toEqual({
      grant_type: 'refresh_token',
      refresh_token: ZOHO_REFRESH_TOKEN,
      client_id: 'zoho-client-id',
      client_secret: ZOHO_CLIENT_SECRET,
    });
  });

  it('single flight: 1,000 concurrent requests that find no token cause one call to the token endpoint', async () => {
    const { gw, endpoint, api } = await start({ delayMs: 400 });
    const agent = new Agent({ connections: 1000 });
    try {
      const statuses = await Promise.all(
        Array.from({ length: 1000 }, async () => {
          const res = await request(`${gw.proxyUrl}/sdp/api/v3/requests`, { headers: KEY, dispatcher: agent });
          await res.body.dump();
          return res.statusCode;
        }),
      );
      expect(statuses.filter((s) => s === 200)).toHaveLength(1000);
      expect(endpoint.calls).toHaveLength(1);
      expect(api.arrivals.every((a) => a.accepted)).toBe(true);
    } finally {
      await agent.close();
    }
  });

  it('refreshes ahead of expiry: under steady load no request waits on a (slow) refresh', async () => {
    // 2 s tokens refreshed 1 s ahead by an endpoint that takes 400 ms to answer.
    const { gw, endpoint, api } = await start({ lifetimeS: 2, delayMs: 400, accept: 'unexpired' });
    await get(gw); // the first token
    const latencies: number[] = [];
    const statuses: number[] = [];
    const stopAt = performance.now() + 4_500;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        while (performance.now() < stopAt) {
          const t = performance.now();
          const res = await get(gw);
          latencies.push(performance.now() - t);
          statuses.push(res.status);
          await sleep(10);
        }
      }),
    );
    expect(endpoint.calls.length).toBeGreaterThanOrEqual(4); // the first, then about one a second
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(api.arrivals.every((a) => a.accepted)).toBe(true);
    // A request that waited on a refresh would have taken at least the endpoint's 400 ms.
    expect(Math.max(...latencies)).toBeLessThan(300);
  });

  it('a storm of 401s never causes more refreshes than refreshLimit; one refresh per rejected token', async () => {
    const { gw, endpoint, api } = await start({ more: '      refreshLimit: { max: 3, per: 1m }' });
    expect((await get(gw)).status).toBe(200);
    api.accept = 'none'; // the upstream now rejects every token
    const statuses: number[] = [];
    const stopAt = performance.now() + 2_000;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (performance.now() < stopAt) statuses.push((await get(gw)).status);
      }),
    );
    expect(statuses.length).toBeGreaterThan(50);
    // The first token, then one refresh for each of the two next rejected tokens: the budget's 3.
    expect(endpoint.calls).toHaveLength(3);
    expect(statuses.every((s) => s === 401)).toBe(true); // the upstream's answer, passed through
    const status = await admin(gw, '/status');
    expect(status.body.credentials.sdp).toMatchObject({ type: 'oauth2', refreshesInWindow: 3, refreshLimit: { max: 3, perS: 60, everyS: 0 } });
  });

  it('a token the upstream takes again after a 401 storm is no longer suspect: no request waits for the refresh the budget put off', async () => {
    const { gw, endpoint, api } = await start({ delayMs: 400, more: '      refreshLimit: { every: 2s, max: 10, per: 1m }' });
    expect((await get(gw)).status).toBe(200);
    api.accept = 'none';
    expect((await get(gw)).status).toBe(401); // suspect; the refresh it asks for must wait for `every`
    api.accept = 'current'; // the storm is over: the same token is good again
    const latencies: number[] = [];
    const stopAt = performance.now() + 2_500; // past the point where the put-off refresh was due
    while (performance.now() < stopAt) {
      const t = performance.now();
      expect((await get(gw)).status).toBe(200);
      latencies.push(performance.now() - t);
      await sleep(20);
    }
    expect(Math.max(...latencies)).toBeLessThan(300);
    expect(endpoint.calls).toHaveLength(1);
  });

  it('with the budget used up and the token expired: 503 credentials_unavailable with the Retry-After of the next allowed refresh', async () => {
    // 1 s tokens: the first, one refresh ahead of expiry, then the budget (2 per minute) forbids.
    const { gw, endpoint } = await start({ lifetimeS: 1, more: '      refreshBefore: 500ms\n      refreshLimit: { max: 2, per: 1m }' });
    expect((await get(gw)).status).toBe(200);
    await until(() => endpoint.calls.length === 2);
    await sleep(1_100); // the second token expires
    const res = await get(gw);
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ error: 'credentials_unavailable', upstream: 'sdp' });
    const retryAfter = Number(res.headers['retry-after']);
    const sinceFirst = (Date.now() - endpoint.calls[0]!.at) / 1000;
    expect(retryAfter).toBeGreaterThanOrEqual(Math.floor(60 - sinceFirst));
    expect(retryAfter).toBeLessThanOrEqual(Math.ceil(60 - sinceFirst) + 1);
    expect(endpoint.calls).toHaveLength(2);
    // Other upstreams do not care: this one is sent on (its API key is no token the fake knows).
    const plain = await get(gw, '/plain/x');
    expect(plain.status).toBe(401);
    expect(plain.text).toContain('invalid token');
  });

  it('a failing token endpoint is retried with backoff, and the upstream serves again once it recovers', async () => {
    const { gw, endpoint } = await start({ mode: 'server_error', more: '      refreshLimit: { max: 20, per: 1m }' });
    await until(() => endpoint.calls.length >= 1);
    const refused = await get(gw);
    expect(refused.status).toBe(503);
    expect(refused.json()).toMatchObject({ error: 'credentials_unavailable' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    // Requests do not hammer the endpoint: only the backoff's attempts reach it.
    for (let i = 0; i < 50; i++) await get(gw);
    await sleep(2_000);
    const failedCalls = endpoint.calls.length;
    expect(failedCalls).toBeLessThanOrEqual(6);
    expect(gw.logs.some((l) => l.msg === 'OAuth2 token refresh failed' && l.failure === 'HTTP 500, error "server_error"')).toBe(true);
    endpoint.mode = 'token';
    await until(async () => (await get(gw)).status === 200, 20_000);
    expect(endpoint.calls.length).toBe(failedCalls + 1);
  });

  it('Zoho’s “too many requests” blocks refreshing for 10 minutes', async () => {
    const { gw, endpoint } = await start({ mode: 'zoho_throttled', more: '' });
    await until(() => endpoint.calls.length === 1);
    await sleep(100);
    const res = await get(gw);
    expect(res.status).toBe(503);
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(590);
    expect(Number(res.headers['retry-after'])).toBeLessThanOrEqual(600);
    // Not even an operator's refresh within the budget gets through.
    const refresh = await admin(gw, '/credentials/sdp/refresh', 'POST');
    expect(refresh.status).toBe(503);
    await sleep(1_000);
    expect(endpoint.calls).toHaveLength(1);
    const status = await admin(gw, '/status');
    expect(status.body.credentials.sdp.blockedForS).toBeGreaterThan(590);
    expect(gw.logs.some((l) => l.level === 50 && l.upstream === 'sdp' && String(l.msg).includes('too many refreshes'))).toBe(true);
  });

  it.each(['invalid_grant', 'zoho_invalid_code'] as const)('%s: refreshing stops, and the upstream is unavailable until its credentials change', async (mode) => {
    const { gw, endpoint } = await start({ mode, more: '' });
    await until(() => endpoint.calls.length === 1);
    await sleep(100);
    const res = await get(gw);
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ error: 'credentials_unavailable', upstream: 'sdp' });
    expect(gw.logs.some((l) => l.level === 50 && l.upstream === 'sdp' && String(l.msg).includes('grant is dead'))).toBe(true);
    expect((await admin(gw, '/status')).body.credentials.sdp.state).toBe('revoked');
    for (let i = 0; i < 20; i++) await get(gw);
    await sleep(1_500);
    expect(endpoint.calls).toHaveLength(1);

    // A reload that leaves the credentials alone changes nothing; new credentials start afresh.
    endpoint.mode = 'token';
    const { writeFileSync, readFileSync } = await import('node:fs');
    writeFileSync(gw.configPath, readFileSync(gw.configPath, 'utf8').replace('drainTimeout: 5s', 'drainTimeout: 6s'));
    expect((await gw.gateway.reload()).ok).toBe(true);
    expect((await get(gw)).status).toBe(503);
    writeFileSync(gw.configPath, readFileSync(gw.configPath, 'utf8').replace(ZOHO_REFRESH_TOKEN, `${ZOHO_REFRESH_TOKEN}-new`));
    expect((await gw.gateway.reload()).ok).toBe(true);
    await until(async () => (await get(gw)).status === 200);
    expect(endpoint.calls).toHaveLength(2);
    expect(endpoint.calls[1]!.form.refresh_token).toBe(`${ZOHO_REFRESH_TOKEN}-new`);
  });

  it('client_credentials with HTTP Basic client authentication and a scope', async () => {
    const endpoint = await startTokenEndpoint();
    const api = await startTokenCheckingUpstream(endpoint, 'Bearer');
    const gw = await startGateway(
      testConfig(`
  svc:
    match: { prefix: /svc }
    target: "${api.url}"
    allowPrivate: true
    credentials:
      type: oauth2
      grant: client_credentials
      tokenUrl: "${endpoint.url}"
      clientId: "svc client"
      clientSecret: ${ZOHO_CLIENT_SECRET}
      clientAuth: basic
      scope: "read write"
`),
    );
    world = { endpoint, api, gw };
    expect((await get(gw, '/svc/x')).status).toBe(200);
    expect(endpoint.calls[0]!.form).toEqual({ grant_type: 'client_credentials', scope: 'read write' });
    expect(endpoint.calls[0]!.authorization).toBe(`Basic ${Buffer.from(`svc%20client:${ZOHO_CLIENT_SECRET}`).toString('base64')}`);
    expect(api.arrivals[0]!.authorization).toBe(`Bearer ${endpoint.issued[0]}`);
  });
});

describe('admin: credential refresh and state', () => {
  it('POST /credentials/<upstream>/refresh refreshes within the budget, past it with ?force=true, and is audited', async () => {
    const { gw, endpoint } = await start({ more: '      refreshLimit: { max: 2, per: 1m }' });
    expect((await get(gw)).status).toBe(200);
    const first = await admin(gw, '/credentials/sdp/refresh', 'POST');
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ upstream: 'sdp', refreshed: true, force: false, fence: 2 });
    expect(endpoint.calls).toHaveLength(2);
    const refused = await admin(gw, '/credentials/sdp/refresh', 'POST');
    expect(refused.status).toBe(503);
    expect(refused.body).toMatchObject({ error: 'credentials_unavailable', upstream: 'sdp' });
    expect(Number(refused.headers['retry-after'])).toBeGreaterThan(50);
    expect(endpoint.calls).toHaveLength(2);
    // Requests still use the valid token meanwhile.
    expect((await get(gw)).status).toBe(200);
    const forced = await admin(gw, '/credentials/sdp/refresh?force=true', 'POST');
    expect(forced.status).toBe(200);
    expect(forced.body).toMatchObject({ refreshed: true, force: true, fence: 3 });
    expect(endpoint.calls).toHaveLength(3);
    expect((await get(gw)).status).toBe(200);
    const audits = gw.logs.filter((l) => l.audit === 'credentials.refresh');
    expect(audits.map((l) => [l.force, l.status])).toEqual([
      [false, 200],
      [false, 503],
      [true, 200],
    ]);
    expect(audits[0]).toMatchObject({ upstream: 'sdp', from: '127.0.0.1', msg: 'admin action' });

    expect((await admin(gw, '/credentials/nope/refresh', 'POST')).status).toBe(404);
    expect((await admin(gw, '/credentials/plain/refresh', 'POST')).body).toMatchObject({ error: 'not_refreshable' });
    expect((await admin(gw, '/credentials/sdp/refresh', 'GET')).status).toBe(405);
  });

  it('admin actions need listen.adminToken as a Bearer token when one is configured', async () => {
    const endpoint = await startTokenEndpoint();
    const api = await startTokenCheckingUpstream(endpoint);
    const config = sdpConfig(endpoint, api, '').replace('  drainTimeout: 5s', '  drainTimeout: 5s\n  adminToken: admin-token-4242');
    const gw = await startGateway(config);
    world = { endpoint, api, gw };
    await until(() => endpoint.calls.length === 1);
    const none = await admin(gw, '/credentials/sdp/refresh', 'POST');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toContain('Bearer');
    expect((await admin(gw, '/credentials/sdp/refresh', 'POST', { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await admin(gw, '/credentials/sdp/refresh', 'POST', { authorization: 'Bearer admin-token-4242' })).status).toBe(200);
    expect(endpoint.calls).toHaveLength(2);
  });

  it('/status shows expiry, last refresh and the budget used, and no secret is ever logged or shown', async () => {
    const { gw, endpoint } = await start();
    // A client that puts a token in a path finds it redacted in the log, as every secret is.
    expect((await get(gw)).status).toBe(200);
    const token = endpoint.issued[0]!;
    await get(gw, `/sdp/echo?leak=${token}&other=${ZOHO_CLIENT_SECRET}`);
    await admin(gw, '/credentials/sdp/refresh', 'POST');
    const status = await admin(gw, '/status');
    const sdp = status.body.credentials.sdp;
    expect(sdp).toMatchObject({
      type: 'oauth2',
      grant: 'refresh_token',
      state: 'valid',
      token: { fence: 2, suspect: false },
      lastRefresh: { outcome: 'token' },
      refreshesInWindow: 2,
      refreshLimit: { max: 10, perS: 600, everyS: 0 },
    });
    expect(Date.parse(sdp.token.expiresAt)).toBeGreaterThan(Date.now() + 3_500_000);
    expect(sdp.token.expiresInS).toBeGreaterThan(3_500);
    expect(Date.parse(sdp.lastRefresh.at)).toBeLessThanOrEqual(Date.now());
    expect(status.body.credentials.plain).toEqual({ type: 'header' });

    await gw.close();
    const everything = [...gw.rawLogs, JSON.stringify(status.body)].join('\n');
    const secrets = [ZOHO_CLIENT_SECRET, ZOHO_REFRESH_TOKEN, encodeURIComponent(ZOHO_REFRESH_TOKEN), 'plain-api-key-123', ...endpoint.issued];
    for (const secret of secrets) expect(everything).not.toContain(secret);
    expect(endpoint.issued).toHaveLength(2);
    expect(gw.rawLogs.some((l) => l.includes('leak=[REDACTED]'))).toBe(true);
  });
});
