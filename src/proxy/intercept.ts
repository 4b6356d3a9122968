/**
 * TLS interception: after "200 Connection Established" the client starts TLS for the host it
 * asked for; the gateway answers the handshake with a leaf certificate for that host signed by its
 * own CA (tls/), and once the handshake is done hands the decrypted connection to an HTTP server
 * that feeds each request into the pipeline. HTTP/1.1 only, as ALPN says: a client that offers h2
 * falls back to it. A client that speaks plain HTTP inside the tunnel (undici's ProxyAgent does for
 * http:// URLs) is served as it is.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { LeafCertificates } from '../tls/leaf.js';

/** The connection the tunnel's requests arrive on: decrypted TLS, or the raw socket for plain HTTP. */
export type InterceptedConnection = TLSSocket | Socket;

export interface InterceptOptions {
  /** The CONNECT's host (an IPv6 literal without brackets): the certificate's name without SNI. */
  host: string;
  /** Whether an SNI name belongs to the CONNECT's upstream (then the certificate names it). */
  sameUpstream(name: string): boolean;
  leaves: LeafCertificates;
  /** How long the client has to send its first byte and to finish the handshake. */
  handshakeTimeoutMs: number;
  serve(connection: InterceptedConnection): void;
  onHandshakeFailed(err: Error): void;
}

const ESTABLISHED = 'HTTP/1.1 200 Connection Established\r\n\r\n';
/** A TLS record of type handshake starts with this byte (RFC 8446 5.1). */
const TLS_HANDSHAKE = 0x16;

export async function interceptTls(socket: Socket, head: Buffer, options: InterceptOptions): Promise<void> {
  // Issued before "200" so that a failure is still an HTTP answer (nearly always a cache hit).
  const context = options.leaves.cached(options.host) ?? (await options.leaves.context(options.host));
  if (socket.destroyed) return;
  socket.write(ESTABLISHED);
  if (head.length > 0) socket.unshift(head);
  socket.setTimeout(options.handshakeTimeoutMs, () => socket.destroy());
  const first = await firstByte(socket);
  if (first === undefined) return;
  socket.setTimeout(0);
  if (first !== TLS_HANDSHAKE) {
    options.serve(socket);
    return;
  }
  const tls = new TLSSocket(socket, {
    isServer: true,
    secureContext: context,
    ALPNProtocols: ['http/1.1'],
    SNICallback: (servername, done) => {
      const name = servername.toLowerCase();
      if (name === options.host || !options.sameUpstream(name)) return done(null, context);
      leafFor(options.leaves, name).then((ctx) => done(null, ctx), done);
    },
  });
  const handshakeTimer = setTimeout(() => tls.destroy(new Error('the client did not finish the TLS handshake in time')), options.handshakeTimeoutMs);
  const failed = (err: Error) => {
    clearTimeout(handshakeTimer);
    options.onHandshakeFailed(err);
    tls.destroy();
  };
  tls.once('error', failed);
  // Whatever ends the TLS connection ends the client's TCP connection with it.
  tls.once('close', () => socket.destroy());
  tls.once('secure', () => {
    clearTimeout(handshakeTimer);
    tls.off('error', failed);
    options.serve(tls);
  });
}

function leafFor(leaves: LeafCertificates, name: string): Promise<SecureContext> {
  const cached = leaves.cached(name);
  return cached ? Promise.resolve(cached) : leaves.context(name);
}

/** The first byte the client sends in the tunnel, left unread; undefined if it closes first. */
function firstByte(socket: Socket): Promise<number | undefined> {
  return new Promise((resolve) => {
    const onReadable = () => {
      const chunk = socket.read(1) as Buffer | null;
      if (chunk === null) return;
      socket.unshift(chunk);
      done(chunk[0]);
    };
    const onClose = () => done(undefined);
    const done = (value: number | undefined) => {
      socket.off('readable', onReadable);
      socket.off('close', onClose);
      resolve(value);
    };
    socket.on('readable', onReadable);
    socket.once('close', onClose);
    onReadable();
  });
}
