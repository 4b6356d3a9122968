/**
 * limits/feedback.ts: what a response says about pausing, as a table of header variants
 * (Retry-After seconds and HTTP-date, X-RateLimit-* delta/epoch seconds/epoch ms, IETF RateLimit in
 * both drafts' shapes, RateLimit-Remaining/-Reset), body rules (BaseLinker's blocked token, times
 * in a time zone), and bad input that must neither throw nor pause for absurd durations.
 */
import { brotliCompressSync, deflateRawSync, deflateSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { decodedBody, pauseFromBody, pauseFromHeaders, reportedCounts, timeIn, type BodyRule } from '../src/limits/feedback.js';

const NOW = Date.UTC(2024, 4, 3, 15, 0, 0); // 2024-05-03 15:00:00 UTC
const HOUR = 3_600_000;
const epochS = (ms: number) => String(Math.floor(ms / 1000));

describe('pauseFromHeaders', () => {
  const cases: [string, number, Record<string, string | string[]>, number | undefined, string?][] = [
    ['429 Retry-After seconds', 429, { 'retry-after': '2' }, 2_000, 'retry-after'],
    ['503 Retry-After seconds', 503, { 'retry-after': '30' }, 30_000, 'retry-after'],
    ['429 Retry-After HTTP-date', 429, { 'retry-after': new Date(NOW + 90_000).toUTCString() }, 90_000, 'retry-after'],
    ['429 Retry-After in the past', 429, { 'retry-after': new Date(NOW - 90_000).toUTCString() }, undefined],
    ['429 Retry-After 0', 429, { 'retry-after': '0' }, undefined],
    ['429 without Retry-After', 429, {}, undefined],
    ['200 with Retry-After is no pause', 200, { 'retry-after': '5' }, undefined],
    ['500 with Retry-After is no pause', 500, { 'retry-after': '5' }, undefined],
    ['Retry-After garbage', 429, { 'retry-after': 'soon' }, undefined],
    ['Retry-After negative', 429, { 'retry-after': '-5' }, undefined],
    ['Retry-After loose date text', 429, { 'retry-after': '2024-05-03' }, undefined],
    ['Retry-After absurd: capped', 429, { 'retry-after': '999999999' }, HOUR, 'retry-after'],
    ['Retry-After repeated: the first', 429, { 'retry-after': ['3', '9'] }, 3_000, 'retry-after'],
    ['X-RateLimit reset delta', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '20' }, 20_000, 'x-ratelimit'],
    ['X-RateLimit reset epoch seconds', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': epochS(NOW + 45_000) }, 45_000, 'x-ratelimit'],
    ['X-RateLimit reset epoch ms', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': String(NOW + 7_500) }, 7_500, 'x-ratelimit'],
    ['X-RateLimit reset fraction', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '1.5' }, 1_500, 'x-ratelimit'],
    ['X-RateLimit remaining > 0', 200, { 'x-ratelimit-remaining': '3', 'x-ratelimit-reset': '20' }, undefined],
    ['X-RateLimit no reset', 200, { 'x-ratelimit-remaining': '0' }, undefined],
    ['X-RateLimit reset epoch in the past', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': epochS(NOW - 5_000) }, undefined],
    ['X-RateLimit reset garbage', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '1e400' }, undefined],
    ['X-RateLimit reset far epoch: capped', 200, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '99999999999' }, HOUR, 'x-ratelimit'],
    ['429 with Retry-After and X-RateLimit: Retry-After', 429, { 'retry-after': '4', 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '60' }, 4_000, 'retry-after'],
    ['429 without Retry-After, X-RateLimit', 429, { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '6' }, 6_000, 'x-ratelimit'],
    ['IETF RateLimit (draft 6 and before)', 200, { ratelimit: 'limit=100, remaining=0, reset=30' }, 30_000, 'ratelimit'],
    ['IETF RateLimit (draft 7 on)', 200, { ratelimit: '"default";r=0;t=12' }, 12_000, 'ratelimit'],
    ['IETF RateLimit, several policies: the exhausted one', 200, { ratelimit: '"a";r=5;t=1, "b";r=0;t=30' }, 30_000, 'ratelimit'],
    ['IETF RateLimit, several exhausted: the longest', 200, { ratelimit: '"a";r=0;t=5, "b";r=2;t=90, "c";r=0;t=40' }, 40_000, 'ratelimit'],
    ['IETF RateLimit, commas and semicolons in names', 200, { ratelimit: '"a,b;r=0";r=3;t=60, "c";r=0;t=7' }, 7_000, 'ratelimit'],
    ['IETF RateLimit, several policies with room', 200, { ratelimit: '"a";r=5;t=1, "b";r=1;t=30' }, undefined],
    ['IETF RateLimit, exhausted without t', 200, { ratelimit: '"a";r=0, "b";r=1;t=30' }, undefined],
    ['IETF RateLimit (draft 6), first value of each key', 200, { ratelimit: 'limit=100, remaining=0, reset=30, reset=90' }, 30_000, 'ratelimit'],
    ['IETF RateLimit with room', 200, { ratelimit: 'limit=100, remaining=5, reset=30' }, undefined],
    ['IETF RateLimit garbage', 200, { ratelimit: ';;;=,,=r=t=' }, undefined],
    ['RateLimit-Remaining/-Reset', 200, { 'ratelimit-remaining': '0', 'ratelimit-reset': '8' }, 8_000, 'ratelimit'],
    ['nothing', 200, { 'content-type': 'application/json' }, undefined],
  ];

  it.each(cases)('%s', (_name, status, headers, pauseMs, source) => {
    const learned = pauseFromHeaders(status, headers, NOW, HOUR);
    expect(learned?.pauseMs).toBe(pauseMs);
    if (source) expect(learned?.source).toBe(source);
  });
});

const BLOCKED: BodyRule = {
  path: ['error_code'],
  equals: 'ERROR_BLOCKED_TOKEN',
  until: /blocked until (?<until>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)/,
  timezone: 'Europe/Warsaw',
  pauseMs: 60_000,
};

function body(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

describe('reportedCounts', () => {
  const cases: [string, Record<string, string | string[]>, { remaining: number; resetMs: number }[]][] = [
    ['X-RateLimit-* (delta)', { 'x-ratelimit-remaining': '7', 'x-ratelimit-reset': '30' }, [{ remaining: 7, resetMs: 30_000 }]],
    ['X-RateLimit-* (epoch s)', { 'x-ratelimit-remaining': '7', 'x-ratelimit-reset': epochS(NOW + HOUR) }, [{ remaining: 7, resetMs: HOUR }]],
    ['RateLimit-Remaining/-Reset', { 'ratelimit-remaining': '3', 'ratelimit-reset': '2' }, [{ remaining: 3, resetMs: 2_000 }]],
    ['IETF draft 6', { ratelimit: 'limit=100, remaining=12, reset=30' }, [{ remaining: 12, resetMs: 30_000 }]],
    [
      'IETF draft 7+: every policy with its t',
      { ratelimit: '"hour";r=50;t=3000, "a,b;c";r=4;t=1' },
      [
        { remaining: 50, resetMs: 3_000_000 },
        { remaining: 4, resetMs: 1_000 },
      ],
    ],
    ['zero', { 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': '5' }, [{ remaining: 0, resetMs: 5_000 }]],
    ['repeated header: the first', { 'x-ratelimit-remaining': ['2', '1'], 'x-ratelimit-reset': '5' }, [{ remaining: 2, resetMs: 5_000 }]],
    ['no reset: which window is unknown', { 'x-ratelimit-remaining': '7' }, []],
    ['a reset already past', { 'x-ratelimit-remaining': '7', 'x-ratelimit-reset': epochS(NOW - HOUR) }, []],
    ['none', { 'content-type': 'text/plain' }, []],
    ['garbage', { 'x-ratelimit-remaining': '-1', 'x-ratelimit-reset': '5', 'ratelimit-remaining': '1e3', 'ratelimit-reset': '5', ratelimit: 'r=x;t=1' }, []],
  ];
  it.each(cases)('%s', (_name, headers, expected) => {
    expect(reportedCounts(headers, NOW)).toEqual(expected);
  });
});

describe('pauseFromBody', () => {
  it("pauses until BaseLinker's time, read in Europe/Warsaw (UTC+2 in May)", () => {
    const answer = body({
      status: 'ERROR',
      error_code: 'ERROR_BLOCKED_TOKEN',
      error_message: 'Query limit exceeded, token blocked until 2024-05-03 17:15:34',
    });
    expect(pauseFromBody([BLOCKED], answer, NOW, HOUR)).toEqual({ pauseMs: 15 * 60_000 + 34_000, source: 'body' });
  });

  it("falls back to the rule's pause when the time is missing, unreadable or past", () => {
    const without = body({ error_code: 'ERROR_BLOCKED_TOKEN', error_message: 'Query limit exceeded' });
    expect(pauseFromBody([BLOCKED], without, NOW, HOUR)?.pauseMs).toBe(60_000);
    const past = body({ error_code: 'ERROR_BLOCKED_TOKEN', error_message: 'token blocked until 2020-01-01 00:00:00' });
    expect(pauseFromBody([BLOCKED], past, NOW, HOUR)?.pauseMs).toBe(60_000);
    const absurd = body({ error_code: 'ERROR_BLOCKED_TOKEN', error_message: 'token blocked until 9999-12-31 23:59:59' });
    expect(pauseFromBody([BLOCKED], absurd, NOW, HOUR)?.pauseMs).toBe(HOUR);
  });

  it('matches nested paths, numbers and booleans exactly; anything else is no match', () => {
    const nested: BodyRule = { ...BLOCKED, path: ['error', 'code'], equals: 429, until: undefined };
    expect(pauseFromBody([nested], body({ error: { code: 429 } }), NOW, HOUR)?.pauseMs).toBe(60_000);
    expect(pauseFromBody([nested], body({ error: { code: '429' } }), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([nested], body({ error: 'code' }), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([nested], body({ error: null }), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([nested], body([1, 2]), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([BLOCKED], body({ status: 'SUCCESS' }), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([BLOCKED], Buffer.from('{"error_code": "ERROR_BLOCKED_TOKEN"'), NOW, HOUR)).toBeUndefined();
    expect(pauseFromBody([BLOCKED], Buffer.from([0xff, 0xfe, 0x00]), NOW, HOUR)).toBeUndefined();
    // A path through the prototype is no path.
    expect(pauseFromBody([{ ...nested, path: ['constructor', 'name'], equals: 'Object' }], body({}), NOW, HOUR)).toBeUndefined();
  });
});

describe('decodedBody', () => {
  const json = body({ error_code: 'ERROR_BLOCKED_TOKEN' });

  it('decodes gzip, deflate (zlib or raw), br and several codings in turn; identity or none is the body', () => {
    expect(decodedBody(gzipSync(json), 'gzip', 1024)).toEqual(json);
    expect(decodedBody(gzipSync(json), 'X-GZIP', 1024)).toEqual(json);
    expect(decodedBody(deflateSync(json), 'deflate', 1024)).toEqual(json);
    expect(decodedBody(deflateRawSync(json), 'deflate', 1024)).toEqual(json);
    expect(decodedBody(brotliCompressSync(json), 'br', 1024)).toEqual(json);
    expect(decodedBody(brotliCompressSync(gzipSync(json)), 'gzip, br', 1024)).toEqual(json);
    expect(decodedBody(json, 'identity', 1024)).toEqual(json);
    expect(decodedBody(json, undefined, 1024)).toEqual(json);
  });

  it('is undefined for unknown encodings, corrupt data and bodies larger than the limit once decoded', () => {
    expect(decodedBody(json, 'zstd', 1024)).toBeUndefined();
    expect(decodedBody(json, 'gzip', 1024)).toBeUndefined();
    expect(decodedBody(gzipSync(json).subarray(0, 10), 'gzip', 1024)).toBeUndefined();
    const bomb = gzipSync(Buffer.alloc(10 * 1024 * 1024));
    expect(bomb.length).toBeLessThan(64 * 1024);
    expect(decodedBody(bomb, 'gzip', 16 * 1024)).toBeUndefined();
    expect(decodedBody(brotliCompressSync(Buffer.alloc(1024 * 1024)), 'br', 16 * 1024)).toBeUndefined();
  });
});

describe('timeIn', () => {
  it('reads local times in a zone, across DST, and times with an offset or as epoch numbers', () => {
    expect(timeIn('2024-01-15 12:00:00', 'Europe/Warsaw')).toBe(Date.UTC(2024, 0, 15, 11));
    expect(timeIn('2024-07-15 12:00:00', 'Europe/Warsaw')).toBe(Date.UTC(2024, 6, 15, 10));
    expect(timeIn('2024-07-15 12:00', 'UTC')).toBe(Date.UTC(2024, 6, 15, 12));
    expect(timeIn('2024-07-15T12:00:00+02:00', 'UTC')).toBe(Date.UTC(2024, 6, 15, 10));
    expect(timeIn('2024-07-15T12:00:00Z', 'Europe/Warsaw')).toBe(Date.UTC(2024, 6, 15, 12));
    expect(timeIn('1714748400', 'UTC')).toBe(1714748400_000);
    expect(timeIn('1714748400000', 'UTC')).toBe(1714748400_000);
    expect(timeIn('tomorrow', 'UTC')).toBeUndefined();
    expect(timeIn('2024-13-45 99:99:99+99:99', 'UTC')).toBeUndefined();
    expect(timeIn('2024-13-45 10:00:00', 'UTC')).toBeUndefined();
    expect(timeIn('2024-02-30 25:00:00', 'Europe/Warsaw')).toBeUndefined();
  });
});
