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
import { Readable, Transform } from 'node:stream';
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

/**
 * A body kept to be sent again (a retry): read whole into memory when it ends within `maxBytes`;
 * a longer one goes on streaming (what was read first, then the rest) and `kept` is false. Bodies
 * that may be kept are small, so reading one whole before sending it costs little.
 */
export async function keepBody(body: Readable, maxBytes: number): Promise<{ body: Buffer | Readable; kept: boolean }> {
  const chunks: Buffer[] = [];
  let length = 0;
  const source = body[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  for (let next = await source.next(); !next.done; next = await source.next()) {
    chunks.push(next.value);
    length += next.value.length;
    if (length > maxBytes) return { body: Readable.from(replayThenRest(chunks, source), { objectMode: false }), kept: false };
  }
  return { body: Buffer.concat(chunks, length), kept: true };
}

async function* replayThenRest(read: Buffer[], rest: AsyncIterator<Buffer>): AsyncGenerator<Buffer> {
  try {
    yield* read;
    for (let next = await rest.next(); !next.done; next = await rest.next()) yield next.value;
  } finally {
    await rest.return?.(); // undici stopped reading (an early answer): the counted stream is done with too
  }
}
