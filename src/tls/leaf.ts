/**
 * Leaf certificates for intercepted hosts, signed by the gateway's CA and kept in a bounded LRU.
 *
 * Every leaf shares one ECDSA P-256 key pair, generated once per process (as mitm proxies such as
 * mockttp do): issuing a leaf is then one signature, its ASN.1 encoding and one
 * tls.createSecureContext (about 7 ms on the development machine, bench/overhead/https.mjs) instead of
 * a key generation per host as well. The key never leaves the process.
 */
import { isIP } from 'node:net';
import { createSecureContext, type SecureContext } from 'node:tls';
import { isHostName } from '../routing/hostname.js';
import { CaError, randomSerial, type GatewayCa } from './ca.js';
import { newP256Key, x509 } from './x509.js';

const HOUR_MS = 3_600_000;
const LEAF_LIFE_MS = 7 * 24 * HOUR_MS;

interface LeafKey {
  /** PKCS#8 PEM, for tls.createSecureContext. */
  readonly pem: string;
  /** Parsed once: handing the generator a CryptoKey would make it export the key for every leaf. */
  readonly publicKey: x509.PublicKey;
  readonly subjectKeyId: x509.SubjectKeyIdentifierExtension;
}

let leafKey: Promise<LeafKey> | undefined;

/** The process's leaf key pair, made on first use. */
function sharedLeafKey(): Promise<LeafKey> {
  leafKey ??= (async () => {
    const { keys, pem } = await newP256Key();
    const publicKey = await x509.PublicKey.create(keys.publicKey);
    return {
      pem,
      publicKey,
      subjectKeyId: await x509.SubjectKeyIdentifierExtension.create(publicKey),
    };
  })();
  return leafKey;
}

interface Entry {
  readonly context: SecureContext;
  /** Past half its life, a leaf is re-issued on the next request for it. */
  readonly renewAt: number;
}

export interface LeafOptions {
  /** Leaves kept at most; the least recently used goes first. Default 1000. */
  max?: number;
  /** The clock (ms since the epoch); tests drive it. */
  now?: () => number;
}

export class LeafCertificates {
  readonly #ca: GatewayCa;
  readonly #max: number;
  readonly #now: () => number;
  /** In insertion order, the most recently used last. */
  readonly #cache = new Map<string, Entry>();
  /** Issuances in flight: concurrent requests for one host share one. */
  readonly #pending = new Map<string, Promise<SecureContext>>();
  /** The extensions every leaf carries. */
  readonly #common: x509.Extension[];
  #issued = 0;
  #hits = 0;

  constructor(ca: GatewayCa, options: LeafOptions = {}) {
    this.#ca = ca;
    this.#max = options.max ?? 1000;
    this.#now = options.now ?? Date.now;
    if (!Number.isInteger(this.#max) || this.#max < 1) throw new RangeError(`max must be a positive integer, not ${this.#max}`);
    this.#common = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      // Python 3.13 verifies strictly (VERIFY_X509_STRICT), which wants the authority key identifier.
      new x509.AuthorityKeyIdentifierExtension(ca.keyId),
    ];
  }

  /** Absolute path of the CA certificate that signs the leaves (for /status). */
  get caPath(): string {
    return this.#ca.certPath;
  }

  /** A SecureContext presenting a leaf for this host name or IP literal. */
  context(host: string): Promise<SecureContext> {
    const name = hostKey(host);
    const hit = this.#lookup(name);
    if (hit !== undefined) {
      this.#hits++;
      return Promise.resolve(hit);
    }
    let pending = this.#pending.get(name);
    if (pending === undefined) {
      pending = this.#issue(name).finally(() => this.#pending.delete(name));
      this.#pending.set(name, pending);
    }
    return pending;
  }

  /** The cached context for this host, or undefined: the synchronous path for SNI. */
  cached(host: string): SecureContext | undefined {
    const hit = this.#lookup(hostKey(host));
    if (hit !== undefined) this.#hits++;
    return hit;
  }

  /** Issues leaves for the hosts not cached yet; rejects, once all are done, naming those that failed. */
  async warm(hosts: readonly string[]): Promise<void> {
    const cold = hosts.filter((host) => this.#lookup(hostKey(host)) === undefined);
    const results = await Promise.allSettled(cold.map((host) => this.context(host)));
    const failed = results.flatMap((r, i) => (r.status === 'rejected' ? [`${cold[i]} (${(r.reason as Error).message})`] : []));
    if (failed.length > 0) throw new CaError(`tls: could not issue leaf certificates for ${failed.join(', ')}`);
  }

  stats(): { cached: number; issued: number; hits: number; max: number } {
    return { cached: this.#cache.size, issued: this.#issued, hits: this.#hits, max: this.#max };
  }

  /** A fresh cached context, moved to the most recently used end; a stale one is dropped. */
  #lookup(name: string): SecureContext | undefined {
    const entry = this.#cache.get(name);
    if (entry === undefined) return undefined;
    this.#cache.delete(name);
    if (this.#now() >= entry.renewAt) return undefined;
    this.#cache.set(name, entry);
    return entry.context;
  }

  async #issue(name: string): Promise<SecureContext> {
    const ip = isIP(name) !== 0;
    if (!ip && !isHostName(name)) {
      throw new CaError(`tls: "${name}" is neither a DNS name nor an IP address; no certificate is issued for it`);
    }
    const now = this.#now();
    const notAfter = Math.min(now + LEAF_LIFE_MS, this.#ca.cert.notAfter.getTime());
    if (notAfter <= now) {
      throw new CaError(`tls: the CA certificate ${this.#ca.certPath} expired on ${this.#ca.cert.notAfter.toISOString()}; give a new CA and restart`);
    }
    const key = await sharedLeafKey();
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerial(),
      // A common name has 64 characters at most; the SAN carries the full name, and is what clients check.
      subject: [{ CN: [name.slice(0, 64)] }],
      issuer: this.#ca.cert.subjectName,
      notBefore: new Date(now - HOUR_MS),
      notAfter: new Date(notAfter),
      publicKey: key.publicKey,
      signingKey: this.#ca.key,
      signingAlgorithm: this.#ca.signingAlgorithm,
      extensions: [
        ...this.#common,
        key.subjectKeyId,
        new x509.SubjectAlternativeNameExtension([{ type: ip ? 'ip' : 'dns', value: name }]),
      ],
    });
    const context = createSecureContext({ key: key.pem, cert: cert.toString('pem') });
    this.#issued++;
    this.#cache.set(name, { context, renewAt: now + (notAfter - now) / 2 });
    for (const oldest of this.#cache.keys()) {
      if (this.#cache.size <= this.#max) break;
      this.#cache.delete(oldest);
    }
    return context;
  }
}

/** Lower-case, and an IPv6 literal without its brackets. */
function hostKey(host: string): string {
  const lower = host.toLowerCase();
  return lower.startsWith('[') && lower.endsWith(']') ? lower.slice(1, -1) : lower;
}
