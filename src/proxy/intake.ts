/**
 * What is being asked? A base-URL request (`GET /twilio/2010-04-01/...`) or an absolute-form
 * forward-proxy request (`GET http://api.twilio.com/...`, what HTTP_PROXY produces). The target is
 * split by hand rather than with `new URL()`: a proxy forwards the path byte for byte, and WHATWG
 * URL parsing would resolve dot segments and re-encode characters.
 */
import type { IncomingMessage } from 'node:http';
import { GatewayError } from '../errors.js';
import type { RequestForm } from '../tenants/identify.js';

export interface Intake {
  form: RequestForm;
  /** Lower-case host, with ":port" when the request named one (proxy form only). */
  host: string;
  /** Path and query, always starting with "/". */
  path: string;
}

const ABSOLUTE = /^https?:\/\/([^/?#]*)([^#]*)/i;
const AUTHORITY = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/;

export function intake(req: IncomingMessage): Intake {
  // RFC 9112 3.2: an HTTP/1.1 request without Host is malformed (Node is told not to answer it itself).
  if (req.headers.host === undefined && req.httpVersionMinor >= 1) {
    throw new GatewayError('bad_request', 'an HTTP/1.1 request needs a Host header', { headers: { connection: 'close' } });
  }
  const upgrade = req.headers.upgrade;
  if (upgrade !== undefined && /websocket/i.test(upgrade)) {
    throw new GatewayError('not_implemented', 'WebSocket upgrades are not served yet', { headers: { connection: 'close' } });
  }
  const target = req.url;
  if (target === undefined || target === '') throw new GatewayError('bad_request', 'the request has no target');
  if (target.charCodeAt(0) === 0x2f /* / */) return { form: 'base-url', host: '', path: target };
  const m = ABSOLUTE.exec(target);
  if (!m) {
    throw new GatewayError('bad_request', 'the request target must be /PREFIX/... (base URL) or an absolute http:// URL (HTTP_PROXY)');
  }
  const host = m[1]!.toLowerCase();
  if (!AUTHORITY.test(host)) {
    throw new GatewayError('bad_request', 'the request target has an invalid host (user info and odd characters are refused)');
  }
  const rest = m[2]!;
  const path = rest === '' ? '/' : rest.charCodeAt(0) === 0x3f /* ? */ ? `/${rest}` : rest;
  return { form: 'proxy', host, path };
}
