// The HTTPS_PROXY benchmark's upstream (https.mjs): upstream.mjs over TLS. A minimal node:https
// server answering every request with the same 96-byte JSON body as upstream.mjs.
// Usage: node upstream-https.mjs PORT CERT.pem KEY.pem   (prints "listening PORT body=BYTES" on stdout)
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

// Byte for byte the body of upstream.mjs.
const BODY = Buffer.from(
  JSON.stringify({ id: 4711, status: 'ok', items: [1, 2, 3], message: 'a small answer from the benchmark upstream' }),
);
const HEADERS = { 'content-type': 'application/json', 'content-length': String(BODY.length) };

const [port = '0', certPath, keyPath] = process.argv.slice(2);
if (!certPath || !keyPath) {
  console.error('usage: node upstream-https.mjs PORT CERT.pem KEY.pem');
  process.exit(2);
}
const server = createServer({ cert: readFileSync(certPath), key: readFileSync(keyPath) }, (req, res) => {
  req.resume();
  res.writeHead(200, HEADERS);
  res.end(BODY);
});
// As in upstream.mjs: idle keep-alive connections from the gateway's pool outlive the pauses between runs.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.listen(Number(port), '127.0.0.1', () => {
  console.log(`listening ${server.address().port} body=${BODY.length}`);
});
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
