/**
 * `npm run demo` (bench/demo/run.mjs) run for a few seconds as a newcomer would, against the built
 * gateway: it must end by itself with exit code 0, show both tenants' traffic forwarded, and the
 * fake APIs must have seen no request without the credentials the gateway injects (the demo's
 * clients send made-up ones). Its output is what its README section shows. Stopped by a signal
 * (`timeout`, CI cancelling, a closed terminal), it must take its gateway (a process group of its
 * own, which the signal does not reach) and its scratch folder with it; a gateway that never says
 * it listens must not keep it waiting.
 *
 * Each demo gets a TMPDIR of its own, so that its scratch folder and its gateway (whose command line
 * names the folder) can be told apart from any other demo's on the machine.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startGateway } from '../bench/demo/gateway.mjs';
import { until } from './helpers/wait.js';

interface Demo {
  child: ChildProcess;
  tmp: string;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Demos and scratch folders of the current test, ended and removed after it however it ended. */
const running: Demo[] = [];
const scratch: string[] = [];

function temp(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-demo-test-'));
  scratch.push(dir);
  return dir;
}

function startDemo(args: string[]): Demo {
  const tmp = temp();
  const child = spawn(process.execPath, ['bench/demo/run.mjs', ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TMPDIR: tmp } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = once(child, 'exit').then(([code, signal]) => ({ code, signal }) as { code: number | null; signal: NodeJS.Signals | null });
  const demo = { child, tmp, stdout: () => stdout, stderr: () => stderr, exited };
  running.push(demo);
  return demo;
}

/**
 * Pids of the gateways a demo started: `dist/cli.js start --config <its TMPDIR>/sluice-demo-.../routes.yaml`
 * (Linux: /proc, as in the Docker image and CI).
 */
function gatewaysOf(demo: Demo): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
    } catch {
      continue; // gone meanwhile
    }
    if (cmdline.includes('dist/cli.js') && cmdline.includes(`${demo.tmp}/sluice-demo-`)) pids.push(Number(entry));
  }
  return pids;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ESRCH') return false;
    throw error;
  }
}

/** Whether something accepts connections on 127.0.0.1:port. */
async function accepting(port: number): Promise<boolean> {
  const socket = connect(port, '127.0.0.1');
  try {
    await once(socket, 'connect');
    return true;
  } catch {
    return false;
  } finally {
    socket.destroy();
  }
}

afterEach(async () => {
  // A failed or timed-out test must not leave a demo, or its gateway, running: SIGTERM first (the
  // demo stops its gateway), SIGKILL when that does not end it, then any gateway left by group.
  for (const demo of running.splice(0)) {
    if (demo.child.exitCode === null && demo.child.signalCode === null) {
      demo.child.kill('SIGTERM');
      const ended = await Promise.race([demo.exited.then(() => true), new Promise<boolean>((r) => setTimeout(r, 8_000, false))]);
      if (!ended) demo.child.kill('SIGKILL');
    }
    for (const pid of gatewaysOf(demo)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const dir of scratch.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe('npm run demo', () => {
  it('runs for --duration 3, forwards both tenants’ traffic, and the fakes see only the gateway’s credentials', async () => {
    const demo = startDemo(['--duration', '3']);
    const { code } = await demo.exited;
    const stdout = demo.stdout();
    expect(code, demo.stderr()).toBe(0);
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
    expect(readdirSync(demo.tmp)).toEqual([]);
  }, 30_000);

  it.each([
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const)('stopped by %s, exits promptly (%i) with the summary so far, its gateway and scratch folder gone', async (signal, exitCode) => {
    const demo = startDemo(['--duration', '30']);
    // Under load: the first progress line comes a second after the gateway listens.
    await until(() => /^\[ {2}1 s\] /m.test(demo.stdout()), 15_000);
    const [, proxyPort, adminPort] = /gateway http:\/\/127\.0\.0\.1:(\d+) \(admin http:\/\/127\.0\.0\.1:(\d+)\)/.exec(demo.stdout()) ?? [];
    const gateways = gatewaysOf(demo);
    expect(gateways).toHaveLength(1);
    expect(alive(gateways[0]!)).toBe(true);
    expect(await accepting(Number(proxyPort))).toBe(true);
    expect(readdirSync(demo.tmp)).toHaveLength(1);

    const signalled = performance.now();
    demo.child.kill(signal);
    const { code } = await demo.exited;
    // Not the 30 s of the run: the answers due get 1 s, the gateway's drain up to 5 s (rarely needed).
    expect(performance.now() - signalled).toBeLessThan(7_000);
    expect(code, demo.stderr()).toBe(exitCode);
    expect(demo.stdout()).toMatch(new RegExp(`^Summary: \\d+ s \\(stopped early: ${signal}\\)$`, 'm'));
    expect(demo.stdout()).toMatch(/^forwarded: acme \d+, globex \d+$/m);
    expect(alive(gateways[0]!)).toBe(false);
    expect(gatewaysOf(demo)).toEqual([]);
    expect(await accepting(Number(proxyPort))).toBe(false);
    expect(await accepting(Number(adminPort))).toBe(false);
    expect(readdirSync(demo.tmp)).toEqual([]);
  }, 30_000);
});

describe('the demo’s gateway start', () => {
  /** A "gateway" that writes its pid where the config would be, and never listens. */
  function silentGateway(): { cli: string; configPath: string; logPath: string; pid: () => number } {
    const dir = temp();
    const cli = join(dir, 'silent.mjs');
    writeFileSync(cli, "import { writeFileSync } from 'node:fs';\nwriteFileSync(process.argv[4], String(process.pid));\nsetInterval(() => undefined, 60_000);\n");
    const configPath = join(dir, 'pid');
    const pid = () => {
      try {
        return Number(readFileSync(configPath, 'utf8')) || undefined;
      } catch {
        return undefined;
      }
    };
    return { cli, configPath, logPath: join(dir, 'gateway.log'), pid: () => pid() ?? 0 };
  }

  it('gives up on a gateway that neither listens nor exits, and kills it', async () => {
    const silent = silentGateway();
    const started = performance.now();
    const starting = startGateway({ ...silent, env: {}, startTimeoutMs: 1_000 });
    await until(() => silent.pid() > 0, 1_000);
    expect(alive(silent.pid())).toBe(true);
    await expect(starting).rejects.toThrow(/did not say it listens within 1 s, so it was killed/);
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(alive(silent.pid())).toBe(false);
  });

  it('kills the gateway and rejects when stopped before it listens', async () => {
    const silent = silentGateway();
    const stop = new AbortController();
    const starting = startGateway({ ...silent, env: {}, signal: stop.signal });
    await until(() => silent.pid() > 0, 5_000);
    expect(alive(silent.pid())).toBe(true);
    stop.abort();
    await expect(starting).rejects.toThrow('stopped before the gateway listened');
    expect(alive(silent.pid())).toBe(false);
  });
});
