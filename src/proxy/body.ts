/**
 * The request body as the upstream will read it, within the size limit. A declared
 * Content-Length over the limit is refused before anything is sent; a chunked body is counted
 * as it streams and cut at the limit, which fails the upstream request with 413.
 *
 * The body always reaches undici through a stream of our own, never as the IncomingMessage
 * itself: undici destroys a body it stops reading (an upstream that answers early, or resets),
 * and destroying the IncomingMessage would reset the client's connection instead of letting it
 * read the answer (or a 502).
 */
import type { IncomingMessage } from 'node:http';
import { Transform, type Readable } from 'node:stream';
import { GatewayError } from '../errors.js';

export function requestBody(req: IncomingMessage, maxBytes: number, upstream: string): Readable | null {
  const declared = req.headers['content-length'];
  if (declared !== undefined) {
    const length = Number(declared);
    if (length > maxBytes) throw tooLarge(maxBytes, upstream);
    if (length === 0) return null;
  } else if (req.headers['transfer-encoding'] === undefined) {
    return null;
  }
  let seen = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > maxBytes) done(tooLarge(maxBytes, upstream));
      else done(null, chunk);
    },
  });
  req.on('error', (err) => counter.destroy(err));
  return req.pipe(counter);
}

function tooLarge(maxBytes: number, upstream: string): GatewayError {
  return new GatewayError('payload_too_large', `the request body is larger than ${maxBytes} bytes`, {
    upstream,
    headers: { connection: 'close' },
  });
}
