// Waiting for a gateway child to be ready: its /readyz answers 200, or it exited, or 15 s passed.
import { request as httpRequest } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';

function httpGet(url) {
  return new Promise((resolvePromise, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 1_000 }, (res) => {
      res.resume();
      res.on('end', () => resolvePromise(res.statusCode));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** Throws, with `why()` (the child's last stderr lines) appended, when the child exits or stays unready. */
export async function waitReady(child, name, adminPort, why, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited (${child.exitCode})${why()}`);
    try {
      if ((await httpGet(`http://127.0.0.1:${adminPort}/readyz`)) === 200) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`${name} not ready within ${timeoutMs / 1000} s${why()}`);
    await sleep(50);
  }
}
