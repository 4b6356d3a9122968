/**
 * An upstream that reports fewer requests left than the gateway counts pulls the gateway's state
 * down to it (issue 6): after `X-RateLimit-Remaining: 2` (or IETF RateLimit r=2) the gateway
 * admits two more and then refuses by itself, on the memory store and on Redis, where a second
 * gateway sees the lowered state at once. What is not the count's to lower stays: rules per
 * tenant, a count above the gateway's own, a count without a reset, a count of a shorter window
 * than the rule's (a per-second 0 against a daily quota), and with a pool the rules counting all
 * tokens together (a token's count lowers only its own rule per credential).
 */
import type { OutgoingHttpHeaders } from 'node:http';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { testConfig, type TestGateway } from './helpers/gateway.js';
import { describeWithRedis, sharedRedisPerBlock } from './helpers/redis.js';
import { firstOnly, scriptedUpstream } from './helpers/scripted-upstream.js';

const ACME = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const GLOBEX = { 'x-sluice-key': 'globex:globex-secret-key-2' };

/** The upstream: it records the X-Token (the pool tests' token) of each request. */
const { up, start, gateways, upstreamYaml } = scriptedUpstream('x-token');

/** One request every 6 s (no refill within a test), 20 back to back. */
function config(rule: string, store = ''): string {
  return testConfig(upstreamYaml('api', `    limits:\n      - ${rule}\n`), store);
}
const UPSTREAM_WIDE = '{ name: calls, rate: 10/min, burst: 20 }';

async function statuses(gw: TestGateway, count: number, headers = ACME): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    const res = await request(`${gw.proxyUrl}/api/x`, { headers });
    await res.body.dump();
    out.push(res.statusCode);
  }
  return out;
}

/** The gateway's own lowering is a fire-and-forget store call: give it a moment to land. */
async function reported(gw: TestGateway, headers: OutgoingHttpHeaders, client = ACME): Promise<void> {
  up.answer = firstOnly({ status: 200, headers });
  expect(await statuses(gw, 1, client)).toEqual([200]);
  await new Promise((resolve) => setTimeout(resolve, 50));
}

function cases(store: () => string): void {
  it('X-RateLimit-Remaining: 2 lets two more through, then the gateway refuses without the upstream', async () => {
    const gw = await start(config(UPSTREAM_WIDE, store()));
    await reported(gw, { 'x-ratelimit-remaining': '2', 'x-ratelimit-limit': '3', 'x-ratelimit-reset': '3600' });
    expect(await statuses(gw, 3)).toEqual([200, 200, 429]);
    expect(up.seen).toHaveLength(3);
  });

  it('IETF RateLimit: the least r among the policies whose window is long enough for the rule', async () => {
    const gw = await start(config(UPSTREAM_WIDE, store())); // refills its burst of 20 in 120 s
    await reported(gw, { ratelimit: '"second";r=3;t=1, "hour";r=1;t=3000, "day";r=5;t=80000' });
    expect(await statuses(gw, 2)).toEqual([200, 429]);
  });

  it('a count above the gateway\'s own changes nothing, and a rule per tenant is not lowered', async () => {
    const above = await start(config(UPSTREAM_WIDE, store()));
    await reported(above, { 'x-ratelimit-remaining': '500', 'x-ratelimit-reset': '3600' });
    expect(await statuses(above, 5)).toEqual([200, 200, 200, 200, 200]);

    const perTenant = await start(config('{ name: mine, rate: 10/min, burst: 20, per: tenant }', store()));
    await reported(perTenant, { 'x-ratelimit-remaining': '1', 'x-ratelimit-reset': '3600' }, GLOBEX);
    expect(await statuses(perTenant, 3, GLOBEX)).toEqual([200, 200, 200]);
  });

  it('a count without a reset, or of a window shorter than the rule needs, leaves the rule alone', async () => {
    const noReset = await start(config(UPSTREAM_WIDE, store()));
    await reported(noReset, { 'x-ratelimit-remaining': '1' });
    expect(await statuses(noReset, 3)).toEqual([200, 200, 200]);

    // A per-second limit reporting 0 (reset in 1 s) says nothing about a daily quota...
    const daily = await start(config('{ name: daily, quota: 1000/day }', store()));
    await reported(daily, { ratelimit: '"second";r=0;t=1' });
    // (the pause it asks for is the upstream's answer to that: waited out, then the quota still has room)
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    expect(await statuses(daily, 3)).toEqual([200, 200, 200]);
    // ...but a daily count does.
    await reported(daily, { ratelimit: '"second";r=9;t=1, "day";r=1;t=86400' });
    expect(await statuses(daily, 2)).toEqual([200, 429]);
  });

  it('with a pool, a token\'s count lowers its own rule per credential, not the rule of the whole pool', async () => {
    const gw = await start(
      config(
        `{ name: pool-wide, rate: 10/min, burst: 30 }
      - { name: per-token, rate: 10/min, burst: 20, per: credential }
    credentials: { type: pool, header: X-Token, tokens: [token-one-1111, token-two-2222] }`,
        store(),
      ),
    );
    await reported(gw, { 'x-ratelimit-remaining': '1', 'x-ratelimit-reset': '3600' });
    const lowered = up.seen[0]!.token;
    // That token has 1 left and the other its 20: 21 more, then the gateway refuses by itself. The
    // pool-wide rule (30) is not lowered to 1, or the second request would have been refused.
    expect(await statuses(gw, 22)).toEqual([...Array<number>(21).fill(200), 429]);
    expect(up.seen.filter((request) => request.token === lowered)).toHaveLength(2);
    expect(up.seen).toHaveLength(22);
  });
}

describe('reported remaining, memory store', () => cases(() => ''));

await describeWithRedis('reported remaining, Redis store', () => {
  const redis = sharedRedisPerBlock();
  const store = () => `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix}-${gateways.length}-${Date.now()} }`;
  cases(store);

  it('the lowered state is shared: a second gateway refuses after the two that are left', async () => {
    const yaml = config(UPSTREAM_WIDE, `store: { type: redis, url: "${redis().url}", prefix: ${redis().prefix}-shared }`);
    const one = await start(yaml);
    const two = await start(yaml);
    await reported(one, { 'x-ratelimit-remaining': '2', 'x-ratelimit-reset': '3600' });
    expect(await statuses(two, 3)).toEqual([200, 200, 429]);
  });
});
