/**
 * A bounded load driver: `concurrency` workers send requests through the gateway (base-URL form,
 * authenticated with X-Sluice-Key) until `durationMs` has passed, then report what came back.
 *
 * Bounds: no request starts after the deadline, at most MAX_REQUESTS are sent, and requests still
 * in flight graceMs after the deadline are aborted (counted as errors), so a hung gateway cannot
 * hang the test. Only 127.0.0.1 is ever contacted.
 */
import { setMaxListeners } from 'node:events';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request } from 'undici';

/** Hard cap on requests per drive, whatever the duration. */
export const MAX_REQUESTS = 200_000;

export interface DriveOptions {
  /** http://127.0.0.1:PORT of the gateway's proxy listener. */
  gatewayUrl: string;
  /** Base-URL path including the upstream's prefix: `/PREFIX/rest?query`. */
  path: string;
  method?: string;
  tenant: string;
  key: string;
  /** Extra request headers. `x-test-tenant` is set to `tenant` unless given here. */
  headers?: Record<string, string>;
  /** Parallel workers (and the agent's connections). */
  concurrency: number;
  durationMs: number;
  /**
   * Open-loop pacing: request k is not sent before start + k·1000/rps (shared across workers).
   * When every worker is busy the schedule falls behind and late slots go out at once.
   */
  rps?: number;
  /** On 429 a worker waits the refusal's retryAfterMs (JSON body, else Retry-After seconds) before its next request. */
  retryOn429?: boolean;
  /** How long requests in flight at the deadline may still take before they are aborted. Default 5000. */
  graceMs?: number;
}

export interface DriveResult {
  sent: number;
  statuses: Record<number, number>;
  /** 2xx answers. */
  admitted: number;
  /** 429 answers. */
  refused: number;
  /** retryAfterMs of each refusal whose JSON body had one. */
  retryAfterMs: number[];
  /** Requests that got no response (connection errors, aborts). */
  errors: number;
}

/** The gateway's refusal body, e.g. {"error":"rate_limited","message":"...","retryAfterMs":123}. */
interface Refusal {
  retryAfterMs?: unknown;
}

function retryAfterFromBody(text: string): number | undefined {
  try {
    const v = (JSON.parse(text) as Refusal | null)?.retryAfterMs;
    return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

export async function drive(options: DriveOptions): Promise<DriveResult> {
  const base = new URL(options.gatewayUrl);
  if (base.hostname !== '127.0.0.1' || base.protocol !== 'http:') {
    throw new Error(`drive() only talks to http://127.0.0.1, not ${options.gatewayUrl}`);
  }
  if (!options.path.startsWith('/')) throw new Error(`path must start with "/": ${options.path}`);
  const url = `${base.origin}${options.path}`;
  const concurrency = Math.max(1, Math.floor(options.concurrency));
  const headers: Record<string, string> = {
    'x-test-tenant': options.tenant,
    ...options.headers,
    'x-sluice-key': `${options.tenant}:${options.key}`,
  };
  const method = options.method ?? 'GET';
  const start = performance.now();
  const deadline = start + options.durationMs;
  const interval = options.rps !== undefined && options.rps > 0 ? 1000 / options.rps : 0;

  const agent = new Agent({ connections: concurrency, keepAliveTimeout: 30_000 });
  const abort = new AbortController();
  // Every request in flight listens on the one signal (undici adds a listener or two per request).
  setMaxListeners(concurrency * 4 + 10, abort.signal);
  const hardStop = setTimeout(() => abort.abort(), options.durationMs + (options.graceMs ?? 5000));

  const result: DriveResult = { sent: 0, statuses: {}, admitted: 0, refused: 0, retryAfterMs: [], errors: 0 };
  let slot = 0;

  const worker = async (): Promise<void> => {
    // A polite retry is the same request again, not a new one: it takes no pacing slot.
    let retrying = false;
    while (result.sent < MAX_REQUESTS && !abort.signal.aborted) {
      if (interval > 0 && !retrying) {
        const due = start + slot++ * interval;
        if (due >= deadline) return;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait);
      }
      if (performance.now() >= deadline) return;
      result.sent++;
      let pause = 0;
      try {
        const res = await request(url, { method, headers, dispatcher: agent, signal: abort.signal });
        // Always read the body to the end, so the connection goes back to the pool.
        const text = await res.body.text();
        const status = res.statusCode;
        result.statuses[status] = (result.statuses[status] ?? 0) + 1;
        if (status >= 200 && status < 300) result.admitted++;
        if (status === 429) {
          result.refused++;
          const fromBody = retryAfterFromBody(text);
          if (fromBody !== undefined) result.retryAfterMs.push(fromBody);
          if (options.retryOn429) {
            const header = res.headers['retry-after'];
            const seconds = Number(Array.isArray(header) ? header[0] : header);
            pause = fromBody ?? (Number.isFinite(seconds) ? seconds * 1000 : 0);
          }
        }
      } catch {
        result.errors++;
      }
      retrying = pause > 0;
      if (pause > 0) {
        // A wait that reaches the deadline ends the worker now (timers may fire a little early,
        // which would let one more request slip out just before the end).
        if (performance.now() + pause >= deadline) return;
        await sleep(pause);
      }
    }
  };

  try {
    await Promise.all(Array.from({ length: concurrency }, worker));
  } finally {
    clearTimeout(hardStop);
    await agent.close().catch(() => undefined);
  }
  return result;
}
