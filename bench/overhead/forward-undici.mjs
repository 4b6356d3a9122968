// A bare forwarder on undici (the library the gateway forwards with): one keep-alive Pool to the
// upstream, Pool.stream() writing the answer straight into the ServerResponse. No tenants, no
// routing, no logging: the floor any Node gateway built on undici stands on.
// Usage: node forward-undici.mjs LISTEN_PORT UPSTREAM_URL   (prints "listening PORT")
import { createServer } from 'node:http';
import { Pool } from 'undici';

const [port = '0', target = 'http://127.0.0.1:8081'] = process.argv.slice(2);
const pool = new Pool(target, { connections: 128, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'expect']);

const server = createServer((req, res) => {
  const headers = [];
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if (!HOP.has(raw[i].toLowerCase())) headers.push(raw[i], raw[i + 1]);
  }
  const hasBody = req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined;
  pool.stream(
    { method: req.method, path: req.url, headers, body: hasBody ? req : null },
    ({ statusCode, headers: upstreamHeaders }) => {
      delete upstreamHeaders.connection;
      delete upstreamHeaders['keep-alive'];
      delete upstreamHeaders['transfer-encoding'];
      res.writeHead(statusCode, upstreamHeaders);
      return res;
    },
    (err) => {
      if (!err) return;
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end('bad gateway\n');
      else res.destroy();
    },
  );
});
server.keepAliveTimeout = 60_000;
server.listen(Number(port), '127.0.0.1', () => console.log(`listening ${server.address().port}`));
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
