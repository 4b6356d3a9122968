#!/usr/bin/env node
/**
 * The command line: `sluice start [--config FILE]`, `sluice check [FILE]`, `sluice ca [--config FILE]`.
 * The config file is, in order: --config, $SLUICE_CONFIG, ./routes.yaml.
 */
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError, loadConfigFile } from './config/load.js';
import { Gateway } from './main.js';
import { CaError, loadOrCreateCa } from './tls/ca.js';
import { trustInstructions } from './tls/trust.js';

const USAGE = `Usage: sluice <command> [options]

Commands:
  start [--config FILE]   run the gateway (default config: $SLUICE_CONFIG or ./routes.yaml);
                          it reloads the file when it changes, and on SIGHUP
  check [FILE]            validate a config file; exits 1 when it has errors
  ca [--config FILE]      print the gateway's CA certificate (creating it in tls.caDir if there is
                          none) and how to make clients trust it

Options:
  -c, --config FILE       the routes.yaml to use
      --no-watch          reload only on SIGHUP, not on file changes
  -h, --help              this text
  -v, --version           the version`;

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

async function check(file: string): Promise<number> {
  try {
    const loaded = await loadConfigFile(file);
    for (const warning of loaded.warnings) console.log(`warning: ${warning}`);
    const { upstreams, tenants } = loaded.config;
    console.log(
      `${file}: ok (${Object.keys(upstreams).length} upstreams, ${tenants ? Object.keys(tenants).length : 'no'} tenants, version ${loaded.version})`,
    );
    return 0;
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    for (const problem of err.problems) console.error(problem);
    console.error(`${file}: ${err.problems.length} error${err.problems.length === 1 ? '' : 's'}`);
    return 1;
  }
}

async function ca(file: string): Promise<number> {
  try {
    const { config } = await loadConfigFile(file);
    console.log(trustInstructions(await loadOrCreateCa(config.tls, dirname(resolve(file)))));
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) err.problems.forEach((problem) => console.error(problem));
    else if (err instanceof CaError) console.error(err.message);
    else throw err;
    return 1;
  }
}

async function start(file: string, watch: boolean): Promise<void> {
  let gateway: Gateway;
  try {
    gateway = await Gateway.start({ configPath: file, watch });
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const problem of err.problems) console.error(problem);
      console.error(`sluice: not started: ${file} has errors (run "sluice check ${file}")`);
    } else {
      console.error(`sluice: not started: ${(err as Error).message}`);
    }
    process.exitCode = 1;
    return;
  }
  // A fault that escaped a request must not take every other tenant's requests down with it.
  process.on('uncaughtException', (err) => gateway.logger.error({ err }, 'uncaught exception'));
  process.on('unhandledRejection', (err) => gateway.logger.error({ err }, 'unhandled rejection'));
  process.on('SIGHUP', () => void gateway.reload());
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) {
      gateway.logger.warn({ signal }, 'second signal: exiting without waiting for the drain');
      process.exit(1);
    }
    stopping = true;
    gateway.logger.info({ signal }, 'stopping');
    gateway.shutdown().then(
      () => process.exit(0),
      (err: unknown) => {
        console.error(`sluice: shutdown failed: ${String(err)}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

async function main(argv: string[]): Promise<number | undefined> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      config: { type: 'string', short: 'c' },
      help: { type: 'boolean', short: 'h' },
      version: { type: 'boolean', short: 'v' },
      'no-watch': { type: 'boolean' },
    },
  });
  if (values.version) {
    console.log(version());
    return 0;
  }
  const [command, fileArg] = positionals;
  const file = values.config ?? fileArg ?? process.env.SLUICE_CONFIG ?? 'routes.yaml';
  if (values.help || command === undefined) {
    console.log(USAGE);
    return values.help ? 0 : 2;
  }
  switch (command) {
    case 'start':
      await start(file, !values['no-watch']);
      return undefined;
    case 'check':
      return check(file);
    case 'ca':
      return ca(file);
    default:
      console.error(`sluice: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => {
    console.error(`sluice: ${err instanceof Error ? err.message : String(err)}`);
    process.exitCode = 2;
  },
);
