/**
 * Sends one request upstream and relays the answer to the client, neither body buffered.
 *
 * It uses undici's `dispatch` with a handler of our own rather than `stream()`: the handler writes
 * each chunk into the ServerResponse and pauses the upstream while the client's socket is full
 * (backpressure both ways: the request body is read from the IncomingMessage as the upstream takes
 * it). Owning the writes also keeps undici from destroying the ServerResponse itself, so a failure
 * mid-body reaches us as what it is (a body timeout, a reset) rather than as a premature close.
 *
 * The learn stage listens to the response (ResponseListener): it sees the status and headers
 * before the client does and may add headers; and it may read a small body. A body it reads is
 * teed (collected up to its limit while streamed on) and handed over at the end; only one whose
 * Content-Length fits the limit is held back until then, so that headers learned from it (and only
 * such small bodies) still reach the client.
 *
 * The retry stage speaks first (`intercept`): an answer it takes for another attempt is never
 * written to the client (the learn stage still hears it, body included), and forward() resolves to
 * it. Its body is read to the end (up to DROP_AT_MOST) and kept with the head the client would have
 * had, so that the answer can still be given to the client if the retry is refused before it goes.
 * Once the head went out, the answer is the client's whatever follows.
 */
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { upstreamFailure } from './failures.js';
import { clientResponseHeaders } from './headers.js';

export interface UpstreamRequest {
  upstream: string;
  dispatcher: Dispatcher;
  method: string;
  path: string;
  headers: string[];
  /** A stream, or a body kept in memory to be sent again by a retry. */
  body: Readable | Buffer | null;
  headersTimeoutMs: number;
  bodyTimeoutMs: number;
  /** Headers of the gateway's own added to the response (RateLimit); they replace the upstream's of that name. */
  responseHeaders: Record<string, string>;
  /** The learn stage: told the upstream's answer as soon as it arrives. */
  listener?: ResponseListener | undefined;
  /**
   * Asked first, before anything of the answer goes to the client: true takes the answer away from
   * the client (a retry follows); its body is read and dropped, and forward() resolves to it.
   */
  intercept?: ((status: number, headers: Record<string, string | string[]>) => boolean) | undefined;
}

/** An answer intercepted for a retry: the client got none of it. */
export interface Intercepted {
  status: number;
  /** The whole answer as the client would have had it; undefined when its body was too long or broke off. */
  answer: KeptAnswer | undefined;
}

/** An upstream answer held whole in memory, to be written to the client later (or never). */
export interface KeptAnswer {
  status: number;
  headers: OutgoingHttpHeaders;
  body: Buffer;
}

/** What the learn stage wants of a response, once it has seen its status and headers. */
export interface ResponseInterest {
  /** Headers to add to the client's response (the gateway's own responseHeaders still win). */
  headers?: Record<string, string> | undefined;
  /** Read the body, up to this many bytes (a longer one is not read); undefined: not at all. */
  readBodyUpTo?: number | undefined;
}

export interface ResponseListener {
  started(status: number, headers: Record<string, string | string[] | undefined>): ResponseInterest;
  /** The whole body, when it was read and fit; returns headers to add when it was held back (see above). */
  ended(body: Buffer): Record<string, string> | undefined;
}

/** The client went away: the upstream request is abandoned and nobody is left to answer. */
export class ClientGoneError extends Error {
  constructor() {
    super('the client closed the connection');
    this.name = 'ClientGoneError';
  }
}

/**
 * Resolves when the whole response has been handed to the client (undefined), or when an
 * intercepted answer is done with. Rejects with a GatewayError for upstream failures, or a
 * ClientGoneError when the client left first.
 */
export function forward(request: UpstreamRequest, res: ServerResponse): Promise<Intercepted | undefined> {
  return new Promise<Intercepted | undefined>((resolve, reject) => {
    const relay = new ResponseRelay(res, request, resolve, reject);
    res.once('close', relay.onClientClose);
    request.dispatcher.dispatch(
      {
        method: request.method as Dispatcher.HttpMethod,
        path: request.path,
        headers: request.headers,
        body: request.body,
        headersTimeout: request.headersTimeoutMs,
        bodyTimeout: request.bodyTimeoutMs,
      },
      relay,
    );
  });
}

class ResponseRelay implements Dispatcher.DispatchHandler {
  private controller: Dispatcher.DispatchController | undefined;
  private settled = false;
  /** The body the listener reads, while it fits (undefined: not read, or too long). */
  private body: Buffer[] | undefined;
  private bodyBytes = 0;
  private bodyLimit = 0;
  /** The head held back until the body's end (a small body whose headers may still change). */
  private held: { statusCode: number; headers: OutgoingHttpHeaders } | undefined;
  /** An answer taken away from the client for a retry: its head for the client, and its body so far. */
  private intercepted: { status: number; head: OutgoingHttpHeaders; readBodyUpTo: number | undefined; body: Buffer[] } | undefined;
  private dropped = 0;

  constructor(
    private readonly res: ServerResponse,
    private readonly request: UpstreamRequest,
    private readonly resolve: (intercepted: Intercepted | undefined) => void,
    private readonly reject: (err: Error) => void,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
    if (this.res.destroyed) controller.abort(new ClientGoneError());
  }

  onResponseStart(_controller: Dispatcher.DispatchController, statusCode: number, headers: Record<string, string | string[]>): void {
    if (statusCode < 200) return; // 1xx informational: Node speaks for itself (100 Continue)
    const intercepted = this.request.intercept?.(statusCode, headers) === true;
    const interest = this.request.listener?.started(statusCode, headers); // the learn stage hears it all the same
    const head = { ...clientResponseHeaders(headers), ...interest?.headers, ...this.request.responseHeaders };
    if (intercepted) {
      this.intercepted = { status: statusCode, head, readBodyUpTo: interest?.readBodyUpTo, body: [] };
      return;
    }
    const limit = interest?.readBodyUpTo;
    if (limit !== undefined) {
      [this.body, this.bodyLimit] = [[], limit];
      const length = Number(headers['content-length']);
      if (Number.isInteger(length) && length <= limit) return void (this.held = { statusCode, headers: head });
    }
    this.res.writeHead(statusCode, head);
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.intercepted) return this.drop(controller, chunk);
    if (this.body) this.collect(chunk);
    if (this.held) return; // at most bodyLimit bytes, sent at the end
    if (!this.res.write(chunk)) {
      controller.pause();
      this.res.once('drain', () => controller.resume());
    }
  }

  onResponseEnd(): void {
    if (this.intercepted) return this.settle(undefined, this.kept(this.intercepted));
    const added = this.body ? this.request.listener?.ended(Buffer.concat(this.body)) : undefined;
    if (this.held) {
      this.res.writeHead(this.held.statusCode, { ...this.held.headers, ...added, ...this.request.responseHeaders });
      this.res.end(Buffer.concat(this.body!));
    } else {
      this.res.end();
    }
    this.settle();
  }

  /** Keeps a chunk for the listener; a body past the limit is not read, and a held head goes out with what came. */
  private collect(chunk: Buffer): void {
    this.bodyBytes += chunk.length;
    if (this.bodyBytes <= this.bodyLimit) return void this.body!.push(chunk);
    const held = this.held;
    const early = this.body!;
    this.body = this.held = undefined;
    if (held) {
      this.res.writeHead(held.statusCode, held.headers);
      for (const piece of early) this.res.write(piece);
    }
  }

  /**
   * An intercepted answer's body is read to its end so that the connection can carry the retry, and
   * kept; a long one is not worth it, and the connection is closed instead.
   */
  private drop(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    this.dropped += chunk.length;
    if (this.dropped > DROP_AT_MOST) return controller.abort(new InterceptedDropped());
    this.intercepted!.body.push(chunk);
  }

  /** The intercepted answer, whole; the learn stage reads its body as it would a relayed one's. */
  private kept(intercepted: NonNullable<ResponseRelay['intercepted']>): KeptAnswer {
    const body = Buffer.concat(intercepted.body);
    const limit = intercepted.readBodyUpTo;
    const added = limit !== undefined && body.length <= limit ? this.request.listener?.ended(body) : undefined;
    return { status: intercepted.status, headers: { ...intercepted.head, ...added, ...this.request.responseHeaders }, body };
  }

  onResponseError(_controller: Dispatcher.DispatchController, err: Error): void {
    if (err instanceof ClientGoneError) return this.settle(err);
    // An intercepted answer that broke off (or was too long to keep) is retried all the same: its head said so.
    this.settle(this.intercepted ? undefined : upstreamFailure(err, this.request.upstream));
  }

  /** Bound: the ServerResponse's 'close' listener. */
  readonly onClientClose = (): void => {
    if (this.res.writableFinished || this.settled) return;
    if (this.controller) this.controller.abort(new ClientGoneError());
    else this.settle(new ClientGoneError()); // still queued for a connection: nothing to abort yet
  };

  private settle(err?: Error, answer?: KeptAnswer): void {
    if (this.settled) return;
    this.settled = true;
    this.res.off('close', this.onClientClose);
    if (err) this.reject(err);
    else this.resolve(this.intercepted && { status: this.intercepted.status, answer });
  }
}

/** The most of an intercepted answer's body read (and kept) to keep its connection. */
const DROP_AT_MOST = 64 * 1024;

/** Why an intercepted answer's connection was closed: its body was too long to drop. */
class InterceptedDropped extends Error {
  constructor() {
    super('an intercepted answer too long to read to its end');
    this.name = 'InterceptedDropped';
  }
}
