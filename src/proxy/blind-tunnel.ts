/**
 * A blind tunnel (`intercept: false`): a TCP connection to the upstream's target, spliced to the
 * client's. The gateway sees no request in it, so only connection limits apply (tunnels.ts). The
 * target's address passes the same egress check as every upstream connection, and a tunnel idle
 * both ways for listen.idleTimeout is closed.
 */
import { connect, type Socket } from 'node:net';
import { GatewayError } from '../errors.js';
import type { UpstreamProfile } from '../policy.js';
import { guardedLookup } from '../upstream/egress.js';
import { connectFailure } from '../upstream/failures.js';
import { ClientGoneError } from '../upstream/forward.js';
import { CONNECTION_ESTABLISHED } from './respond.js';

/**
 * Resolves once the tunnel is established; rejects with a GatewayError when the target cannot be
 * reached, or a ClientGoneError when the client left while the gateway was connecting.
 */
export async function spliceTunnel(client: Socket, head: Buffer, upstream: UpstreamProfile, idleTimeoutMs: number): Promise<void> {
  const target = await connectTo(upstream, client);
  client.write(CONNECTION_ESTABLISHED);
  if (head.length > 0) target.write(head);
  const close = () => {
    client.destroy();
    target.destroy();
  };
  for (const socket of [client, target]) {
    socket.setTimeout(idleTimeoutMs, close);
    socket.once('error', close);
    socket.once('close', close);
  }
  client.pipe(target);
  target.pipe(client);
}

function connectTo(upstream: UpstreamProfile, client: Socket): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const { host, port } = upstream.tunnelTo;
    const socket = connect({ host, port, lookup: guardedLookup(upstream.allowPrivate) });
    const fail = (err: Error) => {
      settle();
      socket.destroy();
      reject(err instanceof GatewayError || err instanceof ClientGoneError ? err : connectFailure(err, upstream.name));
    };
    const timer = setTimeout(
      () => fail(new GatewayError('upstream_timeout', 'connecting to the upstream timed out', { upstream: upstream.name })),
      upstream.connectTimeoutMs,
    );
    // The client gave up while we were connecting: nobody is left for the tunnel.
    const clientLeft = () => fail(new ClientGoneError());
    const settle = () => {
      clearTimeout(timer);
      socket.off('error', fail);
      client.off('close', clientLeft);
    };
    socket.once('error', fail);
    client.once('close', clientLeft);
    socket.once('connect', () => {
      settle();
      resolve(socket);
    });
  });
}
