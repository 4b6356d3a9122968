import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loggablePath, SecretScrubber } from '../src/observability/logger.js';
import { proxyAuth, startGateway, type TestGateway } from './helpers/gateway.js';
import { startUpstream, type FakeUpstream } from './helpers/upstream.js';

const SECRETS = {
  tenantKey: 'tenant-key-7f3a9c',
  otherKey: 'other-key-b81d02',
  password: 'upstream-pass-41c2',
  headerValue: 'hdr-token-9e77aa',
  poolToken: 'pool-token-c0ffee',
  adminToken: 'admin-token-5d5d5d',
};

let upstream: FakeUpstream;
let gw: TestGateway;

beforeAll(async () => {
  upstream = await startUpstream();
  gw = await startGateway(
    `listen: { proxy: 127.0.0.1:0, admin: 127.0.0.1:0, adminToken: "\${ADMIN_TOKEN}" }
tenants:
  acme: { key: "\${ACME_KEY}" }
  globex: { key: ${SECRETS.otherKey} }
upstreams:
  basic:
    match: { hosts: [basic.example.test], prefix: /basic }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: basic, username: AC1, password: "\${PASSWORD}" }
  header:
    match: { prefix: /header }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: header, header: X-Api-Key, value: ${SECRETS.headerValue} }
  pool:
    match: { prefix: /pool }
    target: ${upstream.url}
    allowPrivate: true
    credentials: { type: pool, header: X-BLToken, tokens: [${SECRETS.poolToken}] }
`,
    { env: { ACME_KEY: SECRETS.tenantKey, PASSWORD: SECRETS.password, ADMIN_TOKEN: SECRETS.adminToken } },
  );
});

afterAll(async () => {
  await gw.close();
  await upstream.close();
});

describe('log redaction', () => {
  it('never writes a tenant key, upstream credential or admin token, wherever a client puts it', async () => {
    const attempts: [string, Record<string, string>][] = [
      [`/basic/x?api_key=${SECRETS.tenantKey}`, { 'x-sluice-key': `acme:${SECRETS.tenantKey}` }],
      [`/basic/${SECRETS.password}/in-path`, { 'x-sluice-key': `acme:${SECRETS.tenantKey}` }],
      [`/header/${encodeURIComponent(SECRETS.poolToken)}?q=${SECRETS.headerValue}`, { 'proxy-authorization': proxyAuth('globex', SECRETS.otherKey) }],
      [`/pool/x?note=${SECRETS.adminToken}`, { 'x-sluice-key': `acme:${SECRETS.tenantKey}`, cookie: `session=${SECRETS.password}` }],
      ['/basic/denied', { 'x-sluice-key': `acme:${SECRETS.tenantKey}-almost` }],
      ['/nowhere', { 'x-sluice-key': `globex:${SECRETS.otherKey}` }],
    ];
    for (const [path, headers] of attempts) {
      const res = await request(`${gw.proxyUrl}${path}`, { headers });
      const body = await res.body.text();
      // The gateway's own answers never echo a secret (the fake upstream's echo of what the client sent is not ours).
      if (res.statusCode >= 400) for (const secret of Object.values(SECRETS)) expect(body).not.toContain(secret);
    }
    await new Promise((r) => setTimeout(r, 20));
    const requestLines = gw.rawLogs.filter((l) => l.includes('"msg":"request"'));
    expect(requestLines).toHaveLength(attempts.length);
    const all = gw.rawLogs.join('');
    for (const [name, secret] of Object.entries(SECRETS)) expect(all, name).not.toContain(secret);
    expect(all).toContain('[REDACTED]');
    // The upstream did get the injected credentials: redaction is only on the log side.
    expect(upstream.arrivals.some((a) => a.headers['x-api-key'] === SECRETS.headerValue)).toBe(true);
  });

  it('scrubs a secret that reaches a log line through any field', () => {
    const scrubber = new SecretScrubber();
    scrubber.update(['s3cr"et', 'plain-secret']);
    expect(scrubber.scrub('{"a":"x plain-secret y","b":"s3cr\\"et","c":"s3cr%22et"}')).toBe(
      '{"a":"x [REDACTED] y","b":"[REDACTED]","c":"[REDACTED]"}',
    );
  });

  it('masks query values whose names suggest secrets', () => {
    expect(loggablePath('/a?page=2&access_token=abc&SIGNATURE=x&q=ok')).toBe('/a?page=2&access_token=[REDACTED]&SIGNATURE=[REDACTED]&q=ok');
    expect(loggablePath('/plain')).toBe('/plain');
  });
});

describe('the Redis password', () => {
  it('is on the redaction list like every other secret', async () => {
    const { parseConfig } = await import('../src/config/load.js');
    const { Policy } = await import('../src/policy.js');
    const loaded = parseConfig(
      'store: { type: redis, url: "redis://sluice:s3cret%2Fredis@127.0.0.1:6379/0" }\nupstreams: { a: { match: { prefix: /a }, target: "http://127.0.0.1:1", allowPrivate: true } }\n',
      'routes.yaml',
    );
    const secrets = Policy.secretsOf(loaded.config);
    expect(secrets).toContain('s3cret/redis');
    expect(secrets).toContain('s3cret%2Fredis');
    const scrubber = new SecretScrubber();
    scrubber.update(secrets);
    expect(scrubber.scrub('connect redis://sluice:s3cret%2Fredis@127.0.0.1:6379/0 failed')).not.toContain('s3cret');
  });
});
