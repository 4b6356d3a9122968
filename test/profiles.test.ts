/**
 * The repository's routes.yaml, the three reference profiles, end to end against the fake APIs
 * of bench/fakes/ (the ones `npm run demo` runs): Twilio with Basic credentials, BaseLinker with a token pool counted per token, ServiceDesk Plus
 * with Zoho OAuth2. Only the targets, the token URL and the listeners are pointed at 127.0.0.1;
 * every other line is the shipped file. Clients hold no upstream secret: the fakes accept only
 * what the gateway injects.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { ProxyAgent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBaseLinker, type FakeBaseLinker } from '../bench/fakes/baselinker.mjs';
import { startTwilio, type FakeTwilio } from '../bench/fakes/twilio.mjs';
import { proxyAuth, startGateway, type TestGateway } from './helpers/gateway.js';
import { startTokenCheckingUpstream, startTokenEndpoint, type FakeTokenEndpoint, type TokenCheckingUpstream } from './helpers/oauth.js';

const run = promisify(execFile);
const ENV = {
  TWILIO_ACCOUNT_SID: 'AC0123456789abcdef0123456789abcdef',
  TWILIO_AUTH_TOKEN: 'twilio-auth-token-5e4d',
  BL_TOKEN_1: '1000-bl-token-one-aaaa',
  BL_TOKEN_2: '1000-bl-token-two-bbbb',
  ZOHO_CLIENT_ID: '1000.ZOHOCLIENTID',
  ZOHO_CLIENT_SECRET: 'zoho-client-secret-0f0f',
  ZOHO_REFRESH_TOKEN: '1000.zoho-refresh-token-1e1e',
};
const ACME = 'acme:acme-dev-key';

describe('the reference profiles of routes.yaml', () => {
  let gw: TestGateway;
  let twilio: FakeTwilio;
  let baselinker: FakeBaseLinker;
  let zoho: FakeTokenEndpoint;
  let sdp: TokenCheckingUpstream;

  beforeAll(async () => {
    twilio = await startTwilio({ accountSid: ENV.TWILIO_ACCOUNT_SID, authToken: ENV.TWILIO_AUTH_TOKEN });
    baselinker = await startBaseLinker({ tokens: [ENV.BL_TOKEN_1, ENV.BL_TOKEN_2] });
    zoho = await startTokenEndpoint();
    sdp = await startTokenCheckingUpstream(zoho);
    const shipped = readFileSync('routes.yaml', 'utf8');
    // A local fake is a private destination: the upstream must allow it.
    const localTarget = (url: string) => `target: ${url}\n    allowPrivate: true`;
    const local = shipped
      .replace('proxy: 0.0.0.0:8080', 'proxy: 127.0.0.1:0')
      .replace('admin: 127.0.0.1:9090', 'admin: 127.0.0.1:0')
      .replace('target: https://api.twilio.com', localTarget(twilio.url))
      .replace('target: https://api.baselinker.com', localTarget(baselinker.url))
      .replace('target: https://sdpondemand.manageengine.com', localTarget(sdp.url))
      .replace('tokenUrl: https://accounts.zoho.com/oauth/v2/token', `tokenUrl: ${zoho.url}`);
    expect(local.match(/127\.0\.0\.1/g)!.length).toBeGreaterThanOrEqual(6);
    gw = await startGateway(local, { env: ENV });
  });
  afterAll(async () => {
    await gw.close();
    await Promise.all([twilio.close(), baselinker.close(), zoho.close(), sdp.close()]);
  });

  it('Twilio: Basic credentials injected, base URL and HTTP_PROXY (curl) alike', async () => {
    const sent = await request(`${gw.proxyUrl}/twilio/2010-04-01/Accounts/${ENV.TWILIO_ACCOUNT_SID}/Messages.json`, {
      method: 'POST',
      headers: { 'x-sluice-key': ACME, 'content-type': 'application/x-www-form-urlencoded', authorization: 'Basic ZHVtbXk6ZHVtbXk=' },
      body: 'To=%2B15005550006&From=%2B15005550001&Body=hi',
    });
    expect(sent.statusCode).toBe(201);
    expect(await sent.body.json()).toMatchObject({ account_sid: ENV.TWILIO_ACCOUNT_SID, status: 'queued' });
    const { stdout } = await run('curl', ['-s', '-x', `http://${ACME}@127.0.0.1:${gw.port}`, 'http://api.twilio.com/2010-04-01/Accounts.json']);
    expect(JSON.parse(stdout)).toEqual({ uri: '/2010-04-01/Accounts.json' });
    // The fake answers 401 to anything but the account's Basic credentials: both got them.
    expect(twilio.arrivals.map((a) => [a.path, a.status])).toEqual([
      [`/2010-04-01/Accounts/${ENV.TWILIO_ACCOUNT_SID}/Messages.json`, 201],
      ['/2010-04-01/Accounts.json', 200],
    ]);
  });

  it('BaseLinker: each token has its own 100/min, and the pool takes the one with room, through undici’s ProxyAgent', async () => {
    const agent = new ProxyAgent({ uri: gw.proxyUrl, token: proxyAuth('acme', 'acme-dev-key'), proxyTunnel: false });
    const call = () =>
      request('http://api.baselinker.com/connector.php', {
        method: 'POST',
        dispatcher: agent,
        headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-bltoken': 'a-client-must-not-send-this' },
        body: 'method=getOrders&parameters=%7B%7D',
      });
    try {
      // 100/min with burst 1 is one request per 600 ms per token: two back to back take both tokens.
      for (let i = 0; i < 2; i++) {
        const res = await call();
        expect(res.statusCode).toBe(200);
        expect(await res.body.json()).toMatchObject({ status: 'SUCCESS', method: 'getOrders' });
      }
      const third = await call();
      expect(third.statusCode).toBe(429);
      expect(await third.body.json()).toMatchObject({ error: 'rate_limited', upstream: 'baselinker' });
    } finally {
      await agent.close();
    }
    expect(baselinker.arrivals.map((a) => a.token).sort()).toEqual([ENV.BL_TOKEN_1, ENV.BL_TOKEN_2]);
    expect(baselinker.stats).toEqual({ accepted: 2, unauthorized: 0, limited: 0 });
  });

  it('ServiceDesk Plus: a Zoho OAuth2 token obtained once and injected; /status shows it without the secret', async () => {
    // Three requests: the shipped per-minute rule (60/min, burst 1) spaces them 1 s apart.
    for (let i = 0; i < 3; i++) {
      const res = await request(`${gw.proxyUrl}/sdp/api/v3/requests`, { headers: { 'x-sluice-key': ACME } });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
    }
    expect(zoho.calls).toHaveLength(1);
    expect(zoho.calls[0]!.form).toMatchObject({ client_id: ENV.ZOHO_CLIENT_ID, refresh_token: ENV.ZOHO_REFRESH_TOKEN });
    const status = await request(`${gw.adminUrl}/status`);
    const text = await status.body.text();
    const credentials = (JSON.parse(text) as { credentials: Record<string, Record<string, unknown>> }).credentials;
    expect(credentials.servicedesk).toMatchObject({ type: 'oauth2', state: 'valid', refreshLimit: { max: 10, perS: 600, everyS: 180 } });
    expect(credentials.twilio).toEqual({ type: 'basic' });
    expect(credentials.baselinker).toMatchObject({ type: 'pool', members: [{ index: 0, state: 'active' }, { index: 1, state: 'active' }] });
    for (const secret of [...Object.values(ENV).slice(1), ...zoho.issued]) {
      expect(text).not.toContain(secret);
      expect(gw.rawLogs.join('\n')).not.toContain(secret);
    }
  });
});
