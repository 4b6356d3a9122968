/**
 * A TCP relay in front of a server, for tests of network failures: it can hang (pause: bytes wait
 * in the socket buffers, as with a stopped process) or lose its current connections' bytes
 * (blackhole: a half-open link). Connections opened after either go through normally.
 */
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

export interface Relay {
  port: number;
  pause(): void;
  resume(): void;
  blackhole(): void;
  close(): Promise<void>;
}

export async function relayTo(targetPort: number, host = '127.0.0.1'): Promise<Relay> {
  const pairs = new Set<{ sockets: Socket[]; lost: boolean }>();
  const server = createServer((client) => {
    const upstream = connect(targetPort, host);
    const pair = { sockets: [client, upstream], lost: false };
    pairs.add(pair);
    const pipe = (from: Socket, to: Socket) => {
      from.on('data', (data) => pair.lost || to.write(data));
      from.on('error', () => undefined);
      from.on('close', () => {
        to.destroy();
        pairs.delete(pair);
      });
    };
    pipe(client, upstream);
    pipe(upstream, client);
  }).listen(0, host);
  await once(server, 'listening');
  const sockets = () => [...pairs].flatMap((p) => p.sockets);
  return {
    port: (server.address() as { port: number }).port,
    pause: () => sockets().forEach((s) => s.pause()),
    resume: () => sockets().forEach((s) => s.resume()),
    blackhole: () => pairs.forEach((p) => void (p.lost = true)),
    close: () => {
      sockets().forEach((s) => s.destroy());
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
