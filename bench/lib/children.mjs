// Child-process bookkeeping shared by the bench drivers (bench/overhead/bench.mjs,
// bench/fidelity/run.mjs): every child is remembered and ended at exit, and a scratch directory
// under the system temp dir is removed then. The run.sh scripts' trap on the driver's process group
// (bench/lib/group.sh) is the second net, for whatever this misses (a SIGKILLed driver, grandchildren).
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Sets up the tracking for one driver process; call it once, at start-up.
 *
 *   label       'bench' or 'fidelity': the scratch directory is $TMPDIR/sluice-LABEL-XXXXXX, and a
 *               signal is reported as "LABEL: SIGINT, stopping" on stderr
 *   keepTmpVar  the environment variable that, set to 1, keeps the scratch directory (configs,
 *               logs) after the run; read when the driver exits
 *   onSignal    optional async step after the children are stopped on a signal and before exit
 *               130 (fidelity deletes its Redis keys there); its failure is ignored
 *
 * Returns the scratch directory `work`, track(), stopChild(), stopAll(), and stopping(): true once
 * a signal is being handled (main's catch then stays quiet: the error it sees comes from the child
 * the signal killed).
 */
export function trackChildren({ label, keepTmpVar, onSignal }) {
  const children = new Set();
  const work = mkdtempSync(join(tmpdir(), `sluice-${label}-`));
  let stopping = false;

  /** Remembers a child until it exits; `name` goes into the drivers' error messages. */
  function track(child, name) {
    child.benchName = name;
    children.add(child);
    child.on('exit', () => children.delete(child));
    return child;
  }

  /** SIGTERM, then SIGKILL after timeoutMs; resolves once the child has exited. */
  async function stopChild(child, timeoutMs = 5_000) {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(timer);
  }

  async function stopAll() {
    await Promise.all([...children].map((c) => stopChild(c)));
  }

  // Last resort, synchronous: whatever is still running is killed outright.
  process.on('exit', () => {
    for (const c of children) {
      try {
        c.kill('SIGKILL');
      } catch {}
    }
    if (process.env[keepTmpVar] !== '1') rmSync(work, { recursive: true, force: true });
  });
  // Without these handlers a signal would end the driver at once, and only the 'exit' handler's
  // SIGKILLs would reach the children: stop them politely first (gateways drain, nginx exits).
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      if (stopping) return;
      stopping = true;
      console.error(`\n${label}: ${sig}, stopping`);
      stopAll()
        .then(() => onSignal?.())
        .catch(() => undefined)
        .finally(() => process.exit(130));
    });
  }

  return { work, track, stopChild, stopAll, stopping: () => stopping };
}
