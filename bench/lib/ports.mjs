import { once } from 'node:events';
import { createServer } from 'node:net';

/**
 * n TCP ports on 127.0.0.1 that were free a moment ago: the kernel picks them (listen on 0), then
 * they are released for the gateway or proxy about to be configured with them. All n are held at
 * once so that they differ.
 */
export async function freePorts(n) {
  const servers = [];
  for (let i = 0; i < n; i++) {
    const s = createServer();
    s.listen(0, '127.0.0.1');
    await once(s, 'listening');
    servers.push(s);
  }
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}
