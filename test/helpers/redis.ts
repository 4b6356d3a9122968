/**
 * Redis for tests. `sharedRedis()` is the machine's Redis on 127.0.0.1:6379 with a key prefix of
 * the test's own (removed afterwards); in CI (CI=true) a missing Redis fails the test, it never
 * skips. `ownRedis()` starts a private redis-server on a free port, for tests that kill it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/store/redis.js';

export const SHARED_REDIS_URL = 'redis://127.0.0.1:6379';

export interface TestRedis {
  url: string;
  prefix: string;
  client: Redis;
  /** Every key under the prefix. */
  keys(): Promise<string[]>;
  /** Deletes the prefix's keys and disconnects. */
  cleanup(): Promise<void>;
}

/** Whether the shared Redis answers; throws in CI when it does not. */
export async function redisAvailable(): Promise<boolean> {
  const client = new Redis(SHARED_REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.ping();
    return true;
  } catch (err) {
    if (process.env.CI === 'true') throw new Error(`CI needs Redis on 127.0.0.1:6379: ${String(err)}`);
    return false;
  } finally {
    client.disconnect();
  }
}

/**
 * `describe(name, body)` when the shared Redis answers; without it, one failing test that says so.
 * Redis tests never skip, in CI or out.
 */
export async function describeWithRedis(name: string, body: () => void): Promise<void> {
  const probe = await redisAvailable().then(
    (up) => (up ? undefined : new Error(`no Redis on ${SHARED_REDIS_URL} (start it, or run .ci/run)`)),
    (error: Error) => error,
  );
  if (probe) describe(name, () => it('needs Redis', () => expect.fail(probe.message)));
  else describe(name, body);
}

export interface RedisStoreFixture {
  redis: TestRedis;
  store: RedisStore;
}

/**
 * For the describe block it is called in: a RedisStore on the shared Redis, with a prefix of its
 * own and the test's driven clock; afterwards every key a test left must have a TTL (nothing the
 * store writes may outlive its use).
 */
export function redisStoreFixture(clock: () => number): () => RedisStoreFixture {
  let fixture: RedisStoreFixture | undefined;
  beforeAll(async () => {
    const redis = await sharedRedis();
    const store = RedisStore.connect({ url: redis.url, prefix: redis.prefix, timeoutMs: 2000, clock });
    fixture = { redis, store };
    expect(await store.waitReady(5000)).toBe(true);
  });
  afterAll(async () => {
    await fixture?.store.close();
    await fixture?.redis.cleanup();
  });
  afterEach(async () => {
    const redis = fixture!.redis;
    for (const key of await redis.keys()) expect(await redis.client.pttl(key), `${key} has no TTL`).not.toBe(-1);
  });
  return () => fixture!;
}

export async function sharedRedis(): Promise<TestRedis> {
  const prefix = `sluice-test-${process.pid}-${randomBytes(4).toString('hex')}`;
  const client = new Redis(SHARED_REDIS_URL, { maxRetriesPerRequest: 1 });
  const keys = async () => {
    const found: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await client.scan(cursor, 'MATCH', `*${prefix}*`, 'COUNT', 1000);
      found.push(...batch);
      cursor = next;
    } while (cursor !== '0');
    return found;
  };
  return {
    url: SHARED_REDIS_URL,
    prefix,
    client,
    keys,
    cleanup: async () => {
      const left = await keys();
      if (left.length > 0) await client.del(...left);
      client.disconnect();
    },
  };
}

/** For the describe block it is called in: the shared Redis with a prefix of its own, cleaned up after the block. */
export function sharedRedisPerBlock(): () => TestRedis {
  let redis: TestRedis | undefined;
  beforeAll(async () => {
    redis = await sharedRedis();
  });
  afterAll(async () => {
    await redis?.cleanup();
  });
  return () => redis!;
}

export interface OwnRedis {
  url: string;
  port: number;
  /** Starts it unless it runs. */
  start(): Promise<void>;
  /** SIGKILL: the way a crashed Redis goes. */
  kill(): Promise<void>;
  pid(): number;
}

async function freePort(): Promise<number> {
  const server = createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  return port;
}

export async function ownRedis(): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const own: OwnRedis = {
    url: `redis://127.0.0.1:${port}`,
    port,
    async start() {
      if (child && child.exitCode === null && child.signalCode === null) return;
      child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
      for (let i = 0; i < 100; i++) {
        const client = new Redis(own.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
        client.on('error', () => undefined);
        try {
          await client.connect();
          await client.ping();
          return;
        } catch {
          await sleep(50);
        } finally {
          client.disconnect();
        }
      }
      throw new Error(`redis-server did not start on port ${port}`);
    },
    pid() {
      if (child?.pid === undefined) throw new Error('redis-server is not running');
      return child.pid;
    },
    async kill() {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
  };
  await own.start();
  return own;
}
