/**
 * `npm run demo` (bench/demo/run.mjs) run for a few seconds as a newcomer would, against the built
 * gateway: it must end by itself with exit code 0, show both tenants' traffic forwarded, and the
 * fake APIs must have seen no request without the credentials the gateway injects (the demo's
 * clients send made-up ones). Its output is what its README section shows.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';

async function runDemo(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['bench/demo/run.mjs', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

describe('npm run demo', () => {
  it('runs for --duration 3, forwards both tenants’ traffic, and the fakes see only the gateway’s credentials', async () => {
    const { code, stdout, stderr } = await runDemo(['--duration', '3']);
    expect(code, stderr).toBe(0);
    // Not a TTY: progress lines every second, then the summary.
    expect(stdout).toMatch(/^\[ {2}3 s\] acme {4}forwarded\/s: twilio /m);
    expect(stdout).toMatch(/^\[ {2}3 s\] globex {2}forwarded\/s: twilio /m);
    const [, acme, globex] = /^forwarded: acme (\d+), globex (\d+)$/m.exec(stdout) ?? [];
    expect(Number(acme)).toBeGreaterThan(0);
    expect(Number(globex)).toBeGreaterThan(0);
    expect(stdout).toMatch(/^wrong credentials at the fakes: 0 /m);
    for (const upstream of ['twilio', 'baselinker', 'servicedesk']) {
      const row = new RegExp(`^${upstream} +(\\d+) +(\\d+) +\\d+ \\(.*\\) +0 \\(401\\)$`, 'm').exec(stdout);
      expect(row, `${upstream} row of the upstream table`).not.toBeNull();
      expect(Number(row![1])).toBeGreaterThan(0);
    }
    // The demo's secrets are fake, but it prints none of them all the same.
    expect(stdout).not.toMatch(/not-real|demo-key/);
  }, 30_000);
});
