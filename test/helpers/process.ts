/** Runs the built gateway (dist/cli.js) as a child process, as `npm start` would. */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeConfig } from './gateway.js';

export interface GatewayProcess {
  child: ChildProcess;
  proxyUrl: string;
  port: number;
  adminUrl: string;
  configPath: string;
  /** Parsed stdout log lines so far. */
  logs: Record<string, unknown>[];
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** Peak and current resident memory in bytes, from /proc. */
  memory(): { rssBytes: number; peakBytes: number };
}

/** Every child still running when the test worker exits is killed, whatever the test did. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function spawnGateway(yaml: string, env: NodeJS.ProcessEnv = {}, args: string[] = []): Promise<GatewayProcess> {
  const configPath = writeConfig(yaml);
  const child = spawn(process.execPath, ['dist/cli.js', 'start', '--config', configPath, ...args], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  running.add(child);
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      running.delete(child);
      resolve(code);
    }),
  );
  const listening = new Promise<Record<string, unknown>>((resolve, reject) => {
    let buffered = '';
    child.stdout!.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        const parsed = JSON.parse(line) as Record<string, unknown>;
        logs.push(parsed);
        if (parsed.msg === 'sluice is listening') resolve(parsed);
      }
    });
    void exited.then((code) => reject(new Error(`gateway exited with ${code} before listening: ${stderr}`)));
  });
  const ready = await listening;
  const port = (ready.proxy as { port: number }).port;
  const adminPort = (ready.admin as { port: number }).port;
  return {
    child,
    port,
    proxyUrl: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    configPath,
    logs,
    exited,
    memory() {
      const status = readFileSync(`/proc/${child.pid}/status`, 'utf8');
      const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
      return { rssBytes: kb('VmRSS'), peakBytes: kb('VmHWM') };
    },
  };
}
