import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { startGateway, testConfig } from './helpers/gateway.js';
import { startUpstream } from './helpers/upstream.js';

describe('admin listener', () => {
  it('answers /healthz and /readyz, and /readyz turns 503 while draining', async () => {
    const upstream = await startUpstream();
    const gw = await startGateway(testConfig(`
  a: { match: { prefix: /a }, target: "${upstream.url}", allowPrivate: true }
`));
    try {
      const health = await request(`${gw.adminUrl}/healthz`);
      expect(health.statusCode).toBe(200);
      expect(await health.body.json()).toEqual({ status: 'ok' });
      const ready = await request(`${gw.adminUrl}/readyz`);
      expect(ready.statusCode).toBe(200);
      expect(await ready.body.json()).toEqual({ status: 'ready' });
      const missing = await request(`${gw.adminUrl}/nope`);
      expect(missing.statusCode).toBe(404);
      expect(await missing.body.json()).toMatchObject({ error: 'not_found', endpoints: ['/healthz', '/readyz', '/metrics', '/status', '/status/*', '/reload', '/credentials/*'] });

      const slow = request(`${gw.proxyUrl}/a/slow/500`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
      await new Promise((r) => setTimeout(r, 100));
      const stopping = gw.close();
      await new Promise((r) => setTimeout(r, 50));
      const draining = await request(`${gw.adminUrl}/readyz`);
      expect(draining.statusCode).toBe(503);
      expect(await draining.body.json()).toEqual({ status: 'not_ready', reasons: ['the gateway is shutting down'] });
      expect((await slow).statusCode).toBe(200);
      await stopping;
    } finally {
      await upstream.close();
    }
  });
});
