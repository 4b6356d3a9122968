// Starting the benchmarks' servers: pinned to a core with taskset when the machine has two or more
// (and BENCH_NO_PIN is not 1), stderr kept in a file of the scratch directory for error messages,
// and waiting for a line a child prints once it is up. Shared by bench/overhead/bench.mjs and https.mjs.
import { execFileSync, spawn } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';

/** Whether a command is on the PATH. */
export function have(cmd) {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Whether servers and drivers are pinned to cores (two or more cores, taskset, BENCH_NO_PIN not 1). */
export const PIN = cpus().length >= 2 && have('taskset') && process.env.BENCH_NO_PIN !== '1';

/** [command, args] that run `cmd` on core `cpu` (unpinned on one core or without taskset). */
export function pinned(cpu, cmd, args) {
  return PIN ? ['taskset', ['-c', cpu, cmd, ...args]] : [cmd, args];
}

/**
 * A start(name, cpu, cmd, args, { stdout, cwd }) for one driver: `track` is trackChildren's
 * (bench/lib/children.mjs), `work` its scratch directory; stdout is piped unless 'null'.
 */
export function starter({ work, track }) {
  return function start(name, cpu, cmd, args, { stdout = 'pipe', cwd = work } = {}) {
    const [c, a] = pinned(cpu, cmd, args);
    const errFile = join(work, `${name}.stderr`);
    const out = stdout === 'null' ? openSync('/dev/null', 'w') : 'pipe';
    const child = track(
      spawn(c, a, { cwd, stdio: ['ignore', out, openSync(errFile, 'w')], env: { ...process.env, NODE_ENV: 'production' } }),
      name,
    );
    child.errFile = errFile;
    return child;
  };
}

/** The last lines a started child wrote to stderr, for an error message ('' when none). */
export function stderrOf(child) {
  try {
    const text = readFileSync(child.errFile, 'utf8').trim();
    return text ? `:\n${text.split('\n').slice(-15).join('\n')}` : '';
  } catch {
    return '';
  }
}

/** Resolves with the match of `pattern` in the child's stdout; rejects when it exits or the time runs out. */
export function firstLine(child, pattern, timeoutMs = 10_000) {
  return new Promise((resolvePromise, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${child.benchName}: no "${pattern}" within ${timeoutMs} ms${stderrOf(child)}`)), timeoutMs);
    child.stdout.on('data', (d) => {
      buf += d;
      const m = pattern.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${child.benchName} exited (${code})${stderrOf(child)}`));
    });
  });
}
