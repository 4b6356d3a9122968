/** What a token endpoint's answer means (token-endpoint.ts interpret), and how a token is written into its header. */
import { describe, expect, it } from 'vitest';
import { formatted } from '../src/credentials/provider.js';
import { DEFAULT_TOKEN_LIFETIME_MS, interpret } from '../src/credentials/token-endpoint.js';

describe('token endpoint answers', () => {
  it('reads access_token and expires_in (seconds); Zoho’s older expires_in_sec wins over its expires_in in ms', () => {
    expect(interpret(200, '{"access_token":"at-1","expires_in":3600}')).toEqual({ kind: 'token', accessToken: 'at-1', expiresInMs: 3_600_000 });
    expect(interpret(200, '{"access_token":"at-2","expires_in_sec":3600,"expires_in":3600000}')).toEqual({ kind: 'token', accessToken: 'at-2', expiresInMs: 3_600_000 });
    expect(interpret(200, '{"access_token":"at-3"}')).toMatchObject({ expiresInMs: DEFAULT_TOKEN_LIFETIME_MS });
    // A lifetime in a wrong unit is taken for a day at most.
    expect(interpret(200, '{"access_token":"at-4","expires_in":36000000}')).toMatchObject({ expiresInMs: 86_400_000 });
  });

  it('tells a block, a dead grant and a failure apart, Zoho’s HTTP 200 errors included', () => {
    const tooMany = '{"error_description":"You have made too many requests continuously. Please try again after some time.","error":"Access Denied","status":"failure"}';
    expect(interpret(400, tooMany)).toMatchObject({ kind: 'throttled' });
    expect(interpret(200, tooMany)).toMatchObject({ kind: 'throttled' });
    expect(interpret(400, '{"error":"invalid_grant"}')).toEqual({ kind: 'revoked', error: 'invalid_grant' });
    expect(interpret(200, '{"error":"invalid_code"}')).toEqual({ kind: 'revoked', error: 'invalid_code' });
    expect(interpret(503, 'Service Unavailable', '7')).toEqual({ kind: 'failed', detail: 'HTTP 503', retryAfterMs: 7000 });
    expect(interpret(429, '{"error":"slow_down"}')).toEqual({ kind: 'failed', detail: 'HTTP 429, error "slow_down"', retryAfterMs: undefined });
    // A token that could split a header is no token.
    expect(interpret(200, '{"access_token":"at\\r\\nX-Evil: 1","expires_in":60}')).toMatchObject({ kind: 'failed' });
  });

  it('writes a token into its format as it is, "$" included', () => {
    expect(formatted('Zoho-oauthtoken {token}', 'ab$&cd$$')).toBe('Zoho-oauthtoken ab$&cd$$');
    expect(formatted(undefined, 'raw')).toBe('raw');
  });
});
