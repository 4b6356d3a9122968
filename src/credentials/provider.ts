/**
 * The credential an upstream request carries, added by the gateway so that clients never hold it.
 * Every provider answers the same four questions for the pipeline: which members are out of
 * rotation (before admission), which credential this request carries (after it), what the
 * upstream's answer says about that credential, and what an operator may see of its state.
 */
import type { CredentialsConfig } from '../config/schema.js';

export interface Credential {
  /** Lower-case header name; a client's own header of that name is dropped, never forwarded alongside. */
  header: string;
  value: string;
}

export interface CredentialProvider {
  /**
   * Throws a GatewayError (credentials_unavailable) when no credential can be had now, so that a
   * request is refused before it uses up limits.
   */
  check(): void;
  /**
   * Pool members out of rotation now (the limits choose among the others); asked again at every
   * attempt of a queued request, since members go out while it waits.
   */
  outOfRotation?(): readonly number[] | undefined;
  /**
   * The credential for one request; `member` is the pool member the limits chose, `skip` pool
   * members the caller rules out (their circuit breaker is open). An OAuth2 credential may wait here
   * for the one refresh in flight. Throws a GatewayError when none can be had.
   */
  next(member?: number, skip?: readonly number[]): Credential | Promise<Credential>;
  /** The pool member a credential of next() is (per-credential circuit breakers). */
  memberOf?(credential: Credential): number | undefined;
  /** The upstream answered `status` to a request that carried `credential` (401s and 403s matter). */
  answered(credential: Credential, status: number): void;
  /** An operator's refresh (OAuth2 only): one refresh now, within the refresh budget unless forced. */
  refreshNow?(force: boolean): Promise<{ expiresAt: string; fence: number }>;
  /** What /status shows: state, times and counts, never a secret. */
  status(): Promise<CredentialStatus>;
  close(): void;
}

/** One provider's state for /status. Times are ISO 8601; durations are seconds. */
export type CredentialStatus = { type: CredentialsConfig['type'] } & Record<string, unknown>;

export function fixedCredential(type: 'basic' | 'header', header: string, value: string): CredentialProvider {
  const credential = { header: header.toLowerCase(), value };
  return {
    check: () => undefined,
    next: () => credential,
    answered: () => undefined,
    status: () => Promise.resolve({ type }),
    close: () => undefined,
  };
}

export function formatted(format: string | undefined, token: string): string {
  // A function, so that "$&" or "$$" in a token is taken as it is, not as a replacement pattern.
  return format === undefined ? token : format.replaceAll('{token}', () => token);
}

export function basicAuthorization(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/** Every configured secret value in a credentials block, for log redaction (tokens obtained later join it as they come). */
export function credentialSecrets(config: CredentialsConfig | undefined): string[] {
  switch (config?.type) {
    case undefined:
      return [];
    case 'basic':
      return [config.password, config.username, basicAuthorization(config.username, config.password).slice('Basic '.length)];
    case 'header':
      return [config.value];
    case 'pool':
      return config.tokens;
    case 'oauth2':
      return [config.clientSecret, config.refreshToken ?? ''];
  }
}
