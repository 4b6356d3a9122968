/**
 * A real HTTP server on 127.0.0.1 standing in for an upstream API. It records what arrived and
 * answers according to the path:
 *   /echo...          JSON of the method, path and headers it received
 *   /bytes/N          N bytes, streamed in 64 KiB chunks
 *   /upload           reads the body and answers its length and SHA-256
 *   /slow/MS          answers after MS milliseconds
 *   /hang             never answers
 *   /status/CODE      answers that status
 * anything else      the same as /echo
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface Arrival {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

export interface FakeUpstream {
  url: string;
  /** Body bytes written by /bytes responses so far (to see backpressure reach the upstream). */
  bytesWritten: () => number;
  port: number;
  arrivals: Arrival[];
  server: Server;
  close(): Promise<void>;
}

export interface EchoBody {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
}

export async function startUpstream(): Promise<FakeUpstream> {
  const arrivals: Arrival[] = [];
  let bytesWritten = 0;
  const server = createServer((req, res) => {
    const arrival = { method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders };
    arrivals.push(arrival);
    const path = (req.url ?? '/').split('?')[0]!;
    const [, first, arg] = path.split('/');
    switch (first) {
      case 'bytes': {
        let left = Number(arg);
        const chunk = Buffer.alloc(64 * 1024, 0x61);
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        const pump = () => {
          while (left > 0) {
            const piece = left >= chunk.length ? chunk : chunk.subarray(0, left);
            left -= piece.length;
            bytesWritten += piece.length;
            if (!res.write(piece)) return void res.once('drain', pump);
          }
          res.end();
        };
        pump();
        return;
      }
      case 'upload': {
        const hash = createHash('sha256');
        let length = 0;
        req.on('data', (c: Buffer) => {
          length += c.length;
          hash.update(c);
        });
        req.on('end', () => {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ length, sha256: hash.digest('hex') }));
        });
        return;
      }
      case 'slow':
        setTimeout(() => res.end(JSON.stringify({ slept: Number(arg) })), Number(arg));
        return;
      case 'hang':
        return;
      case 'status':
        res.writeHead(Number(arg), { 'content-type': 'application/json' });
        res.end(JSON.stringify({ status: Number(arg) }));
        return;
      default: {
        req.resume();
        const body: EchoBody = arrival;
        res.writeHead(200, {
          'content-type': 'application/json',
          // Hop-by-hop headers the gateway must not pass on to its client:
          connection: 'keep-alive, x-upstream-hop',
          'x-upstream-hop': 'secret-hop',
          'keep-alive': 'timeout=77',
          'x-upstream-end': 'kept',
        });
        res.end(JSON.stringify(body));
      }
    }
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    bytesWritten: () => bytesWritten,
    port,
    arrivals,
    server,
    async close() {
      server.closeAllConnections();
      server.close();
    },
  };
}
