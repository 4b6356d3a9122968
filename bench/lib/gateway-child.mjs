// One gateway for a benchmark: the built dist/cli.js as a child process with a generated config in
// its own folder, ready once its /readyz answers. The fidelity drivers (run, token, learned) start
// theirs here.
import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { freePorts } from './ports.mjs';
import { waitReady } from './ready.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The last lines of a file, as a suffix for an error message ('' when there are none). */
export function tail(file, lines = 15) {
  try {
    const text = readFileSync(file, 'utf8').trim();
    return text ? `:\n${text.split('\n').slice(-lines).join('\n')}` : '';
  } catch {
    return '';
  }
}

/**
 * Starts `node dist/cli.js start --config DIR/routes.yaml --no-watch` in `work/name`.
 * - config(dir, port, adminPort): the routes.yaml text, for free loopback ports;
 * - track: the driver's child tracker (children.mjs), which ends it at exit;
 * - onLine: hears each stdout line (the request log and the warnings); without it stdout is not read
 *   at all (a busy gateway's request log would cost the driver CPU). Either way stdout is kept in
 *   the folder with FIDELITY_KEEP_TMP=1, and stderr always is (`errTail()` gives its last lines).
 */
export async function startGatewayChild({ work, track, name, config, onLine }) {
  const [port, adminPort] = await freePorts(2);
  const dir = join(work, name);
  mkdirSync(dir);
  const configPath = join(dir, 'routes.yaml');
  writeFileSync(configPath, config(dir, port, adminPort));
  const errFile = join(dir, 'stderr');
  const keep = process.env.FIDELITY_KEEP_TMP === '1';
  const stdout = onLine ? 'pipe' : openSync(keep ? join(dir, 'stdout') : '/dev/null', 'w');
  const child = track(
    spawn(process.execPath, [join(ROOT, 'dist/cli.js'), 'start', '--config', configPath, '--no-watch'], {
      cwd: dir,
      stdio: ['ignore', stdout, openSync(errFile, 'w')],
      env: { PATH: process.env.PATH, NODE_ENV: 'production' },
    }),
    name,
  );
  if (onLine) {
    const copy = keep ? createWriteStream(join(dir, 'stdout')) : undefined;
    createInterface({ input: child.stdout }).on('line', (line) => {
      copy?.write(`${line}\n`);
      onLine(line);
    });
  }
  const errTail = () => tail(errFile);
  await waitReady(child, name, adminPort, errTail);
  return { child, name, url: `http://127.0.0.1:${port}`, errTail };
}
