// The fidelity benchmark's strict upstream, a child process of run.mjs (fork, with IPC). It limits
// nothing: it records every arrival (high-resolution epoch ms) and when its response ended, so the
// driver can check afterwards that the gateways kept the traffic inside the configured limits.
//
//   /slow/MS       200 after MS milliseconds (for concurrency rules)
//   anything else  200 at once
//
// Arrivals are grouped by the `x-bench-tenant` request header, which the driver sends and the
// gateway forwards. IPC messages from the parent: {id, cmd: 'now' | 'reset' | 'dump'}; each is
// answered with {id, now, ...}. Only 127.0.0.1 is listened on.
import { createServer } from 'node:http';
import { performance } from 'node:perf_hooks';

const nowMs = () => performance.timeOrigin + performance.now();

let arrivals = [];
let inFlight = 0;
let inFlightMax = 0;
const timers = new Set();

const server = createServer((req, res) => {
  const arrival = { at: nowMs(), end: Infinity, tenant: req.headers['x-bench-tenant'] ?? '' };
  arrivals.push(arrival);
  inFlight++;
  if (inFlight > inFlightMax) inFlightMax = inFlight;
  res.once('close', () => {
    arrival.end = nowMs();
    inFlight--;
  });
  req.resume();
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
  } else if (msg.cmd === 'dump') {
    reply.arrivals = arrivals.map((a) => [a.at, Number.isFinite(a.end) ? a.end : -1, a.tenant]);
    reply.inFlightMax = inFlightMax;
  }
  process.send(reply);
});
process.on('disconnect', () => process.exit(0));
process.on('SIGTERM', () => process.exit(0));

server.listen(0, '127.0.0.1', () => process.send({ listening: server.address().port }));
