/**
 * Cool-downs announced over Redis pub/sub (store/cool-down-channel.ts): a pause learned, a breaker
 * opened or a pool token rejected by one gateway reaches another sharing the Redis as soon as the
 * store tells it; a Redis that dies neither blocks requests nor the stop, and once it is back the
 * gateway listens again by itself. The listening connection notices a half-open socket (PING), and
 * a Redis that refuses pub/sub is reported once, not at every reconnection.
 */
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { coolDownChannel, coolDownPattern, CoolDownSubscriber } from '../src/store/cool-down-channel.js';
import { RedisStore } from '../src/store/redis.js';
import { testConfig, type TestGateway } from './helpers/gateway.js';
import { describeWithRedis, ownRedis, sharedRedisPerBlock, type OwnRedis } from './helpers/redis.js';
import { relayTo } from './helpers/relay.js';
import { scriptedUpstream } from './helpers/scripted-upstream.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };
/**
 * The gateways read the store this rarely (GatewayOptions.syncEveryMs): within a test only an
 * announcement gets a cool-down across, so the bound below can be generous for a loaded machine.
 */
const POLL_MS = 60_000;
const AT_ONCE_MS = 3_000;
const [TOKEN_A, TOKEN_B] = ['tok-a-1111', 'tok-b-2222'];

const { up, start, upstreamYaml } = scriptedUpstream();

async function get(gw: TestGateway, path: string): Promise<{ status: number; error: unknown }> {
  const res = await request(`${gw.proxyUrl}${path}`, { headers: KEY });
  const text = await res.body.text();
  return { status: res.statusCode, error: text.startsWith('{"error"') ? (JSON.parse(text) as { error: unknown }).error : undefined };
}

/** /paused learns pauses, /broken has a breaker, /pooled a pool of two tokens. */
function config(store: string): string {
  return testConfig(
    upstreamYaml('paused') +
      upstreamYaml('broken', '    breaker: { failures: 1, cooldown: 10s }\n') +
      upstreamYaml('pooled', `    credentials: { type: pool, header: X-BLToken, tokens: [${TOKEN_A}, ${TOKEN_B}], coolDown: 60s }\n`),
    store,
  );
}

function startMany(yaml: string, count: number): Promise<TestGateway[]> {
  return Promise.all(Array.from({ length: count }, () => start(yaml, { syncEveryMs: POLL_MS })));
}

/** The state of each member of the `pooled` token pool, from /status. */
async function poolStates(gw: TestGateway): Promise<string[]> {
  const body = (await (await request(`${gw.adminUrl}/status`)).body.json()) as { credentials: Record<string, { members: { state: string }[] }> };
  return body.credentials.pooled!.members.map((m) => m.state);
}

/**
 * Until `listeners` connections hear the prefix's announcements: a gateway is serving before its
 * listening connection has subscribed. The probe's key is no key of theirs: they read nothing.
 */
async function listening(client: Redis, prefix: string, listeners: number): Promise<void> {
  const probe = `{${prefix}:probe}`;
  expect(coolDownPattern(prefix)).toBe(`{${prefix}:*}:cool-down`);
  await until(async () => (await client.publish(coolDownChannel(probe), probe)) >= listeners, 5_000);
}

await describeWithRedis('cool-downs announced through Redis', () => {
  const redis = sharedRedisPerBlock();
  const shared = () => `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix} }`;

  it('a pause learned by one gateway refuses on the other long before its next read', async () => {
    const [one, two] = await startMany(config(shared()), 2);
    await listening(redis().client, redis().prefix, 2);
    up.answer = () => ({ status: 429, headers: { 'retry-after': '10' } });
    expect((await get(one!, '/paused/x')).status).toBe(429);
    const pauses = two!.gateway.policy.upstreams.get('paused')!.pauses;
    await until(() => pauses.leftMs(undefined) > 0, AT_ONCE_MS);
    const seen = up.seen.length;
    expect(await get(two!, '/paused/x')).toEqual({ status: 429, error: 'upstream_paused' });
    expect(up.seen).toHaveLength(seen);
  });

  it('a breaker opened by one gateway refuses on the other long before its next read', async () => {
    const [one, two] = await startMany(config(shared()), 2);
    await listening(redis().client, redis().prefix, 2);
    up.answer = () => ({ status: 500 });
    expect((await get(one!, '/broken/x')).status).toBe(500);
    const breakers = two!.gateway.policy.upstreams.get('broken')!.breakers!;
    await until(() => breakers.status().state === 'open', AT_ONCE_MS);
    const seen = up.seen.length;
    expect(await get(two!, '/broken/x')).toEqual({ status: 503, error: 'circuit_open' });
    expect(up.seen).toHaveLength(seen);
    expect(two!.logs.filter((l) => l.msg === 'circuit breaker opened by another instance')).toHaveLength(1);
  });

  it('a pool token rejected on one gateway leaves the rotation on the other long before its next read', async () => {
    const [one, two] = await startMany(config(shared()), 2);
    await listening(redis().client, redis().prefix, 2);
    up.answer = (req) => ({ status: req.headers['x-bltoken'] === TOKEN_A ? 401 : 200 });
    expect((await get(one!, '/pooled/x')).status).toBe(401); // A: each gateway's first in turn
    await until(async () => (await poolStates(two!))[0] === 'cooling', AT_ONCE_MS);
    expect((await get(two!, '/pooled/x')).status).toBe(200);
    expect(up.seen.map((s) => s.token)).toEqual([TOKEN_A, TOKEN_B]);
  });
});

await describeWithRedis('cool-down announcements with Redis gone', () => {
  let own: OwnRedis;
  let client: Redis;
  beforeAll(async () => {
    own = await ownRedis();
    client = new Redis(own.url, { maxRetriesPerRequest: 0, retryStrategy: () => 100 });
    client.on('error', () => undefined);
  });
  afterAll(async () => {
    client.disconnect();
    await own.kill();
  });

  it('a dead Redis blocks neither requests nor the stop; back, the gateway listens again by itself', async () => {
    // A store timeout far above the bounds below: a request or a stop that waited for Redis (for
    // its answer or its return) would take at least 5 s, while one that does not wait takes
    // milliseconds. The bounds leave room for a machine busy with other test files.
    const [gw] = await startMany(config(`store: { type: redis, url: "${own.url}", timeout: 5s, onError: local }`), 1);
    await listening(client, 'sluice', 1);
    await own.kill();
    const asked = performance.now();
    up.answer = () => ({ status: 429, headers: { 'retry-after': '10' } });
    expect((await get(gw!, '/paused/x')).status).toBe(429); // learned here, shared with nobody
    expect((await get(gw!, '/paused/x')).error).toBe('upstream_paused');
    expect(performance.now() - asked).toBeLessThan(3_000);

    await own.start();
    await until(() => client.status === 'ready', 5_000);
    await listening(client, 'sluice', 1);
    const stopping = performance.now();
    await gw!.close();
    expect(performance.now() - stopping).toBeLessThan(3_000);
    // The stop closed the listening connection too: nobody hears the prefix any more.
    expect(await client.publish(coolDownChannel('{sluice:probe}'), 'x')).toBe(0);
  });
});

await describeWithRedis('the listening connection', () => {
  const redis = sharedRedisPerBlock();

  /** A client as the store makes one: no offline queue, no command retried, reconnecting soon. */
  function connect(url: string): Redis {
    const client = new Redis(url, { maxRetriesPerRequest: 0, enableOfflineQueue: false, retryStrategy: () => 50 });
    client.on('error', () => undefined);
    return client;
  }

  it('ends with the RedisStore that made it, even with a watch still open', async () => {
    const store = RedisStore.connect({ url: redis().url, prefix: redis().prefix, timeoutMs: 2_000 });
    const probe = `{${redis().prefix}:probe}`;
    const listeners = () => redis().client.publish(coolDownChannel(probe), probe);
    try {
      expect(await store.waitReady(5_000)).toBe(true);
      const watch = store.tokens().watchCoolDowns(redis().prefix, { cooled: () => undefined, refused: () => undefined });
      await listening(redis().client, redis().prefix, 1);
      await store.close(); // the watch is left open, as a caller that forgets would leave it
      await until(async () => (await listeners()) === 0, 2_000);
      // Not back after a reconnection delay (500 ms) either: the connection is gone for good.
      await new Promise((resolve) => setTimeout(resolve, 700));
      expect(await listeners()).toBe(0);
      watch.close(); // late, and harmless
      // A watch asked of a closed store hears nothing and opens nothing.
      store.tokens().watchCoolDowns(redis().prefix, { cooled: () => undefined, refused: () => undefined });
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await listeners()).toBe(0);
    } finally {
      await store.close();
    }
  });

  it('drops a socket gone half-open (its PING unanswered) and subscribes again', async () => {
    const relay = await relayTo(Number(new URL(redis().url).port || 6379));
    const client = connect(`redis://127.0.0.1:${relay.port}`);
    const heard: string[] = [];
    const watch = new CoolDownSubscriber(client, 100).watch(redis().prefix, { cooled: (key) => heard.push(key), refused: () => undefined });
    const announced = async (key: string) => {
      await redis().client.publish(coolDownChannel(key), key);
      return heard.includes(key);
    };
    try {
      await until(() => announced(`{${redis().prefix}:before}`), 5_000);
      relay.blackhole(); // the socket stays open, and nothing crosses it any more
      await until(() => announced(`{${redis().prefix}:after}`), 3_000);
    } finally {
      watch.close();
      client.disconnect();
      await relay.close();
    }
  });

  it('a Redis that refuses pub/sub is said once, not at every reconnection, until a subscription succeeds', async () => {
    const user = `${redis().prefix}-user`;
    const acl = (...rules: string[]) => redis().client.call('ACL', 'SETUSER', user, ...rules);
    const kill = () => redis().client.call('CLIENT', 'KILL', 'USER', user);
    /** PSUBSCRIBEs Redis refused the user so far (ACL LOG). */
    const denials = async () => {
      const entries = (await redis().client.call('ACL', 'LOG')) as unknown[][];
      const fields = entries.map((entry) => new Map(entry.flatMap((v, i) => (i % 2 === 0 ? [[String(v), entry[i + 1]] as const] : []))));
      return fields.filter((f) => f.get('username') === user && f.get('object') === 'psubscribe').reduce((n, f) => n + Number(f.get('count')), 0);
    };
    await acl('on', '>pw', '~*', '&*', '+@all', '-psubscribe');
    const client = connect(`redis://${user}:pw@127.0.0.1:${new URL(redis().url).port || 6379}`);
    const refusals: string[] = [];
    const watch = new CoolDownSubscriber(client).watch(redis().prefix, { cooled: () => undefined, refused: (error) => refusals.push(error.message) });
    try {
      await until(() => refusals.length === 1, 5_000);
      expect(refusals[0]).toContain('NOPERM');
      // Reconnected, and refused again: not said again.
      const before = await denials();
      await kill();
      await until(async () => (await denials()) > before, 5_000);
      await new Promise((resolve) => setTimeout(resolve, 200)); // the refusal's reply on its way
      expect(refusals).toHaveLength(1);
      // Allowed, it subscribes; refused after that, it is said again.
      await acl('+psubscribe');
      await kill();
      await listening(redis().client, redis().prefix, 1);
      await acl('-psubscribe');
      await kill();
      await until(() => refusals.length === 2, 5_000);
    } finally {
      watch.close();
      client.disconnect();
      await redis().client.call('ACL', 'DELUSER', user);
    }
  });
});
