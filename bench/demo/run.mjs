#!/usr/bin/env node
// `npm run demo`: the gateway doing its job with no API keys. It starts fake Twilio, BaseLinker and
// Zoho + ServiceDesk Plus APIs on 127.0.0.1 (bench/fakes/: each enforces its real limits and wants
// its real credentials), the built gateway (dist/) with the shipped routes.yaml pointed at them,
// and two tenants sending a bit more than the limits allow; then it shows every second what each
// tenant got and what the upstreams saw, for --duration seconds (30), and a summary.
//
//   node bench/demo/run.mjs [--duration N] [--keep]
//
// --keep leaves the scratch folder (the demo's routes.yaml and the gateway's log) and prints its
// path. Exits 0 after a run, 1 when it cannot start. Ctrl-C (SIGINT), SIGTERM (`timeout`, CI
// cancelling) and SIGHUP (a closed terminal) stop it early, gateway and scratch folder included,
// with the summary so far and exit code 128 + the signal's number (130, 143, 129); a second signal
// ends it at once, and its exit handlers still kill the gateway and remove the folder.
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { demoConfig } from './config.mjs';
import { startGateway } from './gateway.mjs';
import { PATIENCE_MS, startLoad } from './load.mjs';
import { counter, histogram, scrape } from './metrics.mjs';
import { DEMO_SECRETS, startUpstreams } from './upstreams.mjs';
import { draw, tenantTable, upstreamTable } from './view.mjs';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** How long answers still due at the end may take (a request queued for ServiceDesk waits up to 5 s). */
const GRACE_MS = 3_000;
/**
 * Stopped by a signal, whoever sent it may not wait long (CI kills after a few seconds): the
 * answers still due get this long, then the gateway this long to drain before it is killed.
 */
const STOPPED_GRACE_MS = 1_000;
const STOPPED_DRAIN_MS = 5_000;
const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/**
 * The demo's own stop: aborted by the first of STOP_SIGNALS (the run then winds down in order:
 * load, gateway, fakes, folder), or when its output has nobody to read it any more (a closed
 * terminal, `| head`). The gateway runs in a process group of its own, so none of these reach it:
 * without this the demo would die and leave it serving.
 */
function stopOnSignals() {
  const controller = new AbortController();
  /** @type {string | undefined} */
  let reason;
  const stop = (why) => {
    reason ??= why;
    controller.abort();
  };
  for (const name of STOP_SIGNALS) {
    process.on(name, () => {
      // A second signal ends at once; the exit handlers kill the gateway and remove the folder.
      if (controller.signal.aborted) process.exit(128 + constants.signals[name]);
      stop(name);
    });
  }
  // A write to a closed terminal or pipe fails (EIO, EPIPE): not a crash, a reason to stop (as the
  // shell's SIGPIPE would); the summary then goes nowhere, the cleanup happens all the same.
  process.stdout.on('error', () => stop('SIGPIPE'));
  return {
    signal: controller.signal,
    /** What stopped the demo early ("SIGTERM", ...), if anything did. */
    reason: () => reason,
    exitCode: () => (reason === undefined ? 0 : 128 + constants.signals[reason]),
  };
}
const stopped = stopOnSignals();

function options() {
  const { values } = parseArgs({
    options: { duration: { type: 'string', default: '30' }, keep: { type: 'boolean', default: false }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    console.log('Usage: npm run demo [-- --duration SECONDS] [-- --keep]');
    process.exit(0);
  }
  const durationS = Number(values.duration);
  if (!(durationS > 0 && durationS <= 3600)) throw new Error(`--duration must be a number of seconds from 1 to 3600, not "${values.duration}"`);
  return { durationS, keep: values.keep };
}

/** One view of now: the tenants' counts, the gateway's metrics (when it has them), the fakes' truth. */
function snapshot({ tallies, samples, upstreams, elapsedS, durationS, rate }) {
  const rows = tallies.map((t) => {
    const want = { upstream: t.upstream, tenant: t.tenant };
    return {
      tenant: t.tenant,
      upstream: t.upstream,
      perSecond: rate(t),
      forwarded: t.forwarded,
      queued: samples && counter(samples, 'sluice_requests_total', { ...want, outcome: 'queued_then_forwarded' }),
      queueWait: samples && histogram(samples, 'sluice_queue_wait_seconds', want),
      refusals: t.refusals(),
      sent: t.sent,
      retries: t.retries,
    };
  });
  return { elapsedS, durationS, rows, truth: upstreams.truth(), metrics: samples !== undefined };
}

function summary(s, { stoppedBy, work }) {
  const total = (key, tenant) => s.rows.filter((r) => tenant === undefined || r.tenant === tenant).reduce((a, r) => a + r[key], 0);
  const { twilio, baselinker, servicedesk } = s.truth;
  return [
    '',
    `Summary: ${Math.round(s.elapsedS)} s${stoppedBy ? ` (stopped early: ${stoppedBy})` : ''}`,
    ...tenantTable(s.rows, 'req/s avg'),
    '',
    ...upstreamTable(s.truth),
    '',
    `forwarded: acme ${total('forwarded', 'acme')}, globex ${total('forwarded', 'globex')}`,
    `requests: ${total('sent')} sent; ${total('retries')} refused attempts were sent again when their Retry-After said (for up to ${PATIENCE_MS / 1000} s)`,
    `wrong credentials at the fakes: ${twilio.unauthorized + baselinker.unauthorized + servicedesk.unauthorized} (clients sent made-up ones; the gateway replaced them with the upstreams' own)`,
    `over the upstreams' own limits: ${twilio.limited + baselinker.limited + servicedesk.limited} (the gateway kept the traffic inside them and refused or queued the rest)`,
    ...(work ? [`kept: ${work} (routes.yaml, gateway.log)`] : []),
  ];
}

async function main() {
  const { durationS, keep } = options();
  const cli = join(ROOT, 'dist', 'cli.js');
  if (!existsSync(cli)) throw new Error(`${cli} is missing: build first (npm run build), or run npm run demo`);
  const stop = stopped.signal;

  const work = mkdtempSync(join(tmpdir(), 'sluice-demo-'));
  // Also when the demo ends abruptly (a second signal, a crash): nothing of it stays in /tmp.
  const removeWork = () => rmSync(work, { recursive: true, force: true });
  if (!keep) process.once('exit', removeWork);
  const upstreams = await startUpstreams();
  let gateway;
  try {
    const configPath = join(work, 'routes.yaml');
    const urls = { twilio: upstreams.twilio.url, baselinker: upstreams.baselinker.url, servicedesk: upstreams.servicedesk.url, tokenUrl: upstreams.zoho.url };
    writeFileSync(configPath, demoConfig(readFileSync(join(ROOT, 'routes.yaml'), 'utf8'), urls));
    gateway = await startGateway({ cli, configPath, env: DEMO_SECRETS, logPath: join(work, 'gateway.log'), signal: stop });
    const load = startLoad({
      proxyUrl: gateway.proxyUrl,
      keys: { acme: DEMO_SECRETS.ACME_KEY, globex: DEMO_SECRETS.GLOBEX_KEY },
      accountSid: DEMO_SECRETS.TWILIO_ACCOUNT_SID,
    });
    console.log(`Sluice demo: gateway ${gateway.proxyUrl} (admin ${gateway.adminUrl}), ${durationS} s of load from acme and globex`);

    const started = performance.now();
    const elapsedS = () => (performance.now() - started) / 1000;
    const lastForwarded = new Map();
    for (let tick = 1; tick <= durationS && !stop.aborted; tick++) {
      await sleep(Math.max(0, started + tick * 1000 - performance.now()), undefined, { signal: stop }).catch(() => undefined);
      if (stop.aborted) break;
      const samples = await scrape(gateway.adminUrl);
      const perSecondNow = (t) => {
        const rate = t.forwarded - (lastForwarded.get(t) ?? 0);
        lastForwarded.set(t, t.forwarded);
        return rate;
      };
      draw(process.stdout, snapshot({ tallies: load.tallies, samples, upstreams, elapsedS: elapsedS(), durationS, rate: perSecondNow }));
    }
    const ranS = elapsedS();
    await load.stop(stop.aborted ? STOPPED_GRACE_MS : GRACE_MS);
    const samples = await scrape(gateway.adminUrl);
    const final = snapshot({ tallies: load.tallies, samples, upstreams, elapsedS: ranS, durationS, rate: (t) => t.forwarded / ranS });
    console.log(summary(final, { stoppedBy: stopped.reason(), work: keep ? work : undefined }).join('\n'));
  } finally {
    await gateway?.stop(stop.aborted ? STOPPED_DRAIN_MS : undefined);
    await upstreams.close();
    if (!keep) {
      removeWork();
      process.off('exit', removeWork);
    }
  }
}

main().then(
  () => process.exit(stopped.exitCode()),
  (err) => {
    // Stopped while starting (the gateway not listening yet): the signal's exit code, not a failure.
    if (stopped.reason() !== undefined) process.exit(stopped.exitCode());
    console.error(`demo: ${err instanceof Error ? err.message : String(err)}`);
    process.exit(1);
  },
);
