/**
 * What is being asked? A base-URL request (`GET /twilio/2010-04-01/...`), an absolute-form
 * forward-proxy request (`GET http://api.twilio.com/...`, what HTTP_PROXY produces), or a request
 * inside an intercepted CONNECT tunnel (HTTPS_PROXY), for the host the CONNECT named. The target is
 * split by hand rather than with `new URL()`: a proxy forwards the path byte for byte, and WHATWG
 * URL parsing would resolve dot segments and re-encode characters.
 */
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { GatewayError } from '../errors.js';
import type { RequestForm } from '../tenants/identify.js';

export interface Intake {
  form: RequestForm;
  /** Lower-case host, with ":port" when the request named one (proxy and tunnel forms). */
  host: string;
  /** Path and query, always starting with "/". */
  path: string;
}

const ABSOLUTE = /^https?:\/\/([^/?#]*)([^#]*)/i;
const AUTHORITY = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?|\[[0-9a-f:.]+\])(?::\d{1,5})?$/;

/** What the CONNECT of an intercepted tunnel established, for the requests inside it. */
export interface TunnelOrigin {
  /** host:port the CONNECT named, lower case: requests inside are for it. */
  readonly authority: string;
  /** The CONNECT's own tenant credentials, checked again against the config in force at every request. */
  readonly credentials: IncomingHttpHeaders;
}

export function intake(req: IncomingMessage, tunnel?: TunnelOrigin): Intake {
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
  if (tunnel) {
    // Inside a tunnel the host is the CONNECT's; requests name only the path (origin form).
    if (target.charCodeAt(0) === 0x2f /* / */) return { form: 'tunnel', host: tunnel.authority, path: target };
    throw new GatewayError('bad_request', 'a request inside a CONNECT tunnel must name a path (origin form, "/...")');
  }
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
