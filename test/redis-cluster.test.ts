/**
 * The Redis store on a real Redis Cluster (three masters started by helpers/redis-cluster.ts):
 * every decision is one script over keys of one hash tag, so one slot; different upstreams spread
 * over the nodes without CROSSSLOT errors; the store survives a node losing its scripts and a slot
 * moving to another node. End to end, gateways configured with the cluster's URLs limit as one.
 * Without redis-server and redis-cli installed it fails, saying so.
 */
import { randomBytes } from 'node:crypto';
import { request } from 'undici';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../src/store/redis.js';
import type { DecideRequest, StoreRule } from '../src/store/store.js';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { rateViolations } from './helpers/limit-check.js';
import { drive } from './helpers/load.js';
import { requireRedisClusterTools, startRedisCluster, type TestRedisCluster } from './helpers/redis-cluster.js';
import { startStrictUpstream, type StrictUpstream } from './helpers/strict-upstream.js';

const ACME = { tenant: 'acme', key: 'acme-secret-key-1' };
const T0 = 1_700_000_000_000; // 2_800_000 ms before the hour ends, 6_400_000 before the day
const DAY = 86_400_000;

const base = { burst: 1, fair: undefined, shadow: false, periodMs: 0 };
const rate = (key: string, limit: number, periodMs: number, burst = 1): StoreRule => ({ ...base, kind: 'rate', keys: [key], limit, periodMs, burst });
const quota = (key: string, limit: number, periodMs: number): StoreRule => ({ ...base, kind: 'quota', keys: [key], limit, periodMs });
const concurrency = (key: string, limit: number): StoreRule => ({ ...base, kind: 'concurrency', keys: [key], limit });
let leases = 0;
const decideRequest = (rules: StoreRule[], more: Partial<DecideRequest> = {}): DecideRequest => ({
  rules, candidates: 1, lease: `lease-${++leases}`, leaseTtlMs: 30_000, ...more,
});

const uniquePrefix = () => `sluice-cluster-${process.pid}-${randomBytes(4).toString('hex')}`;

describe('Redis Cluster', () => {
  let cluster: TestRedisCluster;
  /** An inspecting client: follows MOVED like any cluster client. */
  let admin: Cluster;
  /** One plain client per master, by port: each answers only for its own slots. */
  const direct = new Map<number, Redis>();

  beforeAll(async () => {
    requireRedisClusterTools();
    cluster = await startRedisCluster();
    admin = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })), { redisOptions: { maxRetriesPerRequest: 1 } });
    for (const port of cluster.ports) direct.set(port, new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: 1 }));
  }, 30_000);
  afterAll(async () => {
    admin?.disconnect();
    for (const c of direct.values()) c.disconnect();
    await cluster?.stop();
  });

  const slotOf = async (key: string) => Number(await admin.call('CLUSTER', 'KEYSLOT', key));
  /** Port of the master serving the key's slot, asked of a node (not ioredis's cache). */
  const ownerOf = async (key: string) => {
    const slot = await slotOf(key);
    const ranges = (await direct.get(cluster.ports[0]!)!.call('CLUSTER', 'SLOTS')) as [number, number, [string, number, string]][];
    const range = ranges.find(([from, to]) => slot >= from && slot <= to);
    if (!range) throw new Error(`slot ${slot} is served by no node`);
    return range[2][1];
  };
  const nodeId = async (port: number) => String(await direct.get(port)!.call('CLUSTER', 'MYID'));

  describe('RedisStore with the three URLs', () => {
    let store: RedisStore;
    let now = T0;
    const prefix = uniquePrefix();
    const twilio = `{${prefix}:twilio}`;

    beforeAll(async () => {
      store = RedisStore.connect({ url: cluster.urls, prefix, timeoutMs: 2_000, clock: () => now });
      expect(await store.waitReady(5_000)).toBe(true);
    });
    afterAll(() => store?.close());

    /** An upstream tag (`{prefix:NAMEi}`) served by another node than `than`'s. */
    const tagOnAnotherNode = async (name: string, than: string) => {
      const node = await ownerOf(than);
      for (let i = 0; i < 100; i++) {
        const tag = `{${prefix}:${name}${i}}`;
        if ((await ownerOf(`${tag}:calls`)) !== node) return tag;
      }
      throw new Error('no tag on another node in 100 tries');
    };

    const decide = (rules: StoreRule[], more: Partial<DecideRequest> = {}) => store.decide(decideRequest(rules, more));

    it('rate, concurrency and quota of one upstream in one decision; release frees a slot', async () => {
      now = T0;
      const rules = [rate(`${twilio}:steady`, 10, 10_000, 2), concurrency(`${twilio}:inflight`, 2), quota(`${twilio}:daily`, 3, DAY)];
      const remaining = async (lease: string) => {
        const d = await decide(rules, { lease });
        return [d.admitted, ...d.outcomes.map((o) => o.remaining)];
      };
      expect(await remaining('a')).toEqual([true, 1, 1, 2]);
      expect(await remaining('b')).toEqual([true, 0, 0, 1]);
      const refused = await decide(rules, { lease: 'c' });
      expect(refused.admitted).toBe(false);
      expect(refused.outcomes.map((o) => o.ok)).toEqual([false, false, true]);
      expect(refused.outcomes[0]!.waitMs).toBe(1000);

      now = T0 + 1000; // one rate token back; the concurrency rule is still full until a release
      expect((await decide(rules, { lease: 'c' })).outcomes.map((o) => o.ok)).toEqual([true, false, true]);
      await store.release([{ key: `${twilio}:inflight`, id: 'a' }]);
      expect(await remaining('c')).toEqual([true, 0, 0, 0]);

      now = T0 + 3000;
      const overQuota = await decide(rules, { lease: 'd' });
      expect(overQuota.admitted).toBe(false);
      expect(overQuota.outcomes[2]).toEqual({ ok: false, waitMs: 6_400_000 - 3000, remaining: 0, resetMs: 6_400_000 - 3000 });

      // The quota's period key is made by the script (not in KEYS): same tag, same slot, same node.
      const periodKey = `${twilio}:daily:${Math.floor(T0 / DAY)}`;
      const keys = [`${twilio}:steady`, `${twilio}:inflight`, periodKey];
      const slot = await slotOf(`${twilio}:steady`);
      for (const key of keys) expect(await slotOf(key)).toBe(slot);
      const owner = await ownerOf(`${twilio}:steady`);
      for (const key of keys) expect(await direct.get(owner)!.exists(key)).toBe(1);
      expect(await admin.get(periodKey)).toBe('3');
      expect(await admin.zrange(`${twilio}:inflight`, 0, -1)).toEqual(['b', 'c']);
    });

    it('renew keeps a lease past its TTL; an unknown lease is not created', async () => {
      now = T0;
      const c = concurrency(`${twilio}:renewed`, 1);
      expect((await decide([c], { lease: 'x', leaseTtlMs: 1000 })).admitted).toBe(true);
      now = T0 + 999;
      expect((await decide([c])).admitted).toBe(false);
      await store.renew([{ key: `${twilio}:renewed`, id: 'x' }], 1000); // x now expires at T0 + 1999
      now = T0 + 1500;
      expect((await decide([c])).admitted).toBe(false);
      now = T0 + 1999;
      expect((await decide([c], { lease: 'y', leaseTtlMs: 1000 })).admitted).toBe(true);
      await store.renew([{ key: `${twilio}:renewed`, id: 'gone' }], 1000);
      expect(await admin.zrange(`${twilio}:renewed`, 0, -1)).toEqual(['y']);
    });

    it("another upstream's keys live on another node, without CROSSSLOT errors", async () => {
      const twilioNode = await ownerOf(`${twilio}:steady`);
      const stripe = await tagOnAnotherNode('stripe', `${twilio}:steady`);
      now = T0;
      const rules = [rate(`${stripe}:calls`, 5, 1000, 5), concurrency(`${stripe}:inflight`, 3), quota(`${stripe}:daily`, 100, DAY)];
      const admitted = [];
      for (let i = 0; i < 5; i++) admitted.push((await decide(rules)).admitted);
      expect(admitted).toEqual([true, true, true, false, false]); // concurrency 3
      expect((await decide([rate(`${twilio}:other`, 10, 1000, 10), concurrency(`${twilio}:inflight2`, 10)])).admitted).toBe(true);
      const stripeNode = await ownerOf(`${stripe}:calls`);
      expect(stripeNode).not.toBe(twilioNode);
      expect(await slotOf(`${stripe}:calls`)).not.toBe(await slotOf(`${twilio}:steady`));
      expect(await direct.get(stripeNode)!.exists(`${stripe}:calls`, `${stripe}:inflight`, `${stripe}:daily:${Math.floor(T0 / DAY)}`)).toBe(3);
      // The node serving twilio does not hold stripe's keys: it redirects.
      await expect(direct.get(twilioNode)!.exists(`${stripe}:calls`)).rejects.toThrow(/MOVED/);
    });

    // ioredis auto-pipelining groups a command by the slot of its first argument, which for a
    // decision is its key count: decisions of upstreams on different nodes made in the same tick
    // would share one pipeline and fail together ("All keys in the pipeline should belong to the
    // same slots allocation group"). The store keeps decisions out of auto-pipelining on a Cluster.
    it('decisions of two upstreams on different nodes, made at once, all succeed', async () => {
      now = T0 + 30 * DAY;
      const a = `{${prefix}:batch-a}`;
      const b = await tagOnAnotherNode('batch-b', `${a}:calls`);
      const rules = (tag: string) => [rate(`${tag}:calls`, 100, 1000, 100), concurrency(`${tag}:inflight`, 100)];
      const decisions = await Promise.allSettled([decide(rules(a)), decide(rules(b)), decide(rules(a)), decide(rules(b))]);
      const failures = decisions.flatMap((d) => (d.status === 'rejected' ? [String(d.reason)] : []));
      expect(failures).toEqual([]);
    });

    // Before the SCRIPT FLUSH case: a MOVED reply that lands on a node which lost its scripts
    // fails the decision (ioredis re-sends a redirected pipeline without its NOSCRIPT fallback).
    it('follows a slot moved to another node (MOVED), keeping its state', async () => {
      now = T0 + 20 * DAY;
      const tag = `{${prefix}:moving}`;
      const r = rate(`${tag}:calls`, 10, 10_000, 3);
      expect((await decide([r])).outcomes[0]!.remaining).toBe(2);

      const slot = await slotOf(`${tag}:calls`);
      const from = await ownerOf(`${tag}:calls`);
      const to = cluster.ports.find((p) => p !== from)!;
      const [fromId, toId] = [await nodeId(from), await nodeId(to)];
      await direct.get(to)!.call('CLUSTER', 'SETSLOT', slot, 'IMPORTING', fromId);
      await direct.get(from)!.call('CLUSTER', 'SETSLOT', slot, 'MIGRATING', toId);
      const keys = (await direct.get(from)!.call('CLUSTER', 'GETKEYSINSLOT', slot, 100)) as string[];
      expect(keys).toContain(`${tag}:calls`);
      await direct.get(from)!.call('MIGRATE', '127.0.0.1', to, '', 0, 5000, 'KEYS', ...keys);
      for (const port of [to, from, ...cluster.ports.filter((p) => p !== to && p !== from)]) {
        await direct.get(port)!.call('CLUSTER', 'SETSLOT', slot, 'NODE', toId);
      }
      expect(await ownerOf(`${tag}:calls`)).toBe(to);

      // The store (unless its periodic slot refresh came first) still sends to the old node and
      // must follow the MOVED reply.
      const d = await decide([r]);
      expect(d.admitted).toBe(true);
      expect(d.outcomes[0]!.remaining).toBe(1); // the bucket moved with its key
      expect((await decide([r])).outcomes[0]!.remaining).toBe(0);
      expect((await decide([r])).admitted).toBe(false);
      expect(await direct.get(to)!.exists(`${tag}:calls`)).toBe(1);
    });

    it('a node that lost its scripts (SCRIPT FLUSH while connected) answers again at once', async () => {
      now = T0 + 10 * DAY; // fresh state for every rule below
      const rules = [rate(`${twilio}:flushed`, 10, 1000, 3), concurrency(`${twilio}:flushed-c`, 2)];
      expect((await decide(rules)).admitted).toBe(true); // the script is loaded on this node's connection
      const owner = direct.get(await ownerOf(`${twilio}:flushed`))!;
      const noscript = async () => Number(/errorstat_NOSCRIPT:count=(\d+)/.exec(await owner.info('errorstats'))?.[1] ?? 0);
      const before = await noscript();
      for (const c of direct.values()) await c.call('SCRIPT', 'FLUSH');
      const d = await decide(rules);
      expect(d.admitted).toBe(true);
      expect(d.outcomes.map((o) => o.remaining)).toEqual([1, 0]);
      expect(await noscript()).toBe(before + 1); // EVALSHA was refused once, then the store sent EVAL
    });
  });

  describe('gateways with store.url listing the cluster', () => {
    let upstream: StrictUpstream;
    let gateways: TestGateway[] = [];

    beforeAll(async () => {
      upstream = await startStrictUpstream();
    });
    afterAll(() => upstream?.close());
    afterEach(async () => {
      await Promise.all(gateways.map((g) => g.close()));
      gateways = [];
      upstream.reset();
    });

    /** onError deny: a store failure shows as 503, never hidden by a local fallback. */
    const config = (prefix: string, rules: string) =>
      testConfig(
        `  api:
    match: { prefix: /api }
    target: ${upstream.url}
    allowPrivate: true
    limits:
${rules}`,
        `store: { type: redis, url: [${cluster.urls.map((u) => `"${u}"`).join(', ')}], prefix: ${prefix}, onError: deny, timeout: 1s }`,
      );

    const get = async (gw: TestGateway, path = '/api/x') => {
      const res = await request(`${gw.proxyUrl}${path}`, { headers: { 'x-sluice-key': `${ACME.tenant}:${ACME.key}`, 'x-test-tenant': ACME.tenant } });
      const text = await res.body.text();
      return { status: res.statusCode, headers: res.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
    };
    const storeFailures = (gw: TestGateway) => gw.logs.filter((l) => String(l.msg).includes('limit store unavailable'));

    it('admits up to the limit, then refuses with 429 rate_limited; state and leases live in the cluster', async () => {
      const prefix = uniquePrefix();
      const gw = await startGateway(
        config(prefix, '      - { name: calls, rate: 3/s, burst: 3 }\n      - { name: daily, quota: 100/day }\n      - { name: inflight, concurrency: 2 }'),
      );
      gateways.push(gw);
      const statuses = [];
      for (let i = 0; i < 3; i++) statuses.push((await get(gw)).status);
      expect(statuses).toEqual([200, 200, 200]);
      const refused = await get(gw);
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ error: 'rate_limited', upstream: 'api', tenant: 'acme' });
      expect(refused.body.retryAfterMs).toBeGreaterThan(0);
      expect(refused.body.retryAfterMs).toBeLessThanOrEqual(334);
      expect(refused.headers['x-sluice-limit']).toBe('calls');
      expect(upstream.arrivals).toHaveLength(3);
      expect(storeFailures(gw)).toEqual([]);

      // Keys are {prefix:upstream}:rule:kind (limits/rules.ts).
      const tag = `{${prefix}:api}`;
      const day = Math.floor(Date.now() / DAY);
      expect(await admin.hget(`${tag}:calls:rate`, 'l')).not.toBeNull();
      expect(await admin.get(`${tag}:daily:quota:${day}`)).toBe('3');
      expect(await admin.zcard(`${tag}:inflight:concurrency`)).toBe(0); // every lease released
    });

    it('two gateways sharing the cluster never exceed a rate together', async () => {
      const prefix = uniquePrefix();
      const yaml = config(prefix, '      - { name: steady, rate: 20/s, burst: 3 }');
      gateways = await Promise.all([startGateway(yaml), startGateway(yaml)]);
      const results = await Promise.all(
        gateways.map((gw) => drive({ gatewayUrl: gw.proxyUrl, path: '/api/x', ...ACME, concurrency: 3, durationMs: 2_000 })),
      );
      const times = upstream.arrivals.map((a) => a.at);
      for (const r of results) {
        expect(r.errors).toBe(0);
        expect(Object.keys(r.statuses).sort()).toEqual(['200', '429']); // no 503: the store always answered
        expect(r.refused).toBeGreaterThan(0);
      }
      expect(rateViolations(times, { count: 20, periodMs: 1_000, burst: 3 })).toBe(0);
      expect(times.length).toBeGreaterThan(38); // about 2 s at 20/s plus the burst: used, not wasted
      for (const gw of gateways) expect(storeFailures(gw)).toEqual([]);
    });
  });
});
