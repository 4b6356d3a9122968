// The fidelity benchmark's strict upstream, a child process of run.mjs and learned.mjs (fork, with
// IPC). By default it limits nothing: it records every arrival (high-resolution epoch ms), when its
// response ended and its status, so the driver can check afterwards that the gateways kept the
// traffic inside the configured limits.
//
//   /slow/MS       200 after MS milliseconds (for concurrency rules)
//   anything else  200 at once
//
// With a limit ({cmd: 'limit', count, windowMs}, learned.mjs) it enforces a real limit of its own:
// fixed windows of windowMs aligned to its epoch clock, `count` requests each; a request over it
// gets 429 with `Retry-After: <whole seconds until the window ends, rounded up>` and is recorded
// with status 429. {cmd: 'limit'} without a count turns it off again.
//
// Arrivals are grouped by the `x-bench-tenant` request header, which the driver sends and the
// gateway forwards. IPC messages from the parent: {id, cmd: 'now' | 'reset' | 'dump' | 'limit'};
// each is answered with {id, now, ...}. Only 127.0.0.1 is listened on.
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';

const nowMs = () => performance.timeOrigin + performance.now();

let arrivals = [];
let inFlight = 0;
let inFlightMax = 0;
const timers = new Set();
/** The real limit (learned.mjs): {count, windowMs}, or undefined. */
let limit;
let window = { index: -1, used: 0 };

const server = createServer((req, res) => {
  const arrival = { at: nowMs(), end: Infinity, tenant: req.headers['x-bench-tenant'] ?? '', status: 200 };
  arrivals.push(arrival);
  inFlight++;
  if (inFlight > inFlightMax) inFlightMax = inFlight;
  res.once('close', () => {
    arrival.end = nowMs();
    inFlight--;
  });
  req.resume();
  if (limit) {
    const index = Math.floor(arrival.at / limit.windowMs);
    if (index !== window.index) window = { index, used: 0 };
    if (++window.used > limit.count) {
      arrival.status = 429;
      const retryAfter = Math.ceil(((index + 1) * limit.windowMs - arrival.at) / 1000);
      const body = JSON.stringify({ error: 'upstream_over_limit', message: `${limit.count} requests per ${limit.windowMs} ms` });
      res.writeHead(429, { 'content-type': 'application/json', 'content-length': body.length, 'retry-after': String(retryAfter) });
      res.end(body);
      return;
    }
  }
  const url = req.url ?? '/';
  const m = /^\/slow\/(\d+)/.exec(url);
  const answer = () => {
    if (res.destroyed) return;
    const body = '{"ok":true}';
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
    res.end(body);
  };
  if (!m) return answer();
  const timer = setTimeout(() => {
    timers.delete(timer);
    answer();
  }, Number(m[1]));
  timers.add(timer);
});
// The gateways' keep-alive pools must not race the server closing idle connections mid-run.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

process.on('message', (msg) => {
  const reply = { id: msg.id, now: nowMs() };
  if (msg.cmd === 'reset') {
    arrivals = [];
    inFlightMax = inFlight;
  } else if (msg.cmd === 'limit') {
    limit = msg.count > 0 && msg.windowMs > 0 ? { count: msg.count, windowMs: msg.windowMs } : undefined;
    window = { index: -1, used: 0 };
  } else if (msg.cmd === 'dump') {
    reply.arrivals = arrivals.map((a) => [a.at, Number.isFinite(a.end) ? a.end : -1, a.tenant, a.status]);
    reply.inFlightMax = inFlightMax;
  }
  process.send(reply);
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));

server.listen(0, '127.0.0.1', () => process.send({ listening: server.address().port }));
