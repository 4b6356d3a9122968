/**
 * The admin listener (`listen.admin`): health for orchestrators now; metrics and status join it
 * as those features land. Routes are a table of exact paths, so each feature adds its own entry.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export type AdminHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export interface Readiness {
  ready: boolean;
  /** Why not, in words an operator can act on. */
  reasons: string[];
}

export interface AdminContext {
  readiness(): Readiness;
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
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
  ]);
}

export function createAdminServer(routes: ReadonlyMap<string, AdminHandler>): Server {
  return createServer({ headersTimeout: 5_000, requestTimeout: 10_000 }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0]!;
    const handler = routes.get(path);
    if (!handler) {
      sendJson(res, 404, { error: 'not_found', message: `no admin endpoint at ${path}`, endpoints: [...routes.keys()] });
      return;
    }
    Promise.resolve(handler(req, res)).catch(() => {
      if (!res.headersSent) sendJson(res, 500, { error: 'internal_error', message: 'the admin endpoint failed' });
      else res.destroy();
    });
  });
}
