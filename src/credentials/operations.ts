/** What operators see of credentials (/status) and may do to them (a refresh), by upstream. */
import { GatewayError } from '../errors.js';
import type { ActionResult } from '../observability/admin.js';
import type { Logger } from '../observability/logger.js';
import type { Policy } from '../policy.js';
import type { CredentialStatus } from './provider.js';

export async function credentialsStatus(policy: Policy): Promise<Record<string, CredentialStatus>> {
  const entries = await Promise.all(
    [...policy.upstreams.values()].map(async (u): Promise<[string, CredentialStatus][]> => {
      if (u.credentialsMissing) return [[u.name, { type: policy.config.upstreams[u.name]!.credentials!.type, state: 'missing' }]];
      return u.credentials ? [[u.name, await u.credentials.status()]] : [];
    }),
  );
  return Object.fromEntries(entries.flat());
}

/** POST /credentials/<upstream>/refresh: logged as an audit event, whatever the outcome. */
export async function refreshCredentials(policy: Policy, logger: Logger, upstream: string, force: boolean, from: string): Promise<ActionResult> {
  let result: ActionResult = { status: 500, body: { error: 'internal_error', message: 'the refresh failed inside the gateway' } };
  try {
    result = await refresh(policy, upstream, force);
    return result;
  } finally {
    logger.info(
      { audit: 'credentials.refresh', upstream, force, from, status: result.status, outcome: result.body.error ?? 'refreshed' },
      'admin action',
    );
  }
}

async function refresh(policy: Policy, upstream: string, force: boolean): Promise<ActionResult> {
  const profile = policy.upstreams.get(upstream);
  if (!profile) return { status: 404, body: { error: 'not_found', message: `no upstream "${upstream}"` } };
  const provider = profile.credentials;
  if (!provider?.refreshNow) {
    return { status: 409, body: { error: 'not_refreshable', message: `upstream "${upstream}" has no OAuth2 credentials to refresh`, upstream } };
  }
  try {
    return { status: 200, body: { upstream, refreshed: true, force, ...(await provider.refreshNow(force)) } };
  } catch (err) {
    if (!(err instanceof GatewayError)) throw err;
    const retry = err.retryAfterMs === undefined ? undefined : Math.max(1, Math.ceil(err.retryAfterMs / 1000));
    return {
      status: err.status,
      body: { error: err.code, message: err.message, upstream, ...(err.retryAfterMs === undefined ? {} : { retryAfterMs: err.retryAfterMs }) },
      ...(retry === undefined ? {} : { headers: { 'retry-after': String(retry) } }),
    };
  }
}
