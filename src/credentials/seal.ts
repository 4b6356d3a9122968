/**
 * Tokens at rest in the shared store are sealed with AES-256-GCM when `store.tokenKey` is set:
 * whoever reads Redis (a backup, a replica, a MONITOR session) does not get a usable token. The
 * state key is the additional data, so a sealed token copied under another credential's key does
 * not open. Without a key, tokens are stored as they are (prefixed, so a key added later is noticed).
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

export interface Sealer {
  seal(token: string, key: string): string;
  /** The token, or undefined when it was sealed with another key (or none) and cannot be read. */
  open(sealed: string, key: string): string | undefined;
}

const PLAIN = 'p:';
const SEALED = 'g1:';

export const plainSealer: Sealer = {
  seal: (token) => PLAIN + token,
  open: (sealed) => (sealed.startsWith(PLAIN) ? sealed.slice(PLAIN.length) : undefined),
};

/** From any text key (32 random bytes in base64 is the advice): HKDF-SHA256 derives the AES key. */
export function aesSealer(secret: string): Sealer {
  const key = Buffer.from(hkdfSync('sha256', secret, 'sluice', 'sluice token at rest v1', 32));
  return {
    seal(token, aad) {
      const iv = randomBytes(12);
      const cipher = createCipheriv('aes-256-gcm', key, iv).setAAD(Buffer.from(aad));
      const body = Buffer.concat([cipher.update(token, 'utf8'), cipher.final()]);
      return SEALED + Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64');
    },
    open(sealed, aad) {
      if (!sealed.startsWith(SEALED)) return undefined;
      const raw = Buffer.from(sealed.slice(SEALED.length), 'base64');
      if (raw.length < 28) return undefined;
      try {
        const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12)).setAAD(Buffer.from(aad));
        decipher.setAuthTag(raw.subarray(12, 28));
        return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8');
      } catch {
        return undefined; // another key, or tampered with
      }
    },
  };
}
