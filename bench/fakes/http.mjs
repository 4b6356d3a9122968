// The plumbing the fake APIs (twilio.mjs, baselinker.mjs, zoho.mjs) share: listening on a free
// 127.0.0.1 port, closing without waiting for keep-alive clients, reading a small body, answering JSON.
import { once } from 'node:events';

/**
 * Listens on an ephemeral loopback port; resolves with `http://127.0.0.1:PORT`.
 * @param {import('node:http').Server} server
 * @returns {Promise<string>}
 */
export async function listen(server) {
  // A gateway's keep-alive pool must not race the server closing idle connections mid-run.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 125_000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${/** @type {import('node:net').AddressInfo} */ (server.address()).port}`;
}

/**
 * Closes the server and every connection it holds (a gateway's idle keep-alive sockets included).
 * @param {import('node:http').Server} server
 * @returns {Promise<void>}
 */
export async function close(server) {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(() => resolve(undefined)));
}

/**
 * The request body as text (the fakes' bodies are small forms and JSON).
 * @param {import('node:http').IncomingMessage} req
 * @returns {Promise<string>}
 */
export async function readBody(req) {
  let body = '';
  for await (const chunk of req) body += chunk;
  return body;
}

/**
 * Answers JSON with a Content-Length, so that a gateway reading bodies for limit signals
 * (feedback.body) sees the whole answer before passing it on.
 * @param {import('node:http').ServerResponse} res
 * @param {number} status
 * @param {unknown} body
 * @param {Record<string, string>} [headers]
 */
export function sendJson(res, status, body, headers = {}) {
  if (res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
