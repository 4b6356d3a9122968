/**
 * limits/usage.ts: each rule's usage read from the store without consuming (what /status and the
 * utilisation and remaining gauges show): per upstream, per tenant only with that tenant, per
 * pool member one state each, and reading twice changes nothing; every tenant's per-tenant states
 * of an upstream are read in one store call, without the rules they share.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../src/config/load.js';
import { Limiter } from '../src/limits/admit.js';
import { UpstreamLimits } from '../src/limits/rules.js';
import { MemoryStore } from '../src/store/memory.js';
import type { RuleOutcome, StoreRule } from '../src/store/store.js';
import type { Tenant } from '../src/tenants/identify.js';

const YAML = `
tenants:
  acme: { key: acme-secret-key-1 }
  globex: { key: globex-secret-key-2 }
  initech: { key: initech-secret-key-3 }
upstreams:
  api:
    match: { prefix: /api }
    target: http://127.0.0.1:1
    allowPrivate: true
    limits:
      - { name: shared, rate: 60/min, share: fair }
      - { name: hourly, quota: 5/h, per: tenant }
  bl:
    match: { prefix: /bl }
    target: http://127.0.0.1:1
    allowPrivate: true
    credentials: { type: pool, header: X-BLToken, tokens: [tok-a-1111, tok-b-2222] }
    limits:
      - { name: per-token, rate: 100/min, burst: 4, per: credential }
      - { name: mine, quota: 10/day, per: tenant }
      - { name: inflight, concurrency: 3 }
`;

describe('usageOf', () => {
  it('reads every state of every rule, consuming nothing', async () => {
    const { config } = parseConfig(YAML, 'test.yaml', {});
    const limits = new UpstreamLimits('bl', config.upstreams.bl!, 'usage-test');
    const now = Date.now(); // a still clock: reading twice must give the same answer, resetMs included
    const limiter = new Limiter(new MemoryStore(() => now), 30_000);
    const acme: Tenant = { name: 'acme', weight: 1 };
    const admitted = await limiter.admit({ limits, tenant: acme, method: 'GET', path: '/x', rank: 0, clientGone: () => new AbortController().signal });
    expect(admitted.admitted).toBe(true);
    const token = admitted.admitted ? admitted.credential : undefined;

    const wide = await limiter.usage(limits.sharedStates());
    expect(wide.map((u) => [u.rule, u.credential, u.tenant])).toEqual([
      ['per-token', 0, undefined],
      ['per-token', 1, undefined],
      ['inflight', undefined, undefined],
    ]);
    const used = wide.find((u) => u.rule === 'per-token' && u.credential === token)!;
    expect(used).toMatchObject({ capacity: 4, remaining: 3, used: 1, utilisation: 0.25, retryAfterMs: 0 });
    expect(used.resetMs).toBeGreaterThan(0);
    expect(wide.find((u) => u.rule === 'per-token' && u.credential !== token)).toMatchObject({ remaining: 4, used: 0, resetMs: 0 });
    expect(wide.find((u) => u.rule === 'inflight')).toMatchObject({ capacity: 3, remaining: 2, used: 1 });

    const mine = await limiter.usage(limits.tenantStates([acme]));
    expect(mine).toEqual([expect.objectContaining({ rule: 'mine', tenant: 'acme', capacity: 10, remaining: 9, used: 1 })]);
    expect(await limiter.usage(limits.tenantStates([acme]))).toEqual(mine);

    if (admitted.admitted) admitted.release();
    await limiter.close();
  });

  it("reads every tenant's per-tenant states in one store call, without the shared (and fair) rules", async () => {
    const { config } = parseConfig(YAML, 'test.yaml', {});
    const limits = new UpstreamLimits('api', config.upstreams.api!, 'usage-test');
    const store = new PeekCountingStore();
    const limiter = new Limiter(store, 30_000);
    const tenants: Tenant[] = ['acme', 'globex', 'initech'].map((name) => ({ name, weight: 1 }));

    const usages = await limiter.usage(limits.tenantStates(tenants));
    expect(store.peeks).toEqual([['{usage-test:api}:hourly:quota:t:acme', '{usage-test:api}:hourly:quota:t:globex', '{usage-test:api}:hourly:quota:t:initech']]);
    expect(usages.map((u) => [u.rule, u.tenant, u.remaining])).toEqual([
      ['hourly', 'acme', 5],
      ['hourly', 'globex', 5],
      ['hourly', 'initech', 5],
    ]);
    // The fair rule once, as a newcomer finds it; as a tenant finds it, for that tenant's own view.
    expect(limits.sharedStates().map((s) => [s.rule.name, s.store.fair?.tenant])).toEqual([['shared', '']]);
    expect(limits.sharedStates(tenants[1]).map((s) => [s.rule.name, s.store.fair?.tenant])).toEqual([['shared', 'globex']]);
    await limiter.close();
  });
});

/** A memory store that notes the keys of each peek. */
class PeekCountingStore extends MemoryStore {
  readonly peeks: string[][] = [];

  override peek(rules: readonly StoreRule[]): Promise<RuleOutcome[]> {
    this.peeks.push(rules.flatMap((r) => r.keys));
    return super.peek(rules);
  }
}
