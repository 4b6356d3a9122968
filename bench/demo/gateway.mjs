// The demo's gateway: the built dist/cli.js as a child process, as `npm start` runs it, so that its
// event loop is not the load generators'. Its JSON log goes to a file; the "sluice is listening"
// line tells the ports it took.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';

/**
 * How long the gateway may take to say it listens. It normally takes well under a second; one that
 * neither listens nor exits (a hung start) would otherwise leave the demo waiting for ever.
 */
export const START_TIMEOUT_MS = 15_000;

/**
 * Starts `node dist/cli.js start --config configPath --no-watch` with `env` (the secrets) and
 * resolves once it listens; rejects with its last stderr lines when it exits first, and kills it
 * and rejects when it has not said it listens within `startTimeoutMs` or when `signal` aborts.
 * @param {{ cli: string, configPath: string, env: Record<string, string>, logPath: string, startTimeoutMs?: number, signal?: AbortSignal }} options
 */
export async function startGateway({ cli, configPath, env, logPath, startTimeoutMs = START_TIMEOUT_MS, signal }) {
  // Its own process group: a Ctrl-C in the terminal reaches the demo, which stops the load first
  // and then the gateway, rather than the gateway draining under a load still running. The flip
  // side: no signal sent to the demo's group reaches the gateway, so the demo must stop it itself
  // however it ends (run.mjs handles SIGINT, SIGTERM and SIGHUP; the exit handler below the rest).
  const child = spawn(process.execPath, [cli, 'start', '--config', configPath, '--no-watch'], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const log = createWriteStream(logPath);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4_000)));
  const exited = once(child, 'exit').then(([code, signalName]) => code ?? signalName);
  // The demo's own exit, however it comes, must not leave the gateway running.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  const lastWords = () => (stderr ? `:\n${stderr.trim()}` : '');
  let giveUp;
  const listening = new Promise((resolve, reject) => {
    giveUp = reject;
    let buffered = '';
    child.stdout.on('data', (d) => {
      log.write(d);
      buffered += d;
      let nl;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (!line.includes('sluice is listening')) continue;
        const { proxy, admin } = JSON.parse(line);
        resolve({ proxyUrl: `http://127.0.0.1:${proxy.port}`, adminUrl: `http://127.0.0.1:${admin.port}` });
      }
    });
    exited.then((code) => reject(new Error(`the gateway exited (${code}) before listening${lastWords()}`)));
  });
  const startTimer = setTimeout(() => {
    kill();
    giveUp(new Error(`the gateway did not say it listens within ${startTimeoutMs / 1000} s, so it was killed (its log: ${logPath})${lastWords()}`));
  }, startTimeoutMs);
  const onAbort = () => {
    kill();
    giveUp(new Error('stopped before the gateway listened', { cause: signal?.reason }));
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const { proxyUrl, adminUrl } = await listening;
    return {
      proxyUrl,
      adminUrl,
      /** SIGTERM (the gateway drains), SIGKILL after `timeoutMs`; resolves with its exit code. */
      async stop(timeoutMs = 10_000) {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const escalate = setTimeout(kill, timeoutMs);
        const code = await exited;
        clearTimeout(escalate);
        process.off('exit', kill);
        log.end();
        return code;
      },
    };
  } catch (error) {
    // Killed (or exited) before listening: wait for its end, so that no caller leaves it behind.
    await exited;
    process.off('exit', kill);
    log.end();
    throw error;
  } finally {
    // Neither the timer nor the signal may act on a gateway that is serving.
    clearTimeout(startTimer);
    signal?.removeEventListener('abort', onAbort);
  }
}
