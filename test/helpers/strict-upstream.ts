/**
 * A real HTTP server on 127.0.0.1 standing in for an upstream API with strict limits. It does not
 * enforce anything itself: it records every arrival (with a high-resolution timestamp) and the
 * requests in flight, so tests can check afterwards, with helpers/limit-check.ts, that the gateway
 * kept the traffic inside the configured limits.
 *
 * Paths:
 *   /slow/MS       200 after MS milliseconds
 *   /status/CODE   that status (after delayMs), for lease-release-on-error tests
 *   anything else  200 after delayMs (default 0: answered synchronously)
 *
 * Grouping: an arrival's `key` is its `authorization` header, else `x-bltoken`, else "" (the
 * credential the gateway injected, so per-credential limits can be checked); `tenant` is the
 * `x-test-tenant` header that tests send through the gateway.
 *
 * The handler does no logging and little work, so the server's own overhead stays far below the
 * timing tolerances the checks use.
 */
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';

export interface StrictArrival {
  /** When the request arrived: performance.timeOrigin + performance.now(), in ms (fractional). */
  at: number;
  method: string;
  /** The request path, without the query string. */
  path: string;
  /** authorization header, else x-bltoken header, else "". */
  key: string;
  /** x-test-tenant header, if sent. */
  tenant?: string;
  /** When the response finished or the connection went away (same clock as `at`); unset while in flight. */
  end?: number;
}

export interface StrictUpstream {
  url: string;
  port: number;
  arrivals: StrictArrival[];
  /** Most requests in flight at once since start (or the last reset): overall, or for one key. */
  inFlightMax(key?: string): number;
  /** Forgets the arrivals and the maxima (the maxima restart from what is in flight now). */
  reset(): void;
  server: Server;
  close(): Promise<void>;
}

/** The same clock as the arrivals' `at`: epoch ms with sub-millisecond resolution. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

function header(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

export async function startStrictUpstream(options: { delayMs?: number } = {}): Promise<StrictUpstream> {
  const delayMs = options.delayMs ?? 0;
  const arrivals: StrictArrival[] = [];
  let inFlight = 0;
  let inFlightMaxAll = 0;
  const inFlightByKey = new Map<string, number>();
  const maxByKey = new Map<string, number>();
  const timers = new Set<NodeJS.Timeout>();

  const server = createServer((req, res) => {
    const at = nowMs();
    const key = header(req.headers.authorization) ?? header(req.headers['x-bltoken']) ?? '';
    const tenant = header(req.headers['x-test-tenant']);
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const arrival: StrictArrival = { at, method: req.method ?? '', path, key };
    if (tenant !== undefined) arrival.tenant = tenant;
    arrivals.push(arrival);

    inFlight++;
    if (inFlight > inFlightMaxAll) inFlightMaxAll = inFlight;
    const keyed = (inFlightByKey.get(key) ?? 0) + 1;
    inFlightByKey.set(key, keyed);
    if (keyed > (maxByKey.get(key) ?? 0)) maxByKey.set(key, keyed);
    // 'close' fires once, whether the response finished or the client went away.
    res.once('close', () => {
      arrival.end = nowMs();
      inFlight--;
      inFlightByKey.set(key, (inFlightByKey.get(key) ?? 1) - 1);
    });
    req.resume();

    const [, first, arg] = path.split('/');
    let status = 200;
    let wait = delayMs;
    if (first === 'slow' && arg !== undefined) wait = Number(arg) || 0;
    if (first === 'status' && arg !== undefined) status = Number(arg) || 500;
    const answer = () => {
      if (res.destroyed) return;
      const body = JSON.stringify({ ok: status < 400, status, path });
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (wait <= 0) return answer();
    const timer = setTimeout(() => {
      timers.delete(timer);
      answer();
    }, wait);
    timers.add(timer);
  });
  // Load tests open many keep-alive connections; don't let the server's defaults cut them mid-run.
  server.keepAliveTimeout = 30_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    arrivals,
    inFlightMax: (key?: string) => (key === undefined ? inFlightMaxAll : (maxByKey.get(key) ?? 0)),
    reset() {
      arrivals.length = 0;
      inFlightMaxAll = inFlight;
      maxByKey.clear();
      for (const [k, n] of inFlightByKey) if (n > 0) maxByKey.set(k, n);
    },
    server,
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      server.closeAllConnections();
      const closed = once(server, 'close');
      server.close();
      await closed;
    },
  };
}
