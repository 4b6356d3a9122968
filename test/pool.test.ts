/**
 * Token pools (credentials type: pool), against a fake BaseLinker that records the X-BLToken of
 * every request and answers 401 (or 403) to the tokens it holds revoked: round robin, a rejected
 * token out of rotation for its cool-down (and back after it), the limits' choice that skips
 * cooling members, 503 when every member cools, the cool-down shared between two gateways through
 * Redis, and no token value in logs or /status.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { describeWithRedis, sharedRedis, type TestRedis } from './helpers/redis.js';

const TOKENS = ['tok-a-1111', 'tok-b-2222', 'tok-c-3333'] as const;
const [A, B, C] = TOKENS;
const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const WARN = 40;
const COOL_DOWN_MSG = 'the upstream rejected a pool token; it is out of rotation for the cool-down';

interface Arrival {
  /** The X-BLToken it carried (the first, if several). */
  token: string | undefined;
  /** How many X-BLToken headers it carried. */
  tokenHeaders: number;
  /** The X-Via header the test set (which gateway sent it, when there are two). */
  via: string | undefined;
  path: string;
  at: number;
  status: number;
}

interface FakeBaseLinker {
  url: string;
  arrivals: Arrival[];
  /** Tokens answered with this status (401 or 403); every other token gets 200. */
  revoked: Map<string, number>;
  /** Arrivals carrying `token` (optionally only those since `since`, or via one gateway). */
  count(token: string, filter?: { since?: number; via?: string }): number;
  close(): Promise<void>;
}

async function startBaseLinker(): Promise<FakeBaseLinker> {
  const arrivals: Arrival[] = [];
  const revoked = new Map<string, number>();
  const server: Server = createServer((req, res) => {
    const names = req.rawHeaders.filter((_, i) => i % 2 === 0).map((n) => n.toLowerCase());
    const header = req.headers['x-bltoken'];
    const token = Array.isArray(header) ? header[0] : header;
    const status = token !== undefined && TOKENS.includes(token as (typeof TOKENS)[number]) ? (revoked.get(token) ?? 200) : 401;
    const via = req.headers['x-via'];
    arrivals.push({
      token,
      tokenHeaders: names.filter((n) => n === 'x-bltoken').length,
      via: Array.isArray(via) ? via[0] : via,
      path: req.url ?? '',
      at: Date.now(),
      status,
    });
    req.resume();
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(status === 200 ? { status: 'SUCCESS' } : { status: 'ERROR', error_code: 'ERROR_AUTH' }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    arrivals,
    revoked,
    count: (token, filter = {}) =>
      arrivals.filter((a) => a.token === token && a.at >= (filter.since ?? 0) && (filter.via === undefined || a.via === filter.via)).length,
    close: async () => {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

function blConfig(api: FakeBaseLinker, options: { coolDown?: string; limits?: string; extra?: string } = {}): string {
  return testConfig(
    `  bl:
    match: { prefix: /bl }
    target: "${api.url}"
    allowPrivate: true
    credentials: { type: pool, header: X-BLToken, tokens: [${TOKENS.join(', ')}], coolDown: ${options.coolDown ?? '1s'} }
${options.limits ? `    limits:\n${options.limits}\n` : ''}`,
    options.extra ?? '',
  );
}

let api: FakeBaseLinker;
let gateways: TestGateway[] = [];

beforeAll(async () => {
  api = await startBaseLinker();
});
afterAll(async () => {
  await api.close();
});
afterEach(async () => {
  await Promise.all(gateways.map((g) => g.close()));
  gateways = [];
  api.arrivals.length = 0;
  api.revoked.clear();
});

async function start(options: Parameters<typeof blConfig>[1] = {}): Promise<TestGateway> {
  const gw = await startGateway(blConfig(api, options));
  gateways.push(gw);
  return gw;
}

async function get(gw: TestGateway, path = '/bl/connector.php', headers: Record<string, string> = {}) {
  const res = await request(`${gw.proxyUrl}${path}`, { headers: { ...KEY, ...headers } });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, json: () => JSON.parse(text) as Record<string, unknown> };
}

interface Member {
  index: number;
  state: 'active' | 'cooling';
  coolingForS?: number;
  rejections: number;
}

async function members(gw: TestGateway): Promise<Member[]> {
  const res = await request(`${gw.adminUrl}/status`);
  const body = (await res.body.json()) as { credentials: Record<string, { type: string; members: Member[] }> };
  expect(body.credentials.bl!.type).toBe('pool');
  return body.credentials.bl!.members;
}

const active = (index: number, rejections = 0): Member => ({ index, state: 'active', rejections });
const cooling = (index: number, rejections: number, coolingForS = 1): Member => ({ index, state: 'cooling', coolingForS, rejections });

/** Sends requests one after another until `untilMs` (Date.now()); their statuses. */
async function sendUntil(gw: TestGateway, untilMs: number, headers: Record<string, string> = {}): Promise<number[]> {
  const statuses: number[] = [];
  while (Date.now() < untilMs) {
    statuses.push((await get(gw, '/bl/connector.php', headers)).status);
    await sleep(5);
  }
  return statuses;
}

async function sleepUntil(at: number): Promise<void> {
  const left = at - Date.now();
  if (left > 0) await sleep(left);
}

function coolDownLines(gw: TestGateway): Record<string, unknown>[] {
  return gw.logs.filter((l) => l.msg === COOL_DOWN_MSG);
}

describe('token pool', () => {
  it.each([
    ['no limits', undefined],
    ['a rule that does not count per credential', '      - { name: overall, rate: 1000/s, burst: 100 }'],
  ])('round robin over the tokens (%s); the client’s own X-BLToken is replaced, never forwarded alongside', async (_, limits) => {
    const gw = await start({ limits });
    for (let i = 0; i < 9; i++) expect((await get(gw, '/bl/connector.php', { 'X-BLToken': 'the-clients-own-token' })).status).toBe(200);
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B, C, A, B, C, A, B, C]);
    expect(api.arrivals.every((a) => a.tokenHeaders === 1)).toBe(true);
    expect(await members(gw)).toEqual([active(0), active(1), active(2)]);
  });

  it('a token answered 401 is out of rotation for the cool-down, the others carry on, and it comes back after', async () => {
    const gw = await start();
    api.revoked.set(B, 401);
    expect((await get(gw)).status).toBe(200); // A
    const rejected = await get(gw); // B
    const rejectedAt = Date.now();
    expect(rejected.status).toBe(401); // the upstream's answer, passed through
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B]);
    expect(await members(gw)).toEqual([active(0), cooling(1, 1), active(2)]);

    // Logged once, at warn, by member index: no token value (not even a redacted one).
    const lines = coolDownLines(gw);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: WARN, upstream: 'bl', member: 1, status: 401, coolDownMs: 1000 });
    const raw = gw.rawLogs.find((l) => l.includes(COOL_DOWN_MSG))!;
    for (const token of TOKENS) expect(raw).not.toContain(token);
    expect(raw).not.toContain('[REDACTED]');

    // During the cool-down: B is never sent, A and C take turns and serve.
    const statuses = await sendUntil(gw, rejectedAt + 700);
    expect(statuses.length).toBeGreaterThan(10);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(api.count(B)).toBe(1);
    const during = api.arrivals.slice(2).map((a) => a.token);
    expect(during.every((t, i) => t === (i % 2 === 0 ? C : A))).toBe(true);

    // After it: back in rotation, and still revoked, rejected once more (and cooling again).
    await sleepUntil(rejectedAt + 1_200);
    expect(await members(gw)).toEqual([active(0), active(1, 1), active(2)]);
    const before = api.arrivals.length;
    const after = [await get(gw), await get(gw), await get(gw)];
    const tokens = api.arrivals.slice(before).map((a) => a.token);
    expect(tokens.filter((t) => t === B)).toHaveLength(1);
    expect(new Set(tokens)).toEqual(new Set(TOKENS));
    expect(after.map((r) => r.status).sort()).toEqual([200, 200, 401]);
    expect(await members(gw)).toEqual([active(0), cooling(1, 2), active(2)]);
    expect(coolDownLines(gw)).toHaveLength(2);
  });

  it('a 403 takes a token out too; one no longer rejected after its cool-down serves again', async () => {
    const gw = await start();
    api.revoked.set(A, 403);
    expect((await get(gw)).status).toBe(403);
    const rejectedAt = Date.now();
    expect(coolDownLines(gw)[0]).toMatchObject({ member: 0, status: 403, coolDownMs: 1000 });
    expect(await members(gw)).toEqual([cooling(0, 1), active(1), active(2)]);
    for (let i = 0; i < 6; i++) expect((await get(gw)).status).toBe(200);
    expect(api.count(A)).toBe(1);
    api.revoked.clear();
    await sleepUntil(rejectedAt + 1_200);
    for (let i = 0; i < 6; i++) expect((await get(gw)).status).toBe(200);
    expect(api.count(A)).toBe(3); // two of the six
    expect(await members(gw)).toEqual([active(0, 1), active(1), active(2)]);
    // Other statuses say nothing about the token.
    expect(coolDownLines(gw)).toHaveLength(1);
  });

  it('with a rule per credential, the limits never pick a cooling member, even the least loaded: the others take the load', async () => {
    // 5 back to back per token, then one per 12 s: nothing refills during the test.
    const gw = await start({ limits: '      - { name: per-token, rate: 5/min, burst: 5, per: credential }' });
    api.revoked.set(A, 401);
    expect((await get(gw)).status).toBe(401); // all equally empty: the lowest index, A
    const rejectedAt = Date.now();
    // B and C take turns until both are full; A, with 4 left and the least loaded from the third
    // request on, is not chosen: the eleventh is refused.
    for (let i = 0; i < 10; i++) expect((await get(gw)).status).toBe(200);
    const refused = await get(gw);
    expect(refused.status).toBe(429);
    expect(refused.json()).toMatchObject({ error: 'rate_limited' });
    expect(refused.headers['x-sluice-limit']).toBe('per-token');
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B, C, B, C, B, C, B, C, B, C]);
    expect(Date.now() - rejectedAt).toBeLessThan(1_000); // all of it within the cool-down
    expect(await members(gw)).toEqual([cooling(0, 1), active(1), active(2)]);

    // Back after the cool-down: the only member with room, chosen (and, still revoked, rejected).
    await sleepUntil(rejectedAt + 1_200);
    expect((await get(gw)).status).toBe(401);
    expect(api.arrivals.map((a) => a.token).slice(11)).toEqual([A]);
    expect(await members(gw)).toEqual([cooling(0, 2), active(1), active(2)]);
  });

  it('every member rejected: 503 credentials_unavailable with the Retry-After of the soonest back, and nothing reaches the upstream', async () => {
    const gw = await start({ coolDown: '3s' });
    api.revoked.set(A, 401);
    expect((await get(gw)).status).toBe(401);
    const firstAt = Date.now();
    await sleep(1_500);
    api.revoked.set(B, 401);
    api.revoked.set(C, 401);
    expect((await get(gw)).status).toBe(401);
    expect((await get(gw)).status).toBe(401);
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B, C]);

    const res = await get(gw);
    expect(res.status).toBe(503);
    expect(res.json()).toMatchObject({ error: 'credentials_unavailable', upstream: 'bl' });
    const retryAfter = Number(res.headers['retry-after']);
    // A is back first, 3 s after its 401: 1-2 s from now (B and C would say 3).
    expect(retryAfter).toBeGreaterThanOrEqual(1);
    expect(retryAfter).toBeLessThanOrEqual(3);
    expect(retryAfter).toBe(Math.ceil((firstAt + 3_000 - Date.now()) / 1000));
    expect(await members(gw)).toEqual([cooling(0, 1, retryAfter), cooling(1, 1, 3), cooling(2, 1, 3)]);

    const statuses = await sendUntil(gw, firstAt + 2_700);
    expect(statuses.length).toBeGreaterThan(10);
    expect(statuses.every((s) => s === 503)).toBe(true);
    expect(api.arrivals).toHaveLength(3);

    // A back (and accepted again), the pool serves with it alone while B and C cool.
    api.revoked.delete(A);
    await sleepUntil(firstAt + 3_200);
    expect((await get(gw)).status).toBe(200);
    expect((await get(gw)).status).toBe(200);
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B, C, A, A]);
    const after = await members(gw);
    expect(after[0]).toEqual(active(0, 1));
    expect(after.slice(1).map((m) => m.state)).toEqual(['cooling', 'cooling']);
  });

  it('no token value in the logs or /status, whatever the client sends', async () => {
    const gw = await start();
    api.revoked.set(B, 403);
    // A client sending a pool token itself (and one in the query) learns nothing from the log.
    for (let i = 0; i < 6; i++) await get(gw, `/bl/connector.php?q=${C}`, { 'X-BLToken': C });
    expect(api.arrivals.map((a) => a.tokenHeaders)).toEqual([1, 1, 1, 1, 1, 1]);
    expect(api.arrivals.map((a) => a.token)).toEqual([A, B, C, A, C, A]);
    const statusRes = await request(`${gw.adminUrl}/status`);
    const statusText = await statusRes.body.text();
    await gw.close();
    const everything = [...gw.rawLogs, statusText].join('\n');
    for (const token of TOKENS) {
      expect(everything).not.toContain(token);
      expect(everything).not.toContain(token.slice(4)); // not even its tail
    }
    expect(coolDownLines(gw)).toHaveLength(1);
    expect(gw.rawLogs.some((l) => l.includes('q=[REDACTED]'))).toBe(true);
  });
});

await describeWithRedis('token pool on Redis', () => {
  let redis: TestRedis;
  beforeEach(async () => {
    redis = await sharedRedis();
  });
  afterEach(async () => {
    // The gateways first: nothing writes under the prefix once it is cleaned up.
    await Promise.all(gateways.map((g) => g.close()));
    gateways = [];
    await redis?.cleanup();
  });

  it.each([
    ['in turn', undefined],
    // B's choice is the store's (decide.lua): A's member, drained, is the least loaded there.
    ['chosen by a rule per credential', '      - { name: per-token, rate: 100/s, burst: 50, per: credential }'],
  ])('a 401 seen by one gateway takes the token out of rotation on the other within ~1.5 s, for the cool-down (%s)', async (_, limits) => {
    const extra = `store: { type: redis, url: "${redis.url}", prefix: ${redis.prefix} }`;
    const [gwA, gwB] = await Promise.all([start({ coolDown: '4s', extra, limits }), start({ coolDown: '4s', extra, limits })]);
    api.revoked.set(A, 401);
    // Gateway A's first request carries A (its first in turn; the least loaded of equals) and is rejected.
    expect((await get(gwA, '/bl/connector.php', { 'x-via': 'a' })).status).toBe(401);
    const rejectedAt = Date.now();
    expect(await members(gwA)).toEqual([cooling(0, 1, 4), active(1), active(2)]);

    // Gateway B, which sent nothing yet (its first would be A), learns it from the store.
    let learnedAt = 0;
    while (!learnedAt) {
      if ((await members(gwB))[0]!.state === 'cooling') learnedAt = Date.now();
      else if (Date.now() - rejectedAt > 3_000) throw new Error('gateway B never learned the cool-down');
      else await sleep(20);
    }
    expect(learnedAt - rejectedAt).toBeLessThan(1_500);
    const onB = await members(gwB);
    expect(onB[0]).toMatchObject({ index: 0, state: 'cooling', rejections: 0 }); // not its own rejection
    expect(onB[0]!.coolingForS).toBeGreaterThanOrEqual(3);
    expect(onB[0]!.coolingForS).toBeLessThanOrEqual(4);

    // From then on until the cool-down ends, B never sends A: B and C serve.
    const statuses = await sendUntil(gwB, rejectedAt + 3_500, { 'x-via': 'b' });
    expect(statuses.length).toBeGreaterThan(10);
    expect(statuses.every((s) => s === 200)).toBe(true);
    expect(api.count(A)).toBe(1);
    expect(api.count(A, { via: 'b' })).toBe(0);
    expect(api.count(B, { via: 'b' }) + api.count(C, { via: 'b' })).toBe(statuses.length);

    // After the cool-down, A is back on B too.
    api.revoked.clear();
    await sleepUntil(rejectedAt + 4_200);
    const since = Date.now();
    for (let i = 0; i < 3; i++) expect((await get(gwB, '/bl/connector.php', { 'x-via': 'b' })).status).toBe(200);
    // In turn: one of the three. Chosen: every member drained, A first (the lowest of equals).
    if (limits === undefined) expect(api.count(A, { since })).toBe(1);
    else expect(api.arrivals.find((a) => a.at >= since)!.token).toBe(A);
    expect(coolDownLines(gwA)).toHaveLength(1);
    expect(coolDownLines(gwB)).toHaveLength(0);
  });
});
