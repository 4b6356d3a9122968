/**
 * An upstream's `ca`: the gateway trusts that CA for the target's TLS, besides the default roots.
 * HTTPS fake upstreams on 127.0.0.1 with test CAs of their own (helpers/https-upstream.ts).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { startGateway, tempDir, testConfig, type TestGateway } from './helpers/gateway.js';
import { startHttpsUpstream, type HttpsUpstream } from './helpers/https-upstream.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };

async function get(gw: TestGateway, path: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const res = await request(`${gw.proxyUrl}${path}`, { headers: KEY });
  return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
}

describe('an upstream over TLS with its own CA', () => {
  let upstream: HttpsUpstream;
  /** Its certificate names api.example.com only. */
  let narrow: HttpsUpstream;
  let swappedCa: string;
  let gw: TestGateway;

  beforeAll(async () => {
    [upstream, narrow] = await Promise.all([startHttpsUpstream(), startHttpsUpstream(undefined, { names: ['api.example.com'] })]);
    swappedCa = join(tempDir(), 'ca.pem');
    writeFileSync(swappedCa, narrow.caPem); // the wrong CA for `upstream`, until the test swaps it
    gw = await startGateway(
      testConfig(`
  trusted:
    match: { prefix: /trusted }
    target: ${upstream.url}/base
    allowPrivate: true
    ca: ${upstream.caPath}
  untrusted:
    match: { prefix: /untrusted }
    target: ${upstream.url}
    allowPrivate: true
  wronghost:
    match: { prefix: /wronghost }
    target: https://localhost:${narrow.port}
    allowPrivate: true
    ca: ${narrow.caPath}
  swapped:
    match: { prefix: /swapped }
    target: ${upstream.url}
    allowPrivate: true
    ca: ${swappedCa}
`),
    );
  });

  afterAll(async () => {
    await gw.close();
    await Promise.all([upstream.close(), narrow.close()]);
  });

  it('forwards over TLS when the upstream names the CA', async () => {
    const { status, body } = await get(gw, '/trusted/v1/things?x=1');
    expect(status).toBe(200);
    expect(body).toMatchObject({ method: 'GET', url: '/base/v1/things?x=1' });
  });

  it('answers 502 upstream_unreachable when nothing trusts the certificate', async () => {
    const { status, body } = await get(gw, '/untrusted/v1/things');
    expect(status).toBe(502);
    expect(body).toMatchObject({ error: 'upstream_unreachable', upstream: 'untrusted' });
    expect(body.message).toMatch(/^the upstream connection failed \((UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT_LOCALLY)\)$/);
  });

  it('refuses a trusted certificate made out to another host', async () => {
    const { status, body } = await get(gw, '/wronghost/v1/things');
    expect(status).toBe(502);
    expect(body).toMatchObject({ error: 'upstream_unreachable', message: 'the upstream connection failed (ERR_TLS_CERT_ALTNAME_INVALID)' });
  });

  it('reads a changed CA file on reload, into a new pool', async () => {
    expect((await get(gw, '/swapped/x')).status).toBe(502);
    writeFileSync(swappedCa, upstream.caPem);
    expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    expect(await get(gw, '/swapped/x')).toMatchObject({ status: 200, body: { url: '/x' } });
  });
});

describe('ca adds to the roots, it does not replace them', () => {
  it('keeps trusting NODE_EXTRA_CA_CERTS for an upstream with a ca of its own', async () => {
    const [upstream, other] = await Promise.all([startHttpsUpstream(), startHttpsUpstream()]);
    // Node read NODE_EXTRA_CA_CERTS at start (this worker has none); the gateway gives it again with each `ca`.
    process.env.NODE_EXTRA_CA_CERTS = upstream.caPath;
    const gw = await startGateway(
      testConfig(`
  a:
    match: { prefix: /a }
    target: ${upstream.url}
    allowPrivate: true
    ca: ${other.caPath}
`),
    ).finally(() => delete process.env.NODE_EXTRA_CA_CERTS);
    try {
      expect((await get(gw, '/a/x')).status).toBe(200);
    } finally {
      await gw.close();
      await Promise.all([upstream.close(), other.close()]);
    }
  });
});

describe('ca at config load', () => {
  let upstream: HttpsUpstream;
  beforeAll(async () => {
    upstream = await startHttpsUpstream();
  });
  afterAll(() => upstream.close());

  const config = (ca: string) => `upstreams:\n  a:\n    match: { prefix: /a }\n    target: https://api.example.com\n    ca: ${ca}\n`;
  const load = (dir: string, ca: string) => parseConfig(config(ca), join(dir, 'routes.yaml'), {});

  it('resolves a relative path against the config file, keeps only the certificates, and versions the content', () => {
    const dir = tempDir();
    // A private key in the same file is not kept (it has no business in a CA bundle).
    writeFileSync(join(dir, 'bundle.pem'), `-----BEGIN PRIVATE KEY-----\nnot-kept\n-----END PRIVATE KEY-----\n${upstream.caPem}`);
    const first = load(dir, './bundle.pem');
    expect(first.upstreamCa.get('a')).toBe(upstream.caPem);
    writeFileSync(join(dir, 'bundle.pem'), readFileSync(upstream.caPath, 'utf8').repeat(2));
    const second = load(dir, './bundle.pem');
    expect(second.upstreamCa.get('a')).toBe(upstream.caPem.repeat(2));
    expect(second.version).not.toBe(first.version);
  });

  it('refuses a file without a certificate, naming the file but not its content', () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'key.pem'), '-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n');
    writeFileSync(join(dir, 'broken.pem'), '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    for (const file of ['key.pem', 'broken.pem']) {
      expect(() => load(dir, file)).toThrow(ConfigError);
      expect(() => load(dir, file)).toThrow(`${join(dir, 'routes.yaml')}:5 upstreams.a.ca: ${file} is not a PEM certificate`);
    }
  });
});
