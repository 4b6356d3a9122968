import { isScalar } from 'yaml';

/** The text of a YAML mapping key, as it appears in a path. */
export function keyText(key: unknown): string {
  return isScalar(key) ? String(key.value) : String(key);
}

/** A key path into routes.yaml, e.g. ['upstreams', 'twilio', 'limits', 1, 'rate']. */
export type ConfigPath = readonly (string | number)[];

/** ['upstreams', 'twilio', 'limits', 1, 'rate'] to "upstreams.twilio.limits[1].rate". */
export function formatPath(path: ConfigPath): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out === '' ? part : `.${part}`;
  }
  return out || '(top level)';
}

