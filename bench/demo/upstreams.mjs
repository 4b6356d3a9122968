// The demo's upstreams: the fake Twilio, BaseLinker and Zoho + ServiceDesk Plus (bench/fakes/),
// each enforcing its API's own limits, with credentials that are obviously not real ones.
import { startBaseLinker } from '../fakes/baselinker.mjs';
import { startTwilio } from '../fakes/twilio.mjs';
import { startServiceDesk, startTokenEndpoint } from '../fakes/zoho.mjs';

/** The environment routes.yaml reads its secrets from: fake values the fakes accept. */
export const DEMO_SECRETS = {
  TWILIO_ACCOUNT_SID: `AC${'0'.repeat(28)}dem0`,
  TWILIO_AUTH_TOKEN: 'demo-twilio-auth-token-not-real',
  BL_TOKEN_1: 'demo-baselinker-token-1-not-real',
  BL_TOKEN_2: 'demo-baselinker-token-2-not-real',
  ZOHO_CLIENT_ID: '1000.DEMOCLIENTIDNOTREAL',
  ZOHO_CLIENT_SECRET: 'demo-zoho-client-secret-not-real',
  ZOHO_REFRESH_TOKEN: '1000.demo-zoho-refresh-token-not-real',
  ACME_KEY: 'acme-demo-key',
  GLOBEX_KEY: 'globex-demo-key',
};

/**
 * Zoho's limits scaled down so that a 30 s demo shows tokens expiring and being refreshed: real
 * tokens live an hour and Zoho allows about 10 refreshes per 10 minutes; here they live 30 s, and
 * the budget keeps its 10 per 10 minutes with at most one refresh every 10 s. The gateway's
 * refreshLimit is set to the same numbers (config.mjs).
 */
export const ZOHO_DEMO = { lifetimeS: 30, refreshLimit: { max: 10, perS: 600, everyS: 10 } };

/** Starts the four fakes; `close()` stops them, `truth()` is what they saw so far. */
export async function startUpstreams() {
  const s = DEMO_SECRETS;
  const twilio = await startTwilio({ accountSid: s.TWILIO_ACCOUNT_SID, authToken: s.TWILIO_AUTH_TOKEN, latencyMs: 80 });
  const baselinker = await startBaseLinker({ tokens: [s.BL_TOKEN_1, s.BL_TOKEN_2] });
  const zoho = await startTokenEndpoint({
    lifetimeS: ZOHO_DEMO.lifetimeS,
    refreshLimit: ZOHO_DEMO.refreshLimit,
    client: { clientId: s.ZOHO_CLIENT_ID, clientSecret: s.ZOHO_CLIENT_SECRET, refreshToken: s.ZOHO_REFRESH_TOKEN },
  });
  // Zoho's tokens stay valid until they expire, whatever was issued since; routes.yaml's 60/min and 1000/h.
  const servicedesk = await startServiceDesk(zoho, {
    accept: 'unexpired',
    rates: [
      { count: 60, windowMs: 60_000 },
      { count: 1000, windowMs: 3_600_000 },
    ],
  });
  return {
    twilio,
    baselinker,
    zoho,
    servicedesk,
    close: () => Promise.all([twilio.close(), baselinker.close(), zoho.close(), servicedesk.close()]),
    /** Per API: what it received, served, refused for its own limits and for wrong credentials. */
    truth() {
      const api = (fake) => ({ received: fake.arrivals.length, ...fake.stats });
      const refused = zoho.calls.filter((c) => c.outcome !== 'token' && c.outcome !== 'pending').length;
      return {
        twilio: api(twilio),
        baselinker: { ...api(baselinker), blocks: baselinker.blocks },
        servicedesk: api(servicedesk),
        zoho: { issued: zoho.issued.length, refused, lifetimeS: zoho.lifetimeS, ...ZOHO_DEMO.refreshLimit },
      };
    },
  };
}
