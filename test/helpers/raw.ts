/**
 * Raw HTTP/1.1 over node:net, for input that a client library would refuse to send (broken
 * request lines, oversized headers, byte-by-byte clients), and a config builder for tests that
 * need `listen:` keys of their own.
 */
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';

export interface RawResponse {
  status: number;
  /** Header names lower-cased; a repeated header keeps its last value. */
  headers: Record<string, string>;
  body: string;
}

export interface RawExchange {
  /** The first response on the connection, when a whole one arrived. */
  response: RawResponse | undefined;
  /** Every byte received. */
  raw: Buffer;
  /** The gateway closed (or reset) the connection. */
  closed: boolean;
  /** The exchange hit `timeoutMs` and the test destroyed the socket. */
  timedOut: boolean;
  /** Milliseconds from connect to the end of the exchange. */
  elapsedMs: number;
}

export interface RawOptions {
  /** Give up (and destroy the socket) after this long; default 3000 ms. */
  timeoutMs?: number;
  /** Pause between the pieces of `input` (when it is an array); default 0. */
  delayMs?: number;
  /** Half-close the socket after the input is written; default false. */
  end?: boolean;
  /** Return as soon as a whole response has arrived (default), or wait for the connection to close. */
  untilClose?: boolean;
}

/**
 * Connects to 127.0.0.1:port, writes `input` (one piece, or several with `delayMs` between them,
 * stopping early when the gateway answers or closes), and collects what comes back.
 */
export function rawExchange(port: number, input: string | Buffer | (string | Buffer)[], options: RawOptions = {}): Promise<RawExchange> {
  const { timeoutMs = 3_000, delayMs = 0, end = false, untilClose = false } = options;
  const pieces = Array.isArray(input) ? input : [input];
  const startedAt = Date.now();
  return new Promise((resolve) => {
    const socket: Socket = connect({ host: '127.0.0.1', port });
    const received: Buffer[] = [];
    let closed = false;
    let settled = false;
    let answered = false;
    const finish = (timedOut: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const raw = Buffer.concat(received);
      resolve({ response: parseResponse(raw), raw, closed, timedOut, elapsedMs: Date.now() - startedAt });
    };
    const timer = setTimeout(() => finish(true), timeoutMs);
    socket.on('data', (d: Buffer) => {
      received.push(d);
      answered = true;
      if (!untilClose && parseResponse(Buffer.concat(received)) !== undefined) finish(false);
    });
    socket.on('error', () => undefined); // a reset shows as 'close'
    socket.on('close', () => {
      closed = true;
      finish(false);
    });
    socket.once('connect', async () => {
      for (let i = 0; i < pieces.length; i++) {
        if (settled || answered || socket.destroyed) return;
        if (i > 0 && delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
        if (settled || answered || socket.destroyed) return;
        socket.write(pieces[i]!);
      }
      if (end && !socket.destroyed) socket.end();
    });
  });
}

/** One HTTP/1.x response with a Content-Length or chunked body; undefined while incomplete. */
export function parseResponse(raw: Buffer): RawResponse | undefined {
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd < 0) return undefined;
  const [statusLine, ...lines] = raw.subarray(0, headEnd).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine ?? '');
  if (!m) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  const rest = raw.subarray(headEnd + 4);
  let body: Buffer;
  if (headers['content-length'] !== undefined) {
    const length = Number(headers['content-length']);
    if (rest.length < length) return undefined;
    body = rest.subarray(0, length);
  } else if (headers['transfer-encoding']?.toLowerCase() === 'chunked') {
    const parts: Buffer[] = [];
    let at = 0;
    for (;;) {
      const lineEnd = rest.indexOf('\r\n', at);
      if (lineEnd < 0) return undefined;
      const size = parseInt(rest.subarray(at, lineEnd).toString('latin1'), 16);
      if (Number.isNaN(size)) return undefined;
      if (size === 0) break;
      if (rest.length < lineEnd + 2 + size + 2) return undefined;
      parts.push(rest.subarray(lineEnd + 2, lineEnd + 2 + size));
      at = lineEnd + 2 + size + 2;
    }
    body = Buffer.concat(parts);
  } else {
    body = Buffer.alloc(0);
  }
  return { status: Number(m[1]), headers, body: body.toString('utf8') };
}

/**
 * A test config like helpers/gateway.ts testConfig(), with extra `listen:` keys
 * (e.g. `{ maxHeaderSize: '8kb', headersTimeout: '500ms' }`).
 */
export function configWithListen(listen: Record<string, string>, upstreams: string): string {
  const extra = Object.entries({ drainTimeout: '5s', ...listen })
    .map(([key, value]) => `  ${key}: ${value}`)
    .join('\n');
  return `listen:
  proxy: 127.0.0.1:0
  admin: 127.0.0.1:0
${extra}
tenants:
  acme: { key: acme-secret-key-1 }
  globex: { key: globex-secret-key-2, weight: 2 }
upstreams:
${upstreams}`;
}

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}
