// The demo's gateway config: the shipped routes.yaml with only what a local run needs changed
// (listeners on free loopback ports, targets and the token URL pointed at the fakes, which are
// private addresses the upstreams must allow, the memory store, and Zoho's refresh timing scaled
// down as the fake's is). Everything else (tenants, weights, limits, queueing, fair share,
// feedback rules) is the shipped file, so the demo shows what a newcomer would deploy.
import { parseDocument } from 'yaml';
import { ZOHO_DEMO } from './upstreams.mjs';

/** Thrown when routes.yaml no longer has a key the demo changes. */
export class DemoConfigError extends Error {
  name = 'DemoConfigError';
}

/**
 * @param {string} shipped  routes.yaml's text
 * @param {{ twilio: string, baselinker: string, servicedesk: string, tokenUrl: string }} urls  the fakes
 * @returns {string}
 */
export function demoConfig(shipped, urls) {
  // `${NAME}` is substituted in the text before YAML parsing (`[${A}, ${B}]` is no YAML until
  // then): stand-ins keep the references for the gateway to fill from the environment as usual.
  const references = [];
  const doc = parseDocument(shipped.replace(/\$\{[^}]*\}/g, (ref) => `SLUICE_DEMO_REF_${references.push(ref) - 1}_`));
  const set = (path, value) => {
    // Only keys the shipped file has are changed: a renamed one must fail here, not be added blind.
    if (!doc.hasIn(path.slice(0, -1)) || (path.at(-1) !== 'allowPrivate' && !doc.hasIn(path))) {
      throw new DemoConfigError(`routes.yaml has no ${path.join('.')}: the demo config must follow it (bench/demo/config.mjs)`);
    }
    doc.setIn(path, value);
  };
  set(['listen', 'proxy'], '127.0.0.1:0');
  set(['listen', 'admin'], '127.0.0.1:0');
  set(['store', 'type'], 'memory');
  for (const upstream of ['twilio', 'baselinker', 'servicedesk']) {
    set(['upstreams', upstream, 'target'], urls[upstream]);
    set(['upstreams', upstream, 'allowPrivate'], true);
  }
  const oauth = ['upstreams', 'servicedesk', 'credentials'];
  set([...oauth, 'tokenUrl'], urls.tokenUrl);
  // Refresh at half the demo token's life, within the fake Zoho's budget.
  set([...oauth, 'refreshBefore'], `${ZOHO_DEMO.lifetimeS / 2}s`);
  const { max, perS, everyS } = ZOHO_DEMO.refreshLimit;
  set([...oauth, 'refreshLimit'], doc.createNode({ every: `${everyS}s`, max, per: `${perS / 60}m` }, { flow: true }));
  return doc.toString({ lineWidth: 0, flowCollectionPadding: false }).replace(/SLUICE_DEMO_REF_(\d+)_/g, (_, i) => references[Number(i)]);
}
