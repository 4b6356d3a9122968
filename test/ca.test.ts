import { execFile } from 'node:child_process';
import { createPrivateKey, X509Certificate, webcrypto } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createServer } from 'node:net';
import { checkServerIdentity, connect, TLSSocket, type ConnectionOptions, type TLSSocketOptions } from 'node:tls';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CaError, loadOrCreateCa, type GatewayCa } from '../src/tls/ca.js';
import { LeafCertificates } from '../src/tls/leaf.js';
import { x509 } from '../src/tls/x509.js';
import { tempDir, testConfig, writeConfig } from './helpers/gateway.js';

const run = promisify(execFile);

/** A fresh folder and the CA created in its ca/ subfolder. */
async function freshCa(): Promise<{ dir: string; ca: GatewayCa }> {
  const dir = tempDir();
  return { dir, ca: await loadOrCreateCa({ caDir: './ca' }, dir) };
}

interface Handshake {
  authorized: boolean;
  authorizationError: string | undefined;
  subjectaltname: string | undefined;
}

/**
 * A real TLS server on 127.0.0.1:0 and one client connection to it; what the client saw. The
 * server wraps each connection in a TLSSocket, as the gateway does with a CONNECT tunnel.
 */
async function handshake(server: TLSSocketOptions, client: ConnectionOptions): Promise<Handshake> {
  const listener = createServer((raw) => {
    const socket = new TLSSocket(raw, { isServer: true, ...server });
    socket.once('secure', () => socket.end());
    socket.once('error', () => raw.destroy());
  });
  await new Promise<void>((done) => listener.listen(0, '127.0.0.1', done));
  const port = (listener.address() as { port: number }).port;
  try {
    return await new Promise<Handshake>((done, fail) => {
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...client }, () => {
        done({
          authorized: socket.authorized,
          authorizationError: socket.authorizationError?.toString(),
          subjectaltname: socket.getPeerCertificate().subjectaltname,
        });
        socket.destroy();
      });
      socket.once('error', fail);
    });
  } finally {
    await new Promise((done) => listener.close(done));
  }
}

/** A server that picks its leaf by SNI, as the gateway does. */
function sniServer(leaves: LeafCertificates): TLSSocketOptions {
  return { SNICallback: (name, cb) => void leaves.context(name).then((ctx) => cb(null, ctx), cb) };
}

/** Writes an operator CA (certificate and key, PEM, key mode 0600) made with the given key pair. */
async function operatorCa(
  dir: string,
  keys: webcrypto.CryptoKeyPair,
  options: { ca?: boolean; keyType?: 'pkcs8' | 'sec1' | 'pkcs1' } = {},
): Promise<{ certPath: string; keyPath: string }> {
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=Operator Test CA, O=Acme',
    keys,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    extensions: [
      new x509.BasicConstraintsExtension(options.ca ?? true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyType = options.keyType ?? 'pkcs8';
  const keyPem = createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: keyType });
  mkdirSync(join(dir, 'operator'), { recursive: true });
  const certPath = join(dir, 'operator', 'ca.pem');
  const keyPath = join(dir, 'operator', 'ca-key.pem');
  writeFileSync(certPath, cert.toString('pem') + '\n');
  writeFileSync(keyPath, keyPem, { mode: 0o600 });
  return { certPath, keyPath };
}

const rsaKeys = () =>
  webcrypto.subtle.generateKey(
    { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' },
    true,
    ['sign', 'verify'],
  ) as Promise<webcrypto.CryptoKeyPair>;
const ecKeys = (namedCurve: 'P-256' | 'P-384') =>
  webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve }, true, ['sign', 'verify']) as Promise<webcrypto.CryptoKeyPair>;

const rejection = (promise: Promise<unknown>) => promise.then(() => undefined, (err: unknown) => err);

describe('the gateway CA in tls.caDir', () => {
  it('is created on first use, owner-only, and loaded afterwards', async () => {
    const { dir, ca } = await freshCa();
    const caDir = join(dir, 'ca');
    expect(ca.created).toBe(true);
    expect(ca.certPath).toBe(join(caDir, 'ca.crt'));
    expect(readFileSync(ca.certPath, 'utf8')).toBe(ca.certPem);
    expect(statSync(join(caDir, 'ca.key')).mode & 0o777).toBe(0o600);
    expect(statSync(caDir).mode & 0o777).toBe(0o700);

    const cert = new X509Certificate(ca.certPem);
    expect(cert.ca).toBe(true);
    expect(cert.subject).toMatch(/^CN=Sluice gateway CA \(.+, \d{4}-\d{2}-\d{2}\)\nO=Sluice$/);
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(Date.parse(cert.validTo) - Date.now()).toBeGreaterThan(9.9 * 365 * 86_400_000);
    expect(cert.serialNumber).toMatch(/^[0-7][0-9A-F]{31}$/);

    const again = await loadOrCreateCa({ caDir: './ca' }, dir);
    expect(again.created).toBe(false);
    expect(again.certPem).toBe(ca.certPem);
  });

  it('refuses a key that other users can read', async () => {
    const { dir } = await freshCa();
    const keyPath = join(dir, 'ca', 'ca.key');
    chmodSync(keyPath, 0o644);
    const err = await rejection(loadOrCreateCa({ caDir: './ca' }, dir));
    expect(err).toBeInstanceOf(CaError);
    expect((err as Error).message).toBe(`tls: ${keyPath} is readable by other users (mode 0644); run: chmod 600 ${keyPath}`);
  });

  it('refuses half a CA, naming the missing file', async () => {
    const { dir } = await freshCa();
    mkdirSync(join(dir, 'half'));
    writeFileSync(join(dir, 'half', 'ca.crt'), readFileSync(join(dir, 'ca', 'ca.crt')));
    const err = await rejection(loadOrCreateCa({ caDir: './half' }, dir));
    expect(err).toBeInstanceOf(CaError);
    expect((err as Error).message).toContain(`tls: ${join(dir, 'half', 'ca.key')} is missing but ${join(dir, 'half', 'ca.crt')} is there`);
  });

  it('is created once when two loads race on an empty folder', async () => {
    const dir = tempDir();
    const both = await Promise.all([loadOrCreateCa({ caDir: './ca' }, dir), loadOrCreateCa({ caDir: './ca' }, dir)]);
    expect(both[0].certPem).toBe(both[1].certPem);
    expect(both.filter((ca) => ca.created)).toHaveLength(1);
  });

  it('is created once when four processes start together', async () => {
    const dir = tempDir();
    const script = `import(${JSON.stringify(resolve('dist/tls/ca.js'))})
      .then((m) => m.loadOrCreateCa({ caDir: './ca' }, ${JSON.stringify(dir)}))
      .then((ca) => process.stdout.write(ca.certPem))`;
    const runs = await Promise.all([1, 2, 3, 4].map(() => run(process.execPath, ['--input-type=module', '-e', script])));
    expect(new Set(runs.map((r) => r.stdout)).size).toBe(1);
    expect(runs[0]!.stdout).toBe(readFileSync(join(dir, 'ca', 'ca.crt'), 'utf8'));
  });
});

describe('an operator-supplied CA', () => {
  it('is used (RSA, paths relative to the config folder), and its leaves verify', async () => {
    const dir = tempDir();
    const { certPath } = await operatorCa(dir, await rsaKeys(), { keyType: 'pkcs1' });
    const ca = await loadOrCreateCa({ caDir: './unused', caCert: 'operator/ca.pem', caKey: 'operator/ca-key.pem' }, dir);
    expect(ca).toMatchObject({ created: false, certPath, signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5' } });
    expect(ca.certPem).toBe(readFileSync(certPath, 'utf8'));
    const seen = await handshake(sniServer(new LeafCertificates(ca)), { servername: 'api.twilio.com', ca: ca.certPem });
    expect(seen).toMatchObject({ authorized: true, subjectaltname: 'DNS:api.twilio.com' });
  });

  it('may be EC P-384 with a SEC1 key', async () => {
    const dir = tempDir();
    const { certPath, keyPath } = await operatorCa(dir, await ecKeys('P-384'), { keyType: 'sec1' });
    expect(readFileSync(keyPath, 'utf8')).toContain('BEGIN EC PRIVATE KEY');
    const ca = await loadOrCreateCa({ caDir: './unused', caCert: certPath, caKey: keyPath }, dir);
    expect(ca.signingAlgorithm).toEqual({ name: 'ECDSA', hash: 'SHA-384' });
    const seen = await handshake(sniServer(new LeafCertificates(ca)), { servername: 'api.example.com', ca: ca.certPem });
    expect(seen.authorized).toBe(true);
  });

  it('is refused with a key of another certificate, as a non-CA certificate, or with one file only', async () => {
    const dir = tempDir();
    const { certPath } = await operatorCa(dir, await ecKeys('P-256'));
    const other = await operatorCa(tempDir(), await ecKeys('P-256'));
    const mismatch = await rejection(loadOrCreateCa({ caDir: '.', caCert: certPath, caKey: other.keyPath }, dir));
    expect(mismatch).toBeInstanceOf(CaError);
    expect((mismatch as Error).message).toBe(`tls: ${other.keyPath} is not the key of the certificate ${certPath}; give the key that belongs to it`);

    const leafDir = tempDir();
    const notCa = await operatorCa(leafDir, await ecKeys('P-256'), { ca: false });
    const notCaErr = await rejection(loadOrCreateCa({ caDir: '.', caCert: notCa.certPath, caKey: notCa.keyPath }, leafDir));
    expect((notCaErr as Error).message).toContain(`tls: ${notCa.certPath} is not a CA certificate`);

    const half = await rejection(loadOrCreateCa({ caDir: '.', caCert: certPath }, dir));
    expect((half as Error).message).toContain('tls: caCert is set but caKey is not; give both');
  });

  it('is refused when a file is not PEM', async () => {
    const dir = tempDir();
    const { keyPath } = await operatorCa(dir, await ecKeys('P-256'));
    writeFileSync(join(dir, 'junk.pem'), 'not a certificate\n');
    const err = await rejection(loadOrCreateCa({ caDir: '.', caCert: 'junk.pem', caKey: keyPath }, dir));
    expect(err).toBeInstanceOf(CaError);
    expect((err as Error).message).toBe(
      `tls: ${join(dir, 'junk.pem')} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificate in PEM form`,
    );
  });
});

describe('leaf certificates', () => {
  it('verify against the CA by SNI name, and fail without it', async () => {
    const { ca } = await freshCa();
    const leaves = new LeafCertificates(ca);
    const trusted = await handshake(sniServer(leaves), { servername: 'api.twilio.com', ca: ca.certPem });
    expect(trusted).toMatchObject({ authorized: true, subjectaltname: 'DNS:api.twilio.com' });
    const untrusted = await handshake(sniServer(leaves), { servername: 'api.twilio.com' });
    expect(untrusted.authorized).toBe(false);
    expect(untrusted.authorizationError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('verify for IP literals, v4 and v6', async () => {
    const { ca } = await freshCa();
    const leaves = new LeafCertificates(ca);
    const v4 = await handshake({ secureContext: await leaves.context('127.0.0.1') }, { ca: ca.certPem });
    expect(v4).toMatchObject({ authorized: true, subjectaltname: 'IP Address:127.0.0.1' });
    const v6 = await handshake(
      { secureContext: await leaves.context('[::1]') },
      { ca: ca.certPem, rejectUnauthorized: true, checkServerIdentity: (_host, cert) => checkServerIdentity('::1', cert) },
    );
    expect(v6).toMatchObject({ authorized: true, subjectaltname: 'IP Address:0:0:0:0:0:0:0:1' });
  });

  it('are issued once per host and reused, also under 1,000 concurrent requests', async () => {
    const { ca } = await freshCa();
    const leaves = new LeafCertificates(ca);
    const first = await leaves.context('a.example');
    expect(await leaves.context('A.Example')).toBe(first);
    expect(leaves.cached('a.example')).toBe(first);
    expect(leaves.stats()).toEqual({ cached: 1, issued: 1, hits: 2, max: 1000 });

    const many = await Promise.all(Array.from({ length: 1000 }, () => leaves.context('b.example')));
    expect(new Set(many).size).toBe(1);
    expect(leaves.stats().issued).toBe(2);
  });

  it('evict the least recently used past max', async () => {
    const { ca } = await freshCa();
    const leaves = new LeafCertificates(ca, { max: 2 });
    await leaves.context('a.example');
    await leaves.context('b.example');
    await leaves.context('a.example');
    await leaves.context('c.example');
    expect(leaves.cached('b.example')).toBeUndefined();
    expect(leaves.cached('a.example')).toBeDefined();
    expect(leaves.cached('c.example')).toBeDefined();
    expect(leaves.stats()).toMatchObject({ cached: 2, issued: 3 });
  });

  it('are re-issued past half their life', async () => {
    const { ca } = await freshCa();
    let now = Date.now();
    const leaves = new LeafCertificates(ca, { now: () => now });
    const first = await leaves.context('a.example');
    now += 3 * 86_400_000;
    expect(await leaves.context('a.example')).toBe(first);
    now += 12 * 3_600_000;
    expect(leaves.cached('a.example')).toBeUndefined();
    expect(await leaves.context('a.example')).not.toBe(first);
    expect(leaves.stats().issued).toBe(2);
  });

  it('are warmed ahead, and refused for names that are neither DNS names nor IP addresses', async () => {
    const { ca } = await freshCa();
    const leaves = new LeafCertificates(ca);
    await leaves.warm(['x.example', 'y.example', 'x.example']);
    expect(leaves.stats()).toMatchObject({ cached: 2, issued: 2, hits: 0 });
    for (const bad of ['bad name', 'a..b', '-a.example', '*.example.com', 'a.example:443', 'x'.repeat(64) + '.example']) {
      const err = await rejection(leaves.context(bad));
      expect(err, bad).toBeInstanceOf(CaError);
    }
    const warmErr = await rejection(leaves.warm(['z.example', 'bad name']));
    expect((warmErr as Error).message).toContain('tls: could not issue leaf certificates for bad name');
    expect(leaves.cached('z.example')).toBeDefined();
  });
});

describe('sluice ca', () => {
  const command = (config: string) => run(process.execPath, ['dist/cli.js', 'ca', '--config', config]);

  it('creates the CA and prints its path, its certificate and how to trust it, never the key', async () => {
    const config = writeConfig(testConfig(`  a: { match: { hosts: [api.example.com] }, target: "https://api.example.com" }\n`));
    const certPath = join(config, '..', '.sluice', 'ca', 'ca.crt');
    const { stdout } = await command(config);
    expect(stdout).toContain(`CA certificate: ${certPath} (created now)`);
    const pem = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(stdout)?.[0];
    expect(new X509Certificate(pem!).ca).toBe(true);
    expect(pem + '\n').toBe(readFileSync(certPath, 'utf8'));
    expect(stdout).toContain(`NODE_EXTRA_CA_CERTS=${certPath}`);
    const keyBody = readFileSync(join(certPath, '..', 'ca.key'), 'utf8').split('\n')[1]!;
    expect(stdout).not.toContain('PRIVATE KEY');
    expect(stdout).not.toContain(keyBody);

    const again = await command(config);
    expect(again.stdout).toContain(`CA certificate: ${certPath}\n`);
  });

  it('exits 1 with the reason when the CA cannot be used', async () => {
    const config = writeConfig(
      testConfig(`  a: { match: { prefix: /a }, target: "https://api.example.com" }\n`, 'tls: { caCert: missing.pem, caKey: missing-key.pem }'),
    );
    const failure = (await rejection(command(config))) as { code: number; stderr: string };
    expect(failure.code).toBe(1);
    expect(failure.stderr).toContain(`tls: cannot read the CA certificate ${join(config, '..', 'missing.pem')} (ENOENT)`);
  });
});
