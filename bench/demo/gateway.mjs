// The demo's gateway: the built dist/cli.js as a child process, as `npm start` runs it, so that its
// event loop is not the load generators'. Its JSON log goes to a file; the "sluice is listening"
// line tells the ports it took.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';

/**
 * Starts `node dist/cli.js start --config configPath --no-watch` with `env` (the secrets) and
 * resolves once it listens; rejects with its last stderr lines when it exits first.
 * @param {{ cli: string, configPath: string, env: Record<string, string>, logPath: string }} options
 */
export async function startGateway({ cli, configPath, env, logPath }) {
  // Its own process group: a Ctrl-C in the terminal reaches the demo, which stops the load first
  // and then the gateway, rather than the gateway draining under a load still running.
  const child = spawn(process.execPath, [cli, 'start', '--config', configPath, '--no-watch'], {
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const log = createWriteStream(logPath);
  let stderr = '';
  child.stderr.on('data', (d) => (stderr = (stderr + d).slice(-4_000)));
  const exited = once(child, 'exit').then(([code]) => code);
  const listening = new Promise((resolve, reject) => {
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
    exited.then((code) => reject(new Error(`the gateway exited (${code}) before listening${stderr ? `:\n${stderr.trim()}` : ''}`)));
  });
  // The demo's own exit, however it comes, must not leave the gateway running.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  const { proxyUrl, adminUrl } = await listening;
  return {
    proxyUrl,
    adminUrl,
    /** SIGTERM (the gateway drains), SIGKILL after `timeoutMs`; resolves with its exit code. */
    async stop(timeoutMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(kill, timeoutMs);
      const code = await exited;
      clearTimeout(timer);
      process.off('exit', kill);
      log.end();
      return code;
    },
  };
}
