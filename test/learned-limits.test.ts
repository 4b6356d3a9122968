/**
 * Limits learned from the upstream's answers (`feedback:`), end to end against fake upstreams on
 * 127.0.0.1: a 429 with Retry-After (seconds, HTTP-date), X-RateLimit-Remaining: 0 with a reset
 * (delta, epoch), IETF RateLimit pause the upstream, and the gateway refuses with 429
 * upstream_paused (the upstream sees nothing) or waits in the queue, then serves again; an upstream
 * 429 reaches the client marked X-Sluice-Upstream-Limited with a Retry-After; a BaseLinker-style
 * body error (gzipped too) pauses that pool token until the time in it while the pool moves on; over Redis a
 * pause learned by one gateway is honoured by another.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { gzipSync } from 'node:zlib';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { CoolDownSync } from '../src/store/cool-down-sync.js';
import { PauseRegistry } from '../src/limits/pauses.js';
import type { Logger } from '../src/observability/logger.js';
import type { TokenStore } from '../src/store/tokens.js';
import { getAnswer } from './helpers/answer.js';
import { testConfig, type TestGateway } from './helpers/gateway.js';
import { describeWithRedis, sharedRedisPerBlock } from './helpers/redis.js';
import { firstOnly, scriptedUpstream, type Reply } from './helpers/scripted-upstream.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

const get = (gw: TestGateway, path: string) => getAnswer(gw, path, KEY);

const { up, start, upstreamYaml } = scriptedUpstream();

describe('pauses learned from headers', () => {
  it('a 429 with Retry-After: 2 passes through marked, then the gateway refuses without the upstream until the pause ends', async () => {
    const gw = await start(testConfig(upstreamYaml('api')));
    up.answer = firstOnly({ status: 429, headers: { 'retry-after': '2' }, body: '{"error":"slow down"}' });
    const askedAt = Date.now();
    const limited = await get(gw, '/api/x');
    const learnedAt = Date.now();
    expect(limited.status).toBe(429);
    expect(limited.text).toBe('{"error":"slow down"}');
    expect(limited.headers['retry-after']).toBe('2');
    expect(limited.headers['x-sluice-upstream-limited']).toBe('true');

    const refused = await get(gw, '/api/x');
    const refusedAt = Date.now();
    expect(refused.status).toBe(429);
    expect(refused.body).toMatchObject({ error: 'upstream_paused', upstream: 'api' });
    // The pause began after askedAt and was measured before refusedAt: however slow the machine.
    expect(refused.body.retryAfterMs).toBeGreaterThanOrEqual(2_000 - (refusedAt - askedAt));
    expect(refused.body.retryAfterMs).toBeLessThanOrEqual(2_000);
    expect(Number(refused.headers['retry-after'])).toBeLessThanOrEqual(2);
    expect(refused.headers['x-sluice-upstream-limited']).toBeUndefined();
    expect(up.seen.length).toBe(1);
    expect(gw.logs.filter((l) => l.msg === 'the upstream asked for a pause; requests wait or are refused until then')).toEqual([
      expect.objectContaining({ upstream: 'api', source: 'retry-after', pauseMs: 2_000 }),
    ]);
    const status = (await (await request(`${gw.adminUrl}/status`)).body.json()) as { pauses: Record<string, unknown> };
    expect(status.pauses).toEqual({ api: { upstream: 2 } });

    await sleep(Math.max(0, learnedAt + 2_100 - Date.now()));
    expect((await get(gw, '/api/x')).status).toBe(200);
    expect(up.seen.length).toBe(2);
  });

  it('learns Retry-After as an HTTP-date, X-RateLimit-Remaining: 0 with a delta or epoch reset, and IETF RateLimit', async () => {
    const names = ['date', 'delta', 'epoch', 'ietf', 'ietf7', 'older'];
    const gw = await start(testConfig(names.map((n) => upstreamYaml(n)).join('')));
    const now = Date.now();
    const replies: Record<string, Reply> = {
      date: { status: 429, headers: { 'retry-after': new Date(now + 3_000).toUTCString() } },
      delta: { status: 200, headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '3' } },
      epoch: { status: 200, headers: { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(Math.ceil(now / 1000) + 3) } },
      ietf: { status: 200, headers: { ratelimit: 'limit=10, remaining=0, reset=3' } },
      ietf7: { status: 200, headers: { ratelimit: '"hourly";r=0;t=3' } },
      older: { status: 200, headers: { 'ratelimit-remaining': '0', 'ratelimit-reset': '3' } },
    };
    up.answer = (req) => replies[(req.url ?? '').split('/')[1]!]!;
    for (const name of names) {
      const first = await get(gw, `/${name}/${name}`);
      expect(first.status, name).toBe(replies[name]!.status);
      const seen = up.seen.length;
      const refused = await get(gw, `/${name}/${name}`);
      expect(refused.body, name).toMatchObject({ error: 'upstream_paused', upstream: name });
      expect(refused.body.retryAfterMs, name).toBeGreaterThan(500);
      expect(refused.body.retryAfterMs, name).toBeLessThanOrEqual(4_000);
      expect(up.seen.length, name).toBe(seen);
    }
    // The 200 that carried the signal went through unmarked; only a 429 is "upstream limited".
    up.answer = () => ({ status: 200 });
  });

  it("a 429 without Retry-After gets the gateway's estimate (1 s) and pauses nothing", async () => {
    const gw = await start(testConfig(upstreamYaml('api')));
    up.answer = firstOnly({ status: 429 });
    const limited = await get(gw, '/api/x');
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('1');
    expect(limited.headers['x-sluice-upstream-limited']).toBe('true');
    expect((await get(gw, '/api/x')).status).toBe(200);
  });

  it('with onLimit: queue a request waits a pause out that ends within the queue time', async () => {
    const gw = await start(
      testConfig(upstreamYaml('q', '    onLimit: { queue: 3s }\n') + upstreamYaml('short', '    onLimit: { queue: 200ms }\n')),
    );
    up.answer = (req) => (req.url === '/first' ? { status: 429, headers: { 'retry-after': '1' } } : { status: 200 });
    expect((await get(gw, '/q/first')).status).toBe(429);
    const startedAt = Date.now();
    expect((await get(gw, '/q/then')).status).toBe(200);
    expect(Date.now() - startedAt).toBeGreaterThan(700);

    expect((await get(gw, '/short/first')).status).toBe(429);
    expect((await get(gw, '/short/then')).body.error).toBe('upstream_paused');
  });

  it('feedback.headers: false learns nothing', async () => {
    const gw = await start(testConfig(upstreamYaml('api', '    feedback: { headers: false }\n')));
    up.answer = firstOnly({ status: 429, headers: { 'retry-after': '30' } });
    expect((await get(gw, '/api/x')).headers['x-sluice-upstream-limited']).toBe('true');
    expect((await get(gw, '/api/x')).status).toBe(200);
  });
});

/** "YYYY-MM-DD HH:MM:SS" in a time zone, as BaseLinker writes it. */
function wallClock(ms: number, timeZone: string): string {
  return new Intl.DateTimeFormat('sv-SE', { timeZone, dateStyle: 'short', timeStyle: 'medium' }).format(ms);
}

const BASELINKER_RULE = `    feedback:
      body:
        - path: error_code
          equals: ERROR_BLOCKED_TOKEN
          until: "blocked until (?<until>\\\\d{4}-\\\\d\\\\d-\\\\d\\\\d \\\\d\\\\d:\\\\d\\\\d:\\\\d\\\\d)"
          timezone: Europe/Warsaw
`;

describe('feedback.body rules', () => {
  it('a BaseLinker blocked token is paused until the time in the body while the pool moves on; the client gets the 200 body', async () => {
    const gw = await start(
      testConfig(upstreamYaml('bl', '    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111, tok-b-2222] }\n' + BASELINKER_RULE)),
    );
    const blockedUntil = Date.now() + 3_000;
    const blocked = JSON.stringify({
      status: 'ERROR',
      error_code: 'ERROR_BLOCKED_TOKEN',
      error_message: `Query limit exceeded, token blocked until ${wallClock(blockedUntil, 'Europe/Warsaw')}`,
    });
    let sentBlock = false;
    up.answer = (req) => {
      if (req.headers['x-bltoken'] === 'tok-a-1111' && !sentBlock) {
        sentBlock = true;
        return { status: 200, body: blocked };
      }
      return { status: 200 };
    };
    // Tokens in turn: the first request goes with A.
    const answer = await get(gw, '/bl/getOrders');
    expect(answer.status).toBe(200);
    expect(answer.text).toBe(blocked);
    expect(answer.headers['x-sluice-upstream-limited']).toBe('true');
    expect(up.seen[0]!.token).toBe('tok-a-1111');
    const pausedLog = gw.logs.find((l) => l.msg === 'the upstream paused a pool token; the pool carries on with the others');
    expect(pausedLog).toMatchObject({ upstream: 'bl', credential: 0, source: 'body' });
    expect(pausedLog!.pauseMs).toBeGreaterThan(1_500);
    expect(pausedLog!.pauseMs).toBeLessThanOrEqual(3_000);
    expect(gw.rawLogs.join('\n')).not.toContain('tok-a-1111');

    for (let i = 0; i < 4; i++) expect((await get(gw, '/bl/getOrders')).headers['x-sluice-upstream-limited']).toBeUndefined();
    expect(up.seen.slice(1).map((s) => s.token)).toEqual(Array(4).fill('tok-b-2222'));

    await sleep(Math.max(0, blockedUntil + 100 - Date.now()));
    for (let i = 0; i < 2; i++) await get(gw, '/bl/getOrders');
    expect(up.seen.slice(5).map((s) => s.token)).toContain('tok-a-1111');
  });

  it('a gzipped BaseLinker error is decoded to be read: the token is paused, the client gets the gzipped bytes unchanged', async () => {
    const gw = await start(
      testConfig(upstreamYaml('bl', '    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111, tok-b-2222] }\n' + BASELINKER_RULE)),
    );
    const blocked = JSON.stringify({
      status: 'ERROR',
      error_code: 'ERROR_BLOCKED_TOKEN',
      error_message: `Query limit exceeded, token blocked until ${wallClock(Date.now() + 30_000, 'Europe/Warsaw')}`,
    });
    const gzipped = gzipSync(blocked);
    up.answer = (req) =>
      req.headers['x-bltoken'] === 'tok-a-1111' ? { status: 200, headers: { 'content-encoding': 'gzip' }, body: gzipped } : { status: 200 };
    const res = await request(`${gw.proxyUrl}/bl/getOrders`, { headers: { ...KEY, 'accept-encoding': 'gzip' } });
    const bytes = Buffer.from(await res.body.arrayBuffer());
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-encoding']).toBe('gzip');
    expect(res.headers['x-sluice-upstream-limited']).toBe('true');
    expect(bytes.equals(gzipped)).toBe(true);
    expect(gw.logs.find((l) => l.msg === 'the upstream paused a pool token; the pool carries on with the others')).toMatchObject({
      upstream: 'bl',
      credential: 0,
      source: 'body',
    });
    for (let i = 0; i < 3; i++) await get(gw, '/bl/getOrders');
    expect(up.seen.slice(1).map((s) => s.token)).toEqual(Array(3).fill('tok-b-2222'));
  });

  it('with every token paused, 429 upstream_paused; bodies too large, not JSON or not matching pass untouched', async () => {
    const gw = await start(
      testConfig(
        upstreamYaml(
          'bl',
          '    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111] }\n' + BASELINKER_RULE.replace('body:', 'maxBodySize: 1kb\n      body:'),
        ),
      ),
    );
    const rule = { status: 'ERROR', error_code: 'ERROR_BLOCKED_TOKEN', error_message: 'no time here' };
    const big = JSON.stringify({ ...rule, padding: 'x'.repeat(2_000) });
    const replies: Record<string, Reply> = {
      '/big': { status: 200, body: big },
      '/text': { status: 200, headers: { 'content-type': 'text/plain' }, body: JSON.stringify(rule) },
      '/other': { status: 200, body: JSON.stringify({ ...rule, error_code: 'ERROR_OTHER' }) },
      '/broken': { status: 200, body: '{"error_code": "ERROR_BLOCKED_TOKEN", ' },
      '/match': { status: 200, body: JSON.stringify(rule) },
    };
    up.answer = (req) => replies[req.url ?? '']!;
    for (const path of ['/big', '/text', '/other', '/broken']) {
      const answer = await get(gw, `/bl${path}`);
      expect(answer.text, path).toBe(replies[path]!.body);
      expect(answer.headers['x-sluice-upstream-limited'], path).toBeUndefined();
    }
    expect((await get(gw, '/bl/match')).headers['x-sluice-upstream-limited']).toBe('true');
    // No time in the body: the rule's pause (60s).
    const refused = await get(gw, '/bl/match');
    expect(refused.body).toMatchObject({ error: 'upstream_paused', upstream: 'bl' });
    expect(refused.body.retryAfterMs).toBeGreaterThan(55_000);
    expect(refused.headers['retry-after']).toBe('60');
  });
});

describe('PauseRegistry', () => {
  function logger(lines: { level: string; msg: string }[]): Logger {
    const at = (level: string) => (a: unknown, b?: unknown) => void lines.push({ level, msg: String(typeof a === 'string' ? a : b) });
    return { warn: at('warn'), info: at('info'), debug: at('debug'), error: at('error') } as unknown as Logger;
  }

  it('reading the shared pauses logs once when the store goes away and once when it is back', async () => {
    const lines: { level: string; msg: string }[] = [];
    let away = false;
    const store = {
      cooling: async () => {
        if (away) throw new Error('ECONNREFUSED');
        return new Map<number, number>();
      },
    } as unknown as TokenStore;
    const sync = new CoolDownSync(store, logger(lines), 'learned pauses', () => [{ key: 'k', learn: () => undefined }]);
    const learn = () => sync.read();
    try {
      await learn();
      away = true;
      await learn();
      await learn();
      await learn();
      away = false;
      await learn();
      await learn();
    } finally {
      sync.close();
    }
    expect(lines).toEqual([
      { level: 'warn', msg: 'cannot read learned pauses from the store; they are local to this instance until it answers' },
      { level: 'info', msg: 'learned pauses are shared through the store again' },
    ]);
  });

  it('members(): undefined with nothing paused, the paused pool tokens otherwise', () => {
    let now = 1_000_000;
    const registry = new PauseRegistry({ store: {} as TokenStore, prefix: 'test', logger: logger([]), shared: false, clock: () => now });
    const pauses = registry.acquire('api');
    expect(pauses.members()).toBeUndefined();
    pauses.pause(undefined, 5_000, 'retry-after');
    expect(pauses.members()).toBeUndefined();
    pauses.pause(1, 2_000, 'body');
    pauses.pause(0, 8_000, 'body');
    expect(pauses.members()?.sort()).toEqual([0, 1]);
    now += 3_000;
    expect(pauses.members()).toEqual([0]);
    expect(pauses.leftMs(undefined)).toBe(2_000);
    now += 6_000;
    expect(pauses.members()).toBeUndefined();
    expect(pauses.status()).toBeUndefined();
    registry.close();
  });
});

await describeWithRedis('learned pauses across instances (Redis)', () => {
  const redis = sharedRedisPerBlock();

  it('a pause learned by one gateway is honoured by the other within about a second', async () => {
    const yaml = testConfig(upstreamYaml('api'), `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix} }`);
    const one = await start(yaml);
    const two = await start(yaml);
    up.answer = firstOnly({ status: 429, headers: { 'retry-after': '10' } });
    const learnedAt = Date.now();
    expect((await get(one, '/api/x')).status).toBe(429);
    expect((await get(one, '/api/x')).body.error).toBe('upstream_paused');

    // A sync tick every second; a loaded CI machine may be late by a few.
    await until(async () => (await get(two, '/api/x')).body.error === 'upstream_paused', 5_000);
    const seen = up.seen.length;
    const refused = await get(two, '/api/x');
    const refusedAt = Date.now();
    // Durations cross the store: the pause left, less the time since it was learned (and a tick's rounding).
    expect(refused.body.retryAfterMs).toBeGreaterThanOrEqual(10_000 - (refusedAt - learnedAt) - 1_000);
    expect(refused.body.retryAfterMs).toBeLessThanOrEqual(10_000);
    expect(up.seen.length).toBe(seen);
  });

  it('a pool token paused by a body rule on one gateway is skipped by the other', async () => {
    const yaml = testConfig(
      upstreamYaml('bl', '    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111, tok-b-2222] }\n' + BASELINKER_RULE),
      `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix} }`,
    );
    const one = await start(yaml);
    const two = await start(yaml);
    const blocked = JSON.stringify({ error_code: 'ERROR_BLOCKED_TOKEN', error_message: `token blocked until ${wallClock(Date.now() + 10_000, 'Europe/Warsaw')}` });
    up.answer = (req) => (req.headers['x-bltoken'] === 'tok-a-1111' ? { status: 200, body: blocked } : { status: 200 });
    expect((await get(one, '/bl/x')).headers['x-sluice-upstream-limited']).toBe('true');
    // The other gateway shows the token paused once its sync tick has read the store.
    await until(async () => {
      const status = (await (await request(`${two.adminUrl}/status`)).body.json()) as { pauses?: Record<string, Record<string, number>> };
      return status.pauses?.bl?.['credential 0'] !== undefined;
    }, 5_000);
    up.seen.length = 0;
    for (let i = 0; i < 4; i++) await get(two, '/bl/x');
    expect(up.seen.map((s) => s.token)).toEqual(Array(4).fill('tok-b-2222'));
  });
});
