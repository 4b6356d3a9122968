import type { IncomingMessage, Server, ServerResponse } from 'node:http';

/** What every fake API counts: a request it served, refused for its credential, or refused for a limit. */
export interface FakeApiStats {
  accepted: number;
  /** Requests without the credential the gateway should have injected (401). */
  unauthorized: number;
  /** Requests over one of the API's own limits (a 429, or BaseLinker's blocked-token body). */
  limited: number;
}

export function listen(server: Server): Promise<string>;
export function close(server: Server): Promise<void>;
export function readBody(req: IncomingMessage): Promise<string>;
export function sendJson(res: ServerResponse, status: number, body: unknown, headers?: Record<string, string>): void;
