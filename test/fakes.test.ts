/**
 * The fake APIs of bench/fakes/ (used by `npm run demo` and the profile tests) enforce their APIs'
 * limits and credentials as the real ones answer them. Their clocks are injected, so the limits
 * are checked without waiting.
 */
import { request } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { startBaseLinker, warsawTime } from '../bench/fakes/baselinker.mjs';
import { startTwilio } from '../bench/fakes/twilio.mjs';
import { startServiceDesk, startTokenEndpoint } from '../bench/fakes/zoho.mjs';

const closers: (() => Promise<void>)[] = [];
afterEach(async () => {
  await Promise.all(closers.splice(0).map((close) => close()));
});

/** A clock the test moves. */
function clock(start = Date.UTC(2024, 6, 1, 10, 0, 0)) {
  const c = { t: start, now: () => c.t };
  return c;
}

async function call(url: string, init: { method?: 'GET' | 'POST'; headers?: Record<string, string>; body?: string } = {}) {
  const res = await request(url, init);
  return { status: res.statusCode, headers: res.headers, body: (await res.body.json()) as Record<string, unknown> };
}

describe('fake Twilio', () => {
  const SID = 'AC0123456789abcdef0123456789abcdef';
  const basic = `Basic ${Buffer.from(`${SID}:token`).toString('base64')}`;

  it('wants the account’s Basic credentials, and answers a request over a per-second limit with 429 code 20429 and Retry-After', async () => {
    const c = clock();
    const twilio = await startTwilio({ accountSid: SID, authToken: 'token', now: c.now, toleranceMs: 0 });
    closers.push(twilio.close);
    const calls = `${twilio.url}/2010-04-01/Accounts/${SID}/Calls.json`;
    expect(await call(calls, { method: 'POST', headers: { authorization: 'Basic d3Jvbmc6d3Jvbmc=' } })).toMatchObject({ status: 401, body: { code: 20003 } });
    expect((await call(calls, { method: 'POST', headers: { authorization: basic } })).status).toBe(201);
    const over = await call(calls, { method: 'POST', headers: { authorization: basic } });
    expect(over).toMatchObject({ status: 429, body: { code: 20429, status: 429 } });
    expect(over.headers['retry-after']).toBe('1');
    c.t += 1000; // calls: 1/s
    expect((await call(calls, { method: 'POST', headers: { authorization: basic } })).status).toBe(201);
    // Messages have bursts of 5; GETs have no per-second limit.
    const messages = `${twilio.url}/2010-04-01/Accounts/${SID}/Messages.json`;
    const burst = await Promise.all(Array.from({ length: 6 }, () => call(messages, { method: 'POST', headers: { authorization: basic } })));
    expect(burst.map((r) => r.status).sort()).toEqual([201, 201, 201, 201, 201, 429]);
    expect((await call(`${twilio.url}/2010-04-01/Accounts.json`, { headers: { authorization: basic } })).status).toBe(200);
    expect(twilio.stats).toEqual({ accepted: 8, unauthorized: 1, limited: 2 });
  });

  it('answers 429 code 20429 past its concurrency', async () => {
    const twilio = await startTwilio({ accountSid: SID, authToken: 'token', concurrency: 2, latencyMs: 300 });
    closers.push(twilio.close);
    const answers = await Promise.all(Array.from({ length: 3 }, () => call(`${twilio.url}/2010-04-01/Accounts.json`, { headers: { authorization: basic } })));
    expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 429]);
    expect(twilio.arrivals.find((a) => a.status === 429)?.limit).toBe('concurrency');
    expect(twilio.inFlightMax).toBe(2);
  });
});

describe('fake BaseLinker', () => {
  it('blocks a token past its per-minute limit until a time given in Warsaw’s wall clock, and the other token carries on', async () => {
    const c = clock(Date.UTC(2024, 6, 1, 10, 0, 0, 400)); // 12:00:00.4 in Warsaw (CEST)
    const bl = await startBaseLinker({ tokens: ['t1', 't2'], perMinute: 2, blockMs: 30_000, now: c.now, toleranceMs: 0 });
    closers.push(bl.close);
    const send = (token?: string) =>
      call(`${bl.url}/connector.php`, { method: 'POST', headers: token ? { 'x-bltoken': token } : {}, body: 'method=getOrders' });
    expect(await send()).toMatchObject({ status: 401, body: { error_code: 'ERROR_BAD_TOKEN' } });
    expect((await send('t1')).body).toMatchObject({ status: 'SUCCESS', method: 'getOrders' });
    expect((await send('t1')).body.status).toBe('SUCCESS');
    const blocked = await send('t1');
    expect(blocked.status).toBe(200);
    expect(blocked.body).toEqual({
      status: 'ERROR',
      error_code: 'ERROR_BLOCKED_TOKEN',
      error_message: 'Query limit exceeded, token blocked until 2024-07-01 12:00:31',
    });
    expect((await send('t2')).body.status).toBe('SUCCESS');
    c.t += 20_000; // the window would have room for t2, but t1's block lasts until 12:00:31
    expect((await send('t1')).body.error_code).toBe('ERROR_BLOCKED_TOKEN');
    c.t += 41_000; // 12:01:01.4: the block is over and the minute since t1's two requests too
    expect((await send('t1')).body.status).toBe('SUCCESS');
    expect(bl.blocks).toBe(1);
    expect(bl.stats).toEqual({ accepted: 4, unauthorized: 1, limited: 2 });
    expect(warsawTime(Date.UTC(2024, 0, 15, 23, 30, 0))).toBe('2024-01-16 00:30:00'); // CET in winter
  });
});

describe('fake Zoho and ServiceDesk Plus', () => {
  const client = { clientId: 'id', clientSecret: 'secret', refreshToken: 'refresh' };
  const form = (f: Record<string, string>) => new URLSearchParams({ grant_type: 'refresh_token', client_id: 'id', client_secret: 'secret', refresh_token: 'refresh', ...f }).toString();

  it('issues tokens that expire, within its refresh budget, to its client only; the API takes unexpired tokens within its rate', async () => {
    const c = clock();
    const zoho = await startTokenEndpoint({ lifetimeS: 30, client, refreshLimit: { max: 2, perS: 600, everyS: 10 }, now: c.now, toleranceMs: 0 });
    const sdp = await startServiceDesk(zoho, { accept: 'unexpired', rates: [{ count: 2, windowMs: 5_000 }], now: c.now, toleranceMs: 0 });
    closers.push(zoho.close, sdp.close);
    const refresh = (f: Record<string, string> = {}) => call(zoho.url, { method: 'POST', body: form(f), headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(await refresh({ client_secret: 'wrong' })).toMatchObject({ status: 200, body: { error: 'invalid_client' } });
    const first = await refresh();
    expect(first.body).toMatchObject({ expires_in: 30, token_type: 'Bearer' });
    expect(await refresh()).toMatchObject({ status: 400, body: { error: 'Access Denied' } }); // not 10 s apart
    c.t += 10_000;
    expect((await refresh()).status).toBe(200);
    c.t += 10_000;
    expect(await refresh()).toMatchObject({ status: 400, body: { error: 'Access Denied' } }); // 2 per 10 minutes
    expect(zoho.calls.map((x) => x.outcome)).toEqual(['invalid_client', 'token', 'throttled', 'token', 'throttled']);

    const api = (token: unknown) => call(`${sdp.url}/api/v3/requests`, { headers: { authorization: `Zoho-oauthtoken ${String(token)}` } });
    expect((await api(first.body.access_token)).status).toBe(200); // 20 s old of 30: still valid
    expect((await api('made-up')).status).toBe(401);
    expect((await api(zoho.issued[1])).status).toBe(200);
    const over = await api(zoho.issued[1]);
    expect(over.status).toBe(429);
    expect(over.headers['retry-after']).toBe('5');
    c.t += 15_000;
    expect((await api(first.body.access_token)).status).toBe(401); // 35 s old: expired
    expect((await api(zoho.issued[1])).status).toBe(200);
    expect(sdp.stats).toEqual({ accepted: 3, unauthorized: 2, limited: 1 });
  });
});
