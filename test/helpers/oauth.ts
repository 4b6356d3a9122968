/**
 * The fake Zoho OAuth2 world (bench/fakes/zoho.mjs, shared with `npm run demo`) as the OAuth2 tests
 * use it: a token endpoint that counts its calls and issues short-lived tokens (or fails, answers
 * slowly, holds its answers, says invalid_grant or Zoho's "too many requests"), and an upstream API
 * that accepts only the token the endpoint issued last (or, in `unexpired` mode, any it issued that
 * has not expired), answering 401 otherwise; plus the routes.yaml lines of an upstream in front of it.
 */
import { startServiceDesk, type FakeServiceDesk, type FakeTokenEndpoint } from '../../bench/fakes/zoho.mjs';

export { startTokenEndpoint, type EndpointMode, type FakeTokenEndpoint, type TokenCall } from '../../bench/fakes/zoho.mjs';

export type TokenCheckingUpstream = FakeServiceDesk;

/** An API that wants `<scheme> <token>` (scheme as in the gateway's `format`) with a token of `endpoint`. */
export function startTokenCheckingUpstream(endpoint: FakeTokenEndpoint, scheme = 'Zoho-oauthtoken'): Promise<TokenCheckingUpstream> {
  return startServiceDesk(endpoint, { scheme });
}

export const ZOHO_CLIENT_SECRET = 'zoho-client-secret-6f1d2c';
export const ZOHO_REFRESH_TOKEN = '1000.refresh-token-9a8b7c6d5e';

/**
 * routes.yaml lines of an upstream `sdp` (prefix /sdp) in front of `api`, with OAuth2 credentials
 * from `endpoint` as ServiceDesk Plus has them from Zoho; `more` adds lines to the credentials block.
 */
export function sdpUpstream(endpoint: FakeTokenEndpoint, api: TokenCheckingUpstream, more = ''): string {
  return `
  sdp:
    match: { prefix: /sdp }
    target: "${api.url}"
    allowPrivate: true
    credentials:
      type: oauth2
      grant: refresh_token
      tokenUrl: "${endpoint.url}"
      clientId: zoho-client-id
      clientSecret: ${ZOHO_CLIENT_SECRET}
      refreshToken: ${ZOHO_REFRESH_TOKEN}
      format: "Zoho-oauthtoken {token}"
${more}`;
}
