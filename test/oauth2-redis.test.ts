/**
 * OAuth2 across instances sharing one Redis: they make one token request between them, share the
 * token (sealed at rest with store.tokenKey), never exceed the refresh budget together, and a lock
 * holder that stalls cannot overwrite the newer token with its late one. Without Redis, an
 * instance keeps its valid token but refreshes nothing.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { sdpUpstream, startTokenCheckingUpstream, startTokenEndpoint, type FakeTokenEndpoint, type TokenCheckingUpstream } from './helpers/oauth.js';
import { redisAvailable, sharedRedis, type TestRedis } from './helpers/redis.js';
import { relayTo, type Relay } from './helpers/relay.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const TOKEN_KEY = 'c2x1aWNlLXRlc3QtdG9rZW4ta2V5LTMyLWJ5dGVzIQ==';

let redis: TestRedis;
let endpoint: FakeTokenEndpoint;
let api: TokenCheckingUpstream;
let gateways: TestGateway[] = [];
let relay: Relay | undefined;

beforeAll(async () => {
  if (!(await redisAvailable())) throw new Error('Redis is not running on 127.0.0.1:6379 (start it, or run .ci/run)');
  redis = await sharedRedis();
});
afterAll(async () => {
  await redis.cleanup();
});
afterEach(async () => {
  relay?.resume();
  await Promise.all(gateways.map((g) => g.close()));
  await relay?.close();
  await endpoint.close();
  await api.close();
  await redis.client.del(...(await redis.keys()), 'sluice-test-none');
  gateways = [];
  relay = undefined;
});

async function world(options: { delayMs?: number; lifetimeS?: number } = {}): Promise<void> {
  endpoint = await startTokenEndpoint(options);
  api = await startTokenCheckingUpstream(endpoint);
}

function config(more = '', redisUrl = redis.url): string {
  return testConfig(
    sdpUpstream(endpoint, api, `      timeout: 1s\n${more}`),
    `store: { type: redis, url: "${redisUrl}", prefix: ${redis.prefix}, tokenKey: "${TOKEN_KEY}" }`,
  );
}

async function get(gw: TestGateway): Promise<number> {
  const res = await request(`${gw.proxyUrl}/sdp/api/v3/requests`, { headers: KEY });
  await res.body.dump();
  return res.statusCode;
}


async function credentialState(): Promise<Record<string, string>> {
  const keys = (await redis.keys()).filter((k) => k.includes(':cred:'));
  expect(keys).toHaveLength(1);
  return redis.client.hgetall(keys[0]!);
}

describe('OAuth2 on Redis', () => {
  it('three instances starting together make one token request and share the token, sealed at rest', async () => {
    await world({ delayMs: 300 });
    const yaml = config();
    gateways = await Promise.all([startGateway(yaml), startGateway(yaml), startGateway(yaml)]);
    const statuses = await Promise.all(gateways.flatMap((gw) => [get(gw), get(gw), get(gw)]));
    expect(statuses).toEqual(Array(9).fill(200));
    expect(endpoint.calls).toHaveLength(1);
    const state = await credentialState();
    expect(state.tf).toBe('1');
    expect(state.t!.startsWith('g1:')).toBe(true);
    expect(state.t).not.toContain(endpoint.issued[0]);
    expect(JSON.stringify(state)).not.toContain(endpoint.issued[0]);
  });

  it('a 401 storm through three instances never causes more refreshes than the budget', async () => {
    await world();
    const yaml = config('      refreshLimit: { max: 3, per: 1m }');
    gateways = await Promise.all([startGateway(yaml), startGateway(yaml), startGateway(yaml)]);
    for (const gw of gateways) expect(await get(gw)).toBe(200);
    api.accept = 'none';
    const stopAt = Date.now() + 2_000;
    let sent = 0;
    await Promise.all(
      gateways.flatMap((gw) =>
        [1, 2, 3].map(async () => {
          while (Date.now() < stopAt) {
            expect(await get(gw)).toBe(401);
            sent++;
          }
        }),
      ),
    );
    expect(sent).toBeGreaterThan(50);
    expect(endpoint.calls).toHaveLength(3);
  });

  it('a failing token endpoint holds every instance off for the backoff: three instances spend no more than one alone', async () => {
    await world();
    endpoint.mode = 'server_error';
    const yaml = config('      refreshLimit: { max: 10, per: 1m }');
    gateways = await Promise.all([startGateway(yaml), startGateway(yaml), startGateway(yaml)]);
    const stopAt = Date.now() + 3_000;
    while (Date.now() < stopAt) {
      for (const gw of gateways) expect(await get(gw)).toBe(503);
      await sleep(50);
    }
    // Backoffs of up to 1, 2, 4, 8 ... s (full jitter) between calls, whichever instance makes
    // them: 7 gaps within 3 s has a chance of about 3 in 10,000. Without the shared backoff the
    // other instances take the freed lock at once (10 calls in 4 s).
    expect(endpoint.calls.length).toBeGreaterThanOrEqual(2);
    expect(endpoint.calls.length).toBeLessThanOrEqual(7);
    const state = await credentialState();
    expect(Number(state.bu)).toBeGreaterThan(0); // the backoff is in the store, for every instance
  });

  it('a forced refresh on one instance brings a dead grant back on the others', async () => {
    await world();
    endpoint.mode = 'invalid_grant';
    const yaml = config();
    gateways = await Promise.all([startGateway(yaml), startGateway(yaml)]);
    const [a, b] = gateways as [TestGateway, TestGateway];
    await until(async () => (await get(b)) === 503 && b.logs.some((l) => String(l.msg).includes('grant is dead')));
    endpoint.mode = 'token'; // the operator fixed the grant at the provider
    const forced = await request(`${a.adminUrl}/credentials/sdp/refresh?force=true`, { method: 'POST' });
    expect(forced.statusCode).toBe(200);
    await forced.body.dump();
    expect(await get(a)).toBe(200);
    await until(async () => (await get(b)) === 200, 8_000);
    expect(endpoint.calls.length).toBeLessThanOrEqual(3);
  });

  it('a lock holder that stalls past its lock loses: its late token is discarded and every instance ends on the newer one', async () => {
    await world();
    relay = await relayTo(6379);
    const release = endpoint.hold();
    // A reaches Redis through the relay; its refresh is granted (fence 1), then the endpoint holds it.
    const a = await startGateway(config('', `redis://127.0.0.1:${relay.port}`));
    gateways.push(a);
    await until(() => endpoint.calls.length === 1);
    relay.pause(); // A stalls on its way to Redis: its publish waits in the socket buffers
    release();
    // B finds the lock held, waits out its TTL (timeout 1s + 2s), and refreshes itself (fence 2).
    const b = await startGateway(config());
    gateways.push(b);
    await until(async () => endpoint.calls.length === 2 && (await get(b)) === 200, 10_000);
    relay.resume(); // A's publish of fence 1 reaches Redis now, too late
    await sleep(300);
    expect(a.logs.some((l) => String(l.msg).includes('could not be shared'))).toBe(true); // A did get its token
    const state = await credentialState();
    expect(state.tf).toBe('2');
    expect(state.f).toBe('2');
    // A sent its own token meanwhile; the upstream takes only the newest, so A's 401 makes it read B's.
    const first = await get(a);
    expect([200, 401]).toContain(first);
    await until(async () => (await get(a)) === 200);
    expect(endpoint.calls).toHaveLength(2);
    expect((await credentialState()).tf).toBe('2');
  });

  it('without Redis an instance keeps its valid token and refreshes nothing; back with Redis, it refreshes again', async () => {
    await world();
    relay = await relayTo(6379);
    const gw = await startGateway(config("", `redis://127.0.0.1:${relay.port}`));
    gateways.push(gw);
    expect(await get(gw)).toBe(200);
    relay.blackhole(); // Redis's answers vanish, as on a half-open link
    // The operator asks for a refresh: it cannot be counted in the budget, so it is not made.
    const refused = await request(`${gw.adminUrl}/credentials/sdp/refresh`, { method: 'POST' });
    expect(refused.statusCode).toBe(503);
    expect(((await refused.body.json()) as { message: string }).message).toContain('store');
    expect(await get(gw)).toBe(200);
    expect(endpoint.calls).toHaveLength(1);
    // The store reconnects by itself (through the relay, which passes new connections).
    await until(async () => (await request(`${gw.adminUrl}/credentials/sdp/refresh`, { method: 'POST' })).statusCode === 200);
    expect(endpoint.calls).toHaveLength(2);
    expect(await get(gw)).toBe(200);
  });
});
