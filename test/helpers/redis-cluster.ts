/**
 * A private Redis Cluster for tests: three masters (no replicas) on free loopback ports, each in
 * its own temp folder, joined with `redis-cli --cluster create`. `stop()` kills them (SIGKILL)
 * and removes the folders. `redisClusterToolsInstalled()` tells whether redis-server and
 * redis-cli exist; in CI (CI=true) their absence fails the test instead of skipping it.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { tempDir } from './gateway.js';

export interface TestRedisCluster {
  /** redis://127.0.0.1:PORT of each master. */
  urls: string[];
  ports: number[];
  stop(): Promise<void>;
}

const NODES = 3;
/** Client ports are drawn from here; the cluster bus is port + 10000 (30000-32767), both below Linux's ephemeral range. */
const PORT_MIN = 20_000;
const PORT_MAX = 22_767;
const BUS_OFFSET = 10_000;
const START_WAIT_MS = 5_000;
const CREATE_WAIT_MS = 15_000;
const STATE_OK_WAIT_MS = 10_000;

/** Whether redis-server and redis-cli are installed; throws in CI when they are not. */
/** Throws, naming what is missing, unless redis-server and redis-cli are installed (.ci/run installs them). */
export function requireRedisClusterTools(): void {
  const missing = ['redis-server', 'redis-cli'].filter((cmd) => spawnSync(cmd, ['--version'], { stdio: 'ignore' }).error !== undefined);
  if (missing.length > 0) throw new Error(`the Redis Cluster tests need ${missing.join(' and ')} (apt-get install redis-server redis-tools, or run .ci/run)`);
}

async function canListen(port: number): Promise<boolean> {
  const server = createServer();
  try {
    server.listen(port, '127.0.0.1');
    await Promise.race([once(server, 'listening'), once(server, 'error').then(([e]) => Promise.reject(e as Error))]);
    return true;
  } catch {
    return false;
  } finally {
    if (server.listening) {
      const closed = once(server, 'close');
      server.close();
      await closed;
    }
  }
}

/** A port whose cluster-bus port is free too, and that clashes with none of `taken` (or their bus ports). */
async function freeClusterPort(taken: ReadonlySet<number>): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = PORT_MIN + Math.floor(Math.random() * (PORT_MAX - PORT_MIN + 1));
    const used = [...taken].flatMap((p) => [p, p + BUS_OFFSET]);
    if (used.includes(port) || used.includes(port + BUS_OFFSET)) continue;
    if ((await canListen(port)) && (await canListen(port + BUS_OFFSET))) return port;
  }
  throw new Error(`no free port pair (P, P+${BUS_OFFSET}) found in ${PORT_MIN}-${PORT_MAX}`);
}

interface Node {
  port: number;
  dir: string;
  child: ChildProcess;
  output: string[];
}

function alive(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

async function kill(child: ChildProcess): Promise<void> {
  if (!alive(child)) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** A client that fails at once rather than retrying (for probes). */
function probe(port: number): Redis {
  const client = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: 1_000 });
  client.on('error', () => undefined);
  return client;
}

function spawnNode(port: number): Node {
  const dir = tempDir();
  const output: string[] = [];
  const child = spawn(
    'redis-server',
    [
      '--port', String(port),
      '--bind', '127.0.0.1',
      '--cluster-enabled', 'yes',
      '--cluster-config-file', join(dir, `nodes-${port}.conf`),
      '--dir', dir,
      '--save', '',
      '--appendonly', 'no',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const keep = (chunk: Buffer) => {
    output.push(chunk.toString());
    if (output.length > 50) output.shift();
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.on('error', (error) => keep(Buffer.from(String(error))));
  return { port, dir, child, output };
}

/** Resolves once the node answers PING; false if it exited (e.g. its port was taken meanwhile). */
async function answers(node: Node): Promise<boolean> {
  const deadline = Date.now() + START_WAIT_MS;
  while (Date.now() < deadline) {
    if (!alive(node.child)) return false;
    const client = probe(node.port);
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') return true;
    } catch {
      // not listening yet
    } finally {
      client.disconnect();
    }
    await sleep(50);
  }
  return false;
}

async function startNode(taken: Set<number>): Promise<Node> {
  let last: Node | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freeClusterPort(taken);
    taken.add(port);
    const node = spawnNode(port);
    if (await answers(node)) return node;
    await kill(node.child);
    rmSync(node.dir, { recursive: true, force: true });
    taken.delete(port);
    last = node;
  }
  throw new Error(`redis-server did not start (last try on port ${last?.port}):\n${last?.output.join('')}`);
}

async function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; output: string }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    const [code] = (await once(child, 'exit')) as [number | null];
    return { code, output };
  } finally {
    clearTimeout(timer);
  }
}

function infoField(info: string, field: string): string | undefined {
  return new RegExp(`^${field}:(\\S+)`, 'm').exec(info)?.[1];
}

/** Every node reports cluster_state:ok, all slots assigned and all nodes known. */
async function waitClusterOk(ports: readonly number[]): Promise<void> {
  const deadline = Date.now() + STATE_OK_WAIT_MS;
  const clients = ports.map(probe);
  const last = new Map<number, string>();
  try {
    for (;;) {
      let ok = true;
      for (const [i, client] of clients.entries()) {
        try {
          if (client.status !== 'ready') await client.connect();
          const info = String(await client.call('CLUSTER', 'INFO'));
          last.set(ports[i]!, info);
          ok &&=
            infoField(info, 'cluster_state') === 'ok' &&
            infoField(info, 'cluster_slots_ok') === '16384' &&
            infoField(info, 'cluster_known_nodes') === String(ports.length);
        } catch (error) {
          last.set(ports[i]!, String(error));
          ok = false;
        }
      }
      if (ok) return;
      if (Date.now() >= deadline) {
        const states = ports.map((p) => `127.0.0.1:${p}: ${(last.get(p) ?? 'no answer').replace(/\r?\n/g, ' ').slice(0, 300)}`);
        throw new Error(`Redis Cluster not ok within ${STATE_OK_WAIT_MS} ms:\n${states.join('\n')}`);
      }
      await sleep(100);
    }
  } finally {
    for (const c of clients) c.disconnect();
  }
}

export async function startRedisCluster(): Promise<TestRedisCluster> {
  const nodes: Node[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => kill(n.child)));
    for (const n of nodes) rmSync(n.dir, { recursive: true, force: true });
  };
  try {
    const taken = new Set<number>();
    // One after the other: each port choice must see the ones already made.
    for (let i = 0; i < NODES; i++) nodes.push(await startNode(taken));
    const ports = nodes.map((n) => n.port);
    const addresses = ports.map((p) => `127.0.0.1:${p}`);
    const created = await run('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], CREATE_WAIT_MS);
    if (created.code !== 0) {
      throw new Error(`redis-cli --cluster create ${addresses.join(' ')} failed (exit ${created.code}):\n${created.output}`);
    }
    await waitClusterOk(ports);
    return { urls: ports.map((p) => `redis://127.0.0.1:${p}`), ports, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
