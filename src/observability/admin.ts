/**
 * The admin listener (`listen.admin`): health for orchestrators, Prometheus metrics, the status
 * API, and the admin actions. Routes are a table of paths (a key ending in "/" takes every path
 * under it), so each feature adds its own entry. Actions (POST) need `listen.adminToken` as a
 * Bearer token when one is configured, and are refused without one unless the listener is on
 * loopback. Reads (health, /metrics, /status) are open to whoever reaches the admin listener:
 * Prometheus must scrape without a token, the listener is an operator-only address, and nothing
 * they show is a secret.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export type AdminHandler = (req: IncomingMessage, res: ServerResponse, path: string) => void | Promise<void>;

export interface Readiness {
  ready: boolean;
  /** Why not, in words an operator can act on. */
  reasons: string[];
}

/** An admin action's answer: its status, JSON body and extra headers (Retry-After). */
export interface ActionResult {
  status: number;
  body: Record<string, unknown>;
  headers?: Record<string, string>;
}

export interface AdminContext {
  readiness(): Readiness;
  /** GET /status. */
  status(): Promise<Record<string, unknown>>;
  /** GET /status/tenants/<tenant>; undefined for a tenant the config does not name. */
  tenantStatus(tenant: string): Promise<Record<string, unknown> | undefined>;
  /** GET /metrics: the Prometheus text exposition. */
  metrics(): Promise<{ contentType: string; text: string }>;
  /** POST /reload; the context logs it as an audit event. */
  reload(from: string): Promise<ActionResult>;
  /** POST /credentials/<upstream>/refresh[?force=true]; the context logs it as an audit event. */
  refreshCredentials(upstream: string, force: boolean, from: string): Promise<ActionResult>;
  /** listen.adminToken, if configured. */
  adminToken: string | undefined;
  /** The admin listener is on a loopback address. */
  loopback: boolean;
}

export function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(text);
}

export function adminRoutes(ctx: AdminContext): Map<string, AdminHandler> {
  return new Map<string, AdminHandler>([
    ['/healthz', (_req, res) => sendJson(res, 200, { status: 'ok' })],
    [
      '/readyz',
      (_req, res) => {
        const { ready, reasons } = ctx.readiness();
        sendJson(res, ready ? 200 : 503, ready ? { status: 'ready' } : { status: 'not_ready', reasons });
      },
    ],
    [
      '/metrics',
      async (req, res) => {
        if (!allowed(req, res, 'GET')) return;
        const { contentType, text } = await ctx.metrics();
        res.writeHead(200, { 'content-type': contentType, 'cache-control': 'no-store' });
        res.end(text);
      },
    ],
    ['/status', async (req, res) => (allowed(req, res, 'GET') ? sendJson(res, 200, await ctx.status()) : undefined)],
    [
      '/status/',
      async (req, res, path) => {
        const match = /^\/status\/tenants\/([^/]+)$/.exec(path);
        if (!match) return sendJson(res, 404, { error: 'not_found', message: 'use GET /status or GET /status/tenants/<tenant>' });
        if (!allowed(req, res, 'GET')) return;
        const status = await ctx.tenantStatus(decodedOrRaw(match[1]!));
        // The name asked for is not repeated: a client may have put a key where the name goes.
        if (!status) return sendJson(res, 404, { error: 'unknown_tenant', message: 'the config names no such tenant; GET /status lists them' });
        sendJson(res, 200, status);
      },
    ],
    [
      '/reload',
      async (req, res) => {
        if (!allowed(req, res, 'POST') || !authorized(ctx, req, res)) return;
        const result = await ctx.reload(req.socket.remoteAddress ?? '');
        sendJson(res, result.status, result.body, result.headers);
      },
    ],
    [
      '/credentials/',
      async (req, res, path) => {
        const match = /^\/credentials\/([^/]+)\/refresh$/.exec(path);
        if (!match) return sendJson(res, 404, { error: 'not_found', message: 'use POST /credentials/<upstream>/refresh' });
        if (!allowed(req, res, 'POST') || !authorized(ctx, req, res)) return;
        const force = new URL(req.url ?? '/', 'http://admin').searchParams.get('force') === 'true';
        const upstream = decodedOrRaw(match[1]!);
        const result = await ctx.refreshCredentials(upstream, force, req.socket.remoteAddress ?? '');
        sendJson(res, result.status, result.body, result.headers);
      },
    ],
  ]);
}

/** A malformed escape is no reason for a 500: the raw text simply names no upstream. */
function decodedOrRaw(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    return text;
  }
}

function allowed(req: IncomingMessage, res: ServerResponse, method: string): boolean {
  if (req.method === method || (method === 'GET' && req.method === 'HEAD')) return true;
  sendJson(res, 405, { error: 'method_not_allowed', message: `use ${method}` }, { allow: method });
  return false;
}

/** Admin actions: the Bearer token when one is configured; without one, loopback only. */
function authorized(ctx: AdminContext, req: IncomingMessage, res: ServerResponse): boolean {
  if (ctx.adminToken === undefined) {
    if (ctx.loopback) return true;
    sendJson(res, 403, { error: 'forbidden', message: 'admin actions on a non-loopback listener need listen.adminToken' });
    return false;
  }
  const header = req.headers.authorization ?? '';
  const given = header.startsWith('Bearer ') ? header.slice(7) : '';
  // Digests have equal length, so the comparison takes the same time whatever was sent.
  if (timingSafeEqual(sha256(given), sha256(ctx.adminToken))) return true;
  sendJson(res, 401, { error: 'unauthorized', message: 'admin actions need Authorization: Bearer <listen.adminToken>' }, {
    'www-authenticate': 'Bearer realm="sluice-admin"',
  });
  return false;
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

export function createAdminServer(routes: ReadonlyMap<string, AdminHandler>): Server {
  const subtrees = [...routes.keys()].filter((key) => key.endsWith('/'));
  return createServer({ headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    const handler = routes.get(path) ?? routes.get(subtrees.find((key) => path.startsWith(key)) ?? '');
    if (!handler) {
      const endpoints = [...routes.keys()].map((key) => (key.endsWith('/') ? `${key}*` : key));
      sendJson(res, 404, { error: 'not_found', message: `no admin endpoint at ${path}`, endpoints });
      return;
    }
    Promise.resolve(handler(req, res, path)).catch(() => {
      if (!res.headersSent) sendJson(res, 500, { error: 'internal_error', message: 'the admin endpoint failed' });
      else res.destroy();
    });
  });
}
