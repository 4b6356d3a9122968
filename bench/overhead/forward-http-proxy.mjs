// A bare forwarder on http-proxy (node-http-proxy), with a keep-alive agent to the upstream.
// No tenants, no routing, no logging: the classic Node reverse proxy, as a reference point.
// Usage: node forward-http-proxy.mjs LISTEN_PORT UPSTREAM_URL   (prints "listening PORT")
import { Agent, createServer } from 'node:http';
import httpProxy from 'http-proxy';

const [port = '0', target = 'http://127.0.0.1:8081'] = process.argv.slice(2);
const agent = new Agent({ keepAlive: true, maxSockets: 128, keepAliveMsecs: 60_000 });
const proxy = httpProxy.createProxyServer({ target, agent });
proxy.on('error', (_err, _req, res) => {
  if (res && typeof res.writeHead === 'function' && !res.headersSent) {
    res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway\n');
  } else {
    res?.destroy?.();
  }
});

const server = createServer((req, res) => proxy.web(req, res));
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
