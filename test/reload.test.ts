import { readFileSync, writeFileSync } from 'node:fs';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, testConfig, type TestGateway } from './helpers/gateway.js';
import { spawnGateway } from './helpers/process.js';
import { startUpstream, type EchoBody, type FakeUpstream } from './helpers/upstream.js';
import { until } from './helpers/wait.js';

const KEY = { 'x-sluice-key': 'acme:acme-secret-key-1' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let first: FakeUpstream;
let second: FakeUpstream;

beforeAll(async () => {
  first = await startUpstream();
  second = await startUpstream();
});

afterAll(async () => {
  await first.close();
  await second.close();
});

function upstreams(aTarget: string, withB: boolean): string {
  return `
  a:
    match: { prefix: /a }
    target: ${aTarget}
    allowPrivate: true
${withB ? `  b:\n    match: { prefix: /b }\n    target: ${second.url}\n    allowPrivate: true\n` : ''}`;
}

/** Sends requests to /a back to back until stopped (at most `max`), recording every status. */
function traffic(gw: TestGateway, max = 5_000) {
  const statuses: number[] = [];
  let stopped = false;
  const done = (async () => {
    while (!stopped && statuses.length < max) {
      const res = await request(`${gw.proxyUrl}/a/loop`, { headers: KEY });
      await res.body.dump();
      statuses.push(res.statusCode);
    }
  })();
  return {
    statuses,
    async stop() {
      stopped = true;
      await done;
    },
  };
}


describe('hot reload on file change', () => {
  let gw: TestGateway;

  beforeAll(async () => {
    gw = await startGateway(testConfig(upstreams(first.url, false)), { watch: true });
  });

  afterAll(async () => {
    await gw.close();
  });

  it('swaps a valid file in under traffic without failing a request', async () => {
    const load = traffic(gw);
    await sleep(100);
    writeFileSync(gw.configPath, testConfig(upstreams(second.url, true)));
    await until(async () => {
      const res = await request(`${gw.proxyUrl}/b/new`, { headers: KEY });
      await res.body.dump();
      return res.statusCode === 200;
    });
    await sleep(100);
    await load.stop();
    expect(load.statuses.length).toBeGreaterThan(10);
    expect(load.statuses.every((s) => s === 200)).toBe(true);
    const res = await request(`${gw.proxyUrl}/a/where`, { headers: KEY });
    expect(((await res.body.json()) as EchoBody).url).toBe('/where');
    expect(second.arrivals.some((a) => a.url === '/where')).toBe(true);
    expect(gw.logs.some((l) => l.msg === 'config reloaded')).toBe(true);
  });

  it('rejects an invalid file with its line-numbered error and keeps serving the old config', async () => {
    const before = readFileSync(gw.configPath, 'utf8');
    const load = traffic(gw);
    writeFileSync(gw.configPath, before.replace('prefix: /b', 'prefix: b-without-slash'));
    await until(() => gw.logs.some((l) => String(l.msg).startsWith('config reload rejected')));
    await load.stop();
    const rejected = gw.logs.find((l) => String(l.msg).startsWith('config reload rejected'));
    expect(rejected?.problems).toEqual([
      `${gw.configPath}:16 upstreams.b.match.prefix: must start with "/" and not end with "/", like "/twilio"`,
    ]);
    expect(load.statuses.every((s) => s === 200)).toBe(true);
    const res = await request(`${gw.proxyUrl}/b/still`, { headers: KEY });
    expect(res.statusCode).toBe(200);
    await res.body.dump();
  });

  it('lets a request in flight finish on the config it started with', async () => {
    writeFileSync(gw.configPath, testConfig(upstreams(first.url, true)));
    await until(async () => {
      const res = await request(`${gw.proxyUrl}/a/probe`, { headers: KEY });
      await res.body.dump();
      return first.arrivals.some((a) => a.url === '/probe');
    });
    const slow = request(`${gw.proxyUrl}/b/slow/600`, { headers: KEY });
    await sleep(100);
    writeFileSync(gw.configPath, testConfig(upstreams(first.url, false))); // b is gone
    await until(() => gw.logs.filter((l) => l.msg === 'config reloaded').length >= 3);
    const res = await slow;
    expect(res.statusCode).toBe(200);
    expect(await res.body.json()).toEqual({ slept: 600 });
    const gone = await request(`${gw.proxyUrl}/b/x`, { headers: KEY });
    expect(gone.statusCode).toBe(403);
    await gone.body.dump();
  });
});

describe('reload on SIGHUP', () => {
  it('re-reads the file on SIGHUP (with file watching off)', async () => {
    const child = await spawnGateway(testConfig(upstreams(first.url, false)), {}, ['--no-watch']);
    try {
      writeFileSync(child.configPath, testConfig(upstreams(first.url, true)));
      await sleep(300);
      const before = await request(`${child.proxyUrl}/b/x`, { headers: KEY });
      expect(before.statusCode).toBe(403); // not watching: nothing changed yet
      await before.body.dump();
      child.child.kill('SIGHUP');
      await until(() => child.logs.some((l) => l.msg === 'config reloaded'));
      const after = await request(`${child.proxyUrl}/b/x`, { headers: KEY });
      expect(after.statusCode).toBe(200);
      await after.body.dump();
    } finally {
      child.child.kill('SIGTERM');
      expect(await child.exited).toBe(0);
    }
  });
});

describe('reload safety', () => {
  it('refuses a reload that drops every tenant while the listener is not on loopback', async () => {
    const yaml = testConfig(upstreams(first.url, false)).replace('proxy: 127.0.0.1:0', 'proxy: 0.0.0.0:0');
    const gw = await startGateway(yaml);
    try {
      // The new file would pass on its own: loopback and no tenants. But the running listener is 0.0.0.0.
      writeFileSync(gw.configPath, `listen: { proxy: 127.0.0.1:8080, admin: 127.0.0.1:0 }\nupstreams:${upstreams(first.url, false)}`);
      const result = await gw.gateway.reload();
      expect(result.ok).toBe(false);
      expect(!result.ok && result.problems[0]).toMatch(/would make the gateway an open relay/);
      const res = await request(`${gw.proxyUrl}/a/x`);
      expect(res.statusCode).toBe(401);
      await res.body.dump();
    } finally {
      await gw.close();
    }
  });

  it('keeps reloading after a reload failed', async () => {
    const gw = await startGateway(testConfig(upstreams(first.url, false)));
    try {
      writeFileSync(gw.configPath, 'upstreams: [not, a, mapping]\n');
      expect((await gw.gateway.reload()).ok).toBe(false);
      writeFileSync(gw.configPath, testConfig(upstreams(first.url, true)));
      expect(await gw.gateway.reload()).toMatchObject({ ok: true, changed: true });
    } finally {
      await gw.close();
    }
  });
});
