// The benchmark's upstream: a minimal Node HTTP server answering every request with the same
// ~100-byte JSON body. The same process serves every target (direct, gateway, nginx, forwarders).
// Usage: node upstream.mjs [PORT]   (prints "listening PORT" on stdout)
import { createServer } from 'node:http';

const BODY = Buffer.from(
  JSON.stringify({ id: 4711, status: 'ok', items: [1, 2, 3], message: 'a small answer from the benchmark upstream' }),
);
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) };

const server = createServer((req, res) => {
  req.resume();
  res.writeHead(200, HEADERS);
  res.end(BODY);
});
// Idle keep-alive connections from the proxies' pools must outlive the pauses between runs;
// a server closing them first makes pools (nginx's especially) race and answer 502 now and then.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port} body=${BODY.length}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
