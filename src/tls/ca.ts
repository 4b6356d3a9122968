/**
 * The gateway's certificate authority: the certificate clients trust for HTTPS_PROXY interception,
 * and the key that signs a leaf certificate for every intercepted host (leaf.ts).
 *
 * Either the operator supplies it (tls.caCert + tls.caKey, the same pair on every instance of a
 * cluster), or the gateway keeps its own in tls.caDir (ca.crt, ca.key), creating it on first use.
 */
import { createPrivateKey, createPublicKey, randomBytes, webcrypto, type KeyObject } from 'node:crypto';
import { link, mkdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Config } from '../config/schema.js';
import { newP256Key, x509 } from './x509.js';

/** A CA that cannot be used; the message names the file and says what to do. */
export class CaError extends Error {
  override name = 'CaError';
}

/** A CA key that other users can read: the gateway refuses to start on it (any other CA problem only disables interception). */
export class InsecureCaKeyError extends CaError {
  override name = 'InsecureCaKeyError';
}

/** How the CA signs: ECDSA with the hash that fits its curve, or RSA PKCS#1 v1.5 with SHA-256. */
export type SigningAlgorithm =
  | { readonly name: 'ECDSA'; readonly hash: 'SHA-256' | 'SHA-384' }
  | { readonly name: 'RSASSA-PKCS1-v1_5'; readonly hash: 'SHA-256' };

export interface GatewayCa {
  /** The CA certificate (PEM). */
  readonly certPem: string;
  /** Absolute path of the CA certificate file. */
  readonly certPath: string;
  /** True when this call created the CA. */
  readonly created: boolean;
  /** The parsed certificate: its subject is every leaf's issuer, its notAfter bounds theirs. */
  readonly cert: x509.X509Certificate;
  /** The CA's private key, imported for signing only (not extractable). */
  readonly key: webcrypto.CryptoKey;
  readonly signingAlgorithm: SigningAlgorithm;
  /** The CA's subject key identifier (hex): every leaf's authority key identifier. */
  readonly keyId: string;
}

const CERT_FILE = 'ca.crt';
const KEY_FILE = 'ca.key';
const DAY_MS = 86_400_000;
/** How long a process that lost the race to create the CA waits for the winner's ca.crt. */
const CREATE_WAIT_MS = 5_000;

/**
 * The operator's CA (tls.caCert + tls.caKey), or the one in tls.caDir, created if there is none.
 * Relative paths are resolved against baseDir (the config file's folder).
 */
export async function loadOrCreateCa(tls: Config['tls'], baseDir: string): Promise<GatewayCa> {
  if (tls.caCert !== undefined || tls.caKey !== undefined) {
    if (tls.caCert === undefined || tls.caKey === undefined) {
      const [set, unset] = tls.caCert === undefined ? ['caKey', 'caCert'] : ['caCert', 'caKey'];
      throw new CaError(
        `tls: ${set} is set but ${unset} is not; give both (the CA certificate and its key), or neither to let the gateway keep its own CA in tls.caDir`,
      );
    }
    return loadCa(resolve(baseDir, tls.caCert), resolve(baseDir, tls.caKey), false);
  }
  const dir = resolve(baseDir, tls.caDir);
  const certPath = join(dir, CERT_FILE);
  const keyPath = join(dir, KEY_FILE);
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new CaError(`tls: cannot create the CA folder ${dir} (${code(err)}); check tls.caDir and its permissions`);
  }
  const [hasCert, hasKey] = await Promise.all([exists(certPath), exists(keyPath)]);
  if (hasCert && hasKey) return loadCa(certPath, keyPath, false);
  // Creating puts the key in place first, so a key alone may be a creation in progress; a
  // certificate alone never is.
  if (hasCert) throw missing(keyPath, certPath);
  if (hasKey) return awaitCertificate(certPath, keyPath);
  return createCa(certPath, keyPath);
}

/**
 * Creates the CA race-safely: both files are written under temporary names, then the key is
 * linked into place, which fails with EEXIST when another process got there first; the winner then
 * renames its certificate into place, and the losers drop theirs and load the winner's pair.
 */
async function createCa(certPath: string, keyPath: string): Promise<GatewayCa> {
  const { keys, pem } = await newP256Key();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [caName()] }, { O: ['Sluice'] }],
    notBefore: new Date(Date.now() - DAY_MS),
    notAfter: new Date(Date.now() + 3_650 * DAY_MS),
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const suffix = `.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  const [certTemp, keyTemp] = [certPath + suffix, keyPath + suffix];
  try {
    await writeFile(keyTemp, pem, { mode: 0o600, flag: 'wx' });
    await writeFile(certTemp, cert.toString('pem') + '\n', { mode: 0o644, flag: 'wx' });
    try {
      await link(keyTemp, keyPath);
    } catch (err) {
      if (code(err) !== 'EEXIST') throw err;
      return await awaitCertificate(certPath, keyPath);
    }
    await rename(certTemp, certPath);
  } catch (err) {
    if (err instanceof CaError) throw err;
    throw new CaError(`tls: cannot write the CA to ${keyPath} and ${certPath} (${code(err)}); check that tls.caDir is writable`);
  } finally {
    await Promise.all([unlink(keyTemp).catch(() => {}), unlink(certTemp).catch(() => {})]);
  }
  return loadCa(certPath, keyPath, true);
}

/** ca.key is there without ca.crt: another process is creating the CA; wait for its certificate. */
async function awaitCertificate(certPath: string, keyPath: string): Promise<GatewayCa> {
  for (let waited = 0; waited < CREATE_WAIT_MS; waited += 50) {
    await sleep(50);
    if (await exists(certPath)) return loadCa(certPath, keyPath, false);
  }
  throw missing(certPath, keyPath);
}

function missing(absent: string, present: string): CaError {
  return new CaError(
    `tls: ${absent} is missing but ${present} is there; restore it, or remove ${present} to have a new CA created (clients must then trust the new one)`,
  );
}

async function loadCa(certPath: string, keyPath: string, created: boolean): Promise<GatewayCa> {
  const cert = parseCertificate(certPath, await readText(certPath, 'certificate'));
  await checkKeyMode(keyPath);
  const keyObject = parsePrivateKey(keyPath, await readText(keyPath, 'key'));
  const now = Date.now();
  if (cert.notAfter.getTime() <= now) {
    throw new CaError(
      `tls: the CA certificate ${certPath} expired on ${cert.notAfter.toISOString()}; give a new CA (for a CA the gateway created, remove ${certPath} and ${keyPath} and run "sluice ca")`,
    );
  }
  if (cert.notBefore.getTime() > now) {
    throw new CaError(`tls: the CA certificate ${certPath} is not valid before ${cert.notBefore.toISOString()}; check the clock, or give another CA`);
  }
  if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) {
    throw new CaError(
      `tls: ${certPath} is not a CA certificate (its basicConstraints do not say cA); give a CA certificate, or leave tls.caCert and tls.caKey unset to let the gateway create one`,
    );
  }
  const certKey = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' });
  if (!certKey.equals(createPublicKey(keyObject))) {
    throw new CaError(`tls: ${keyPath} is not the key of the certificate ${certPath}; give the key that belongs to it`);
  }
  const { importAlgorithm, signingAlgorithm } = algorithmOf(keyObject, keyPath);
  const der = keyObject.export({ format: 'der', type: 'pkcs8' });
  const key = await webcrypto.subtle.importKey('pkcs8', der, importAlgorithm, false, ['sign']);
  const ski = cert.getExtension(x509.SubjectKeyIdentifierExtension) ?? (await x509.SubjectKeyIdentifierExtension.create(cert.publicKey));
  return { certPem: cert.toString('pem') + '\n', certPath, created, cert, key, signingAlgorithm, keyId: ski.keyId };
}

function parseCertificate(path: string, text: string): x509.X509Certificate {
  const der = text.includes('-----BEGIN CERTIFICATE-----') ? x509.PemConverter.decode(text)[0] : undefined;
  try {
    if (der !== undefined) return new x509.X509Certificate(der);
  } catch {
    // reported below, with the other unusable files
  }
  throw new CaError(`tls: ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA certificate in PEM form`);
}

function parsePrivateKey(path: string, text: string): KeyObject {
  try {
    return createPrivateKey(text);
  } catch (err) {
    throw new CaError(
      `tls: ${path} is not a usable private key (${(err as Error).message}); give the CA's key in PEM form, without a passphrase`,
    );
  }
}

const CURVES: Record<string, { namedCurve: 'P-256' | 'P-384'; hash: 'SHA-256' | 'SHA-384' }> = {
  prime256v1: { namedCurve: 'P-256', hash: 'SHA-256' },
  secp384r1: { namedCurve: 'P-384', hash: 'SHA-384' },
};

function algorithmOf(
  key: KeyObject,
  path: string,
): { importAlgorithm: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams; signingAlgorithm: SigningAlgorithm } {
  if (key.asymmetricKeyType === 'rsa') {
    return {
      importAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      signingAlgorithm: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
    };
  }
  const curve = key.asymmetricKeyType === 'ec' ? CURVES[key.asymmetricKeyDetails?.namedCurve ?? ''] : undefined;
  if (curve === undefined) {
    const what = key.asymmetricKeyType === 'ec' ? `an EC ${key.asymmetricKeyDetails?.namedCurve} key` : `a ${key.asymmetricKeyType} key`;
    throw new CaError(`tls: ${path} is ${what}; the gateway signs with RSA or EC P-256 or P-384 keys, so give a CA with one of those`);
  }
  return {
    importAlgorithm: { name: 'ECDSA', namedCurve: curve.namedCurve },
    signingAlgorithm: { name: 'ECDSA', hash: curve.hash },
  };
}

/** The key must be the owner's alone: a key others can read lets them impersonate every upstream. */
async function checkKeyMode(path: string): Promise<void> {
  if (process.platform === 'win32') return;
  let mode: number;
  try {
    mode = (await stat(path)).mode;
  } catch (err) {
    throw new CaError(`tls: cannot read the CA key ${path} (${code(err)}); check the path and its permissions`);
  }
  if ((mode & 0o077) !== 0) {
    throw new InsecureCaKeyError(
      `tls: ${path} is readable by other users (mode 0${(mode & 0o777).toString(8)}); run: chmod 600 ${path}`,
    );
  }
}

async function readText(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new CaError(`tls: cannot read the CA ${what} ${path} (${code(err)}); check the path and its permissions`);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    (err: unknown) => {
      if (code(err) === 'ENOENT') return false;
      throw new CaError(`tls: cannot read ${path} (${code(err)}); check tls.caDir and its permissions`);
    },
  );
}

/** "Sluice gateway CA (host, 2025-06-01)", within the 64 characters a common name may have. */
function caName(): string {
  const date = new Date().toISOString().slice(0, 10);
  return `Sluice gateway CA (${hostname().slice(0, 30)}, ${date})`;
}

/** A random positive 16-byte serial number, in hex. */
export function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function code(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}
