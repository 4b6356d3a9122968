/**
 * @peculiar/x509, ready to use: import it from here, never directly.
 *
 * Why this library: it builds certificates over WebCrypto, so Node does the key generation and the
 * signing natively (an ECDSA P-256 key in about a millisecond); node-forge is pure JavaScript (an
 * RSA key takes hundreds of milliseconds, every signature is slow). It has a typed TypeScript API
 * and is actively maintained by PeculiarVentures. Its dependencies are its own asn1 packages,
 * pvtsutils, tslib and tsyringe; tsyringe needs the Reflect metadata polyfill, which must be
 * evaluated before the library is, hence this module.
 */
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export { x509 };

/** A new ECDSA P-256 key pair (native: well under a millisecond), and its private key as PKCS#8 PEM. */
export async function newP256Key(): Promise<{ keys: webcrypto.CryptoKeyPair; pem: string }> {
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const pkcs8 = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey);
  return { keys, pem: x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') };
}
