// The fidelity drivers' fake servers (upstream.mjs, token-endpoint.mjs) run as child processes, so
// that their arrival clocks are not delayed by the load. This starts one, waits for the
// `{ listening }` message it sends, gives an rpc(cmd, more) over IPC, and measures its clock against
// ours: both are epoch ms, but a few ms matter to the run windows, so the offset is taken from the
// sample with the shortest round trip.
import { fork } from 'node:child_process';
import { nowMs } from './load.mjs';

/** Resolves with { child, listening, rpc, offset } (offset: its clock minus ours, ms). */
export async function startChildServer(script, args, { track, name }) {
  const pending = new Map();
  let seq = 0;
  const child = track(fork(script, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }), name);
  const listening = await new Promise((resolvePromise, reject) => {
    child.once('exit', (code) => reject(new Error(`${name} exited (${code})`)));
    child.on('message', (msg) => {
      if (msg.listening) return resolvePromise(msg.listening);
      const answer = pending.get(msg.id);
      if (answer) {
        pending.delete(msg.id);
        answer(msg);
      }
    });
  });
  const rpc = (cmd, more = {}) =>
    new Promise((resolvePromise) => {
      const id = ++seq;
      pending.set(id, resolvePromise);
      child.send({ id, cmd, ...more });
    });
  let best = { rtt: Infinity, offset: 0 };
  for (let i = 0; i < 20; i++) {
    const t0 = nowMs();
    const { now } = await rpc('now');
    const t1 = nowMs();
    if (t1 - t0 < best.rtt) best = { rtt: t1 - t0, offset: now - (t0 + t1) / 2 };
  }
  return { child, listening, rpc, offset: best.offset };
}
