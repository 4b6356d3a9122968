import { execFile, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { testConfig, writeConfig } from './helpers/gateway.js';
import { startUpstream } from './helpers/upstream.js';

const run = promisify(execFile);

/** Starts a command, waits for the gateway's "listening" line, checks it serves, stops it with SIGTERM. */
async function servesAndStops(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<number | null> {
  const upstream = await startUpstream();
  // Its own process group, so that SIGTERM reaches the gateway under npm's shell too.
  const child = spawn(command, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /"msg":"sluice is listening"/.test(out) && /"proxy":\{[^}]*"port":(\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => reject(new Error(`exited ${code}: ${out}`)));
    });
    const res = await request(`http://127.0.0.1:${port}/nowhere`, { headers: { 'x-sluice-key': 'acme:acme-secret-key-1' } });
    expect(res.statusCode).toBe(403);
    await res.body.dump();
  } finally {
    process.kill(-child.pid!, 'SIGTERM');
    await upstream.close();
  }
  return new Promise((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));
}

const config = () => writeConfig(testConfig(`
  a: { match: { prefix: /a }, target: "http://127.0.0.1:1", allowPrivate: true }
`));

describe('command line', () => {
  it('npm start -- --config FILE serves', async () => {
    // npm itself ends by the signal (exit code null); the gateway under it drains and exits 0.
    expect([0, null]).toContain(await servesAndStops('npm', ['start', '--silent', '--', '--config', config()], {}));
  });

  it('sluice start reads SLUICE_CONFIG when --config is not given', async () => {
    expect(await servesAndStops(process.execPath, ['dist/cli.js', 'start'], { SLUICE_CONFIG: config() })).toBe(0);
  });

  it('prints its version and usage, and refuses unknown commands', async () => {
    const { stdout } = await run(process.execPath, ['dist/cli.js', '--version']);
    expect(stdout.trim()).toMatch(/^\d+\.\d+\.\d+$/);
    const failure = await run(process.execPath, ['dist/cli.js', 'launch']).catch((err: { code: number; stderr: string }) => err);
    expect(failure).toMatchObject({ code: 2 });
    expect((failure as { stderr: string }).stderr).toContain('unknown command "launch"');
  });
});
