import { request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { concurrencyViolations, maxConcurrent } from './helpers/limit-check.js';
import { nowMs, startStrictUpstream, type StrictUpstream } from './helpers/strict-upstream.js';

async function get(up: StrictUpstream, path: string, headers: Record<string, string> = {}) {
  const res = await request(`${up.url}${path}`, { headers });
  const body = (await res.body.json()) as { ok: boolean; status: number; path: string };
  return { status: res.statusCode, body };
}

describe('strict upstream', () => {
  let up: StrictUpstream;
  beforeAll(async () => {
    up = await startStrictUpstream();
  });
  afterAll(async () => {
    await up.close();
  });
  beforeEach(() => up.reset());

  it('records each arrival with a high-resolution time, method and path', async () => {
    const before = nowMs();
    const r = await get(up, '/v1/things?x=1', { 'x-test-tenant': 'acme' });
    const after = nowMs();
    expect(r).toEqual({ status: 200, body: { ok: true, status: 200, path: '/v1/things' } });
    expect(up.arrivals).toHaveLength(1);
    const a = up.arrivals[0]!;
    expect(a).toMatchObject({ method: 'GET', path: '/v1/things', key: '', tenant: 'acme' });
    expect(a.at).toBeGreaterThanOrEqual(before);
    expect(a.at).toBeLessThanOrEqual(after);
    expect(a.end).toBeGreaterThanOrEqual(a.at);
  });

  it('groups by authorization, else x-bltoken, else ""', async () => {
    await get(up, '/a', { authorization: 'Bearer one', 'x-bltoken': 'ignored' });
    await get(up, '/b', { 'x-bltoken': 'tok-2' });
    await get(up, '/c');
    expect(up.arrivals.map((a) => a.key)).toEqual(['Bearer one', 'tok-2', '']);
    expect(up.arrivals[2]!.tenant).toBeUndefined();
  });

  it('answers /status/CODE with that status', async () => {
    const r = await get(up, '/status/503');
    expect(r.status).toBe(503);
    expect(r.body.ok).toBe(false);
  });

  it('measures requests in flight, overall and per key', async () => {
    const started = nowMs();
    await Promise.all([
      ...Array.from({ length: 5 }, () => get(up, '/slow/150', { authorization: 'k1' })),
      ...Array.from({ length: 2 }, () => get(up, '/slow/150', { authorization: 'k2' })),
    ]);
    expect(nowMs() - started).toBeGreaterThanOrEqual(145);
    expect(up.inFlightMax()).toBe(7);
    expect(up.inFlightMax('k1')).toBe(5);
    expect(up.inFlightMax('k2')).toBe(2);
    expect(up.inFlightMax('nobody')).toBe(0);
    // The arrivals' intervals tell the same story.
    const intervals = up.arrivals.map((a) => ({ start: a.at, end: a.end! }));
    expect(maxConcurrent(intervals)).toBe(7);
    expect(concurrencyViolations(intervals, 5)).toBe(2);

    // Sequential requests never overlap; reset forgot the earlier maximum.
    up.reset();
    for (let i = 0; i < 3; i++) await get(up, '/slow/5', { authorization: 'k1' });
    expect(up.inFlightMax()).toBe(1);
    expect(up.inFlightMax('k1')).toBe(1);
  });

  it('waits delayMs when configured', async () => {
    const slow = await startStrictUpstream({ delayMs: 60 });
    try {
      const t0 = nowMs();
      await get(slow, '/x');
      expect(nowMs() - t0).toBeGreaterThanOrEqual(55);
    } finally {
      await slow.close();
    }
  });
});
