/**
 * The credential an upstream request carries, added by the gateway so that clients never hold it.
 * Values are computed once per config (a Basic header is encoded here, not per request).
 */
import type { CredentialsConfig } from '../config/schema.js';
import { GatewayError } from '../errors.js';

export interface Credential {
  /** Lower-case header name; a client's own header of that name is dropped, never forwarded alongside. */
  header: string;
  value: string;
}

export interface CredentialProvider {
  /**
   * The credential for one request; throws a GatewayError when none can be had. `index` picks a
   * pool member (the one the limits chose, per: credential).
   */
  next(index?: number): Credential;
}

function fixed(header: string, value: string): CredentialProvider {
  const credential = { header: header.toLowerCase(), value };
  return { next: () => credential };
}

function formatted(format: string | undefined, token: string): string {
  return format === undefined ? token : format.replaceAll('{token}', token);
}

/**
 * A pool: the member the limits chose (the least loaded with room, when a rule counts per
 * credential), or its members in turn when no rule does.
 */
function pool(header: string, values: string[]): CredentialProvider {
  const credentials = values.map((value) => ({ header: header.toLowerCase(), value }));
  let turn = 0;
  return { next: (index) => credentials[index ?? turn++ % credentials.length]! };
}

export function credentialProvider(upstream: string, config: CredentialsConfig | undefined): CredentialProvider | undefined {
  switch (config?.type) {
    case undefined:
      return undefined;
    case 'basic':
      return fixed('authorization', `Basic ${Buffer.from(`${config.username}:${config.password}`).toString('base64')}`);
    case 'header':
      return fixed(config.header, formatted(config.format, config.value));
    case 'pool':
      return pool(config.header, config.tokens.map((t) => formatted(config.format, t)));
    case 'oauth2':
      return {
        next: () => {
          throw new GatewayError('credentials_unavailable', 'OAuth2 token refresh is not available in this version of the gateway', {
            upstream,
          });
        },
      };
  }
}

/** Every secret value in a credentials block, for log redaction. */
export function credentialSecrets(config: CredentialsConfig | undefined): string[] {
  switch (config?.type) {
    case undefined:
      return [];
    case 'basic':
      return [config.password, config.username, Buffer.from(`${config.username}:${config.password}`).toString('base64')];
    case 'header':
      return [config.value];
    case 'pool':
      return config.tokens;
    case 'oauth2':
      return [config.clientSecret, config.refreshToken ?? ''];
  }
}
