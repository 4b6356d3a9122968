/**
 * TLS interception: after "200 Connection Established" the client starts TLS for the host it
 * asked for; the gateway answers the handshake with a leaf certificate for that host signed by its
 * own CA (tls/), and once the handshake is done hands the decrypted connection to an HTTP server
 * that feeds each request into the pipeline. HTTP/1.1 only, as ALPN says: a client that offers h2
 * falls back to it. A client that speaks plain HTTP inside the tunnel (undici's ProxyAgent does for
 * http:// URLs) is served as it is.
 */
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { LeafCertificates } from '../tls/leaf.js';
import { ClientGoneError } from '../upstream/forward.js';
import { CONNECTION_ESTABLISHED } from './respond.js';

/** The connection the tunnel's requests arrive on: decrypted TLS, or the raw socket for plain HTTP. */
export type InterceptedConnection = TLSSocket | Socket;

export interface InterceptOptions {
  /** The CONNECT's host (an IPv6 literal without brackets): the certificate's name without SNI. */
  host: string;
  /** Whether an SNI name belongs to the CONNECT's upstream (then the certificate names it). */
  sameUpstream(name: string): boolean;
  leaves: LeafCertificates;
  /** How long the client has, from "200", to send its first byte and finish the handshake. */
  handshakeTimeoutMs: number;
  serve(connection: InterceptedConnection): void;
  onHandshakeFailed(err: Error): void;
}

/** A TLS record of type handshake starts with this byte (RFC 8446 5.1). */
const TLS_HANDSHAKE = 0x16;

/**
 * Resolves once the tunnel is open: its plain connection served, or TLS under way (served when the
 * handshake is done). Throws ClientGoneError when the client left before that.
 */
export async function interceptTls(socket: Socket, head: Buffer, options: InterceptOptions): Promise<void> {
  // Issued before "200" so that a failure is still an HTTP answer (nearly always a cache hit).
  const context = await options.leaves.context(options.host);
  if (socket.destroyed) throw new ClientGoneError();
  socket.write(CONNECTION_ESTABLISHED);
  if (head.length > 0) socket.unshift(head);
  // One deadline for the first byte and the whole handshake.
  let expire = () => socket.destroy();
  const deadline = setTimeout(() => expire(), options.handshakeTimeoutMs);
  const first = await firstByte(socket);
  if (first === undefined) {
    clearTimeout(deadline);
    throw new ClientGoneError();
  }
  if (first !== TLS_HANDSHAKE) {
    clearTimeout(deadline);
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
      options.leaves.context(name).then((ctx) => done(null, ctx), done);
    },
  });
  expire = () => tls.destroy(new Error('the client did not finish the TLS handshake in time'));
  const failed = (err: Error) => {
    clearTimeout(deadline);
    options.onHandshakeFailed(err);
    tls.destroy();
  };
  tls.on('error', failed);
  // Whatever ends the TLS connection ends the client's TCP connection with it.
  tls.once('close', () => socket.destroy());
  tls.once('secure', () => {
    clearTimeout(deadline);
    tls.off('error', failed);
    options.serve(tls);
  });
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
