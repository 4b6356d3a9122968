/**
 * The shared store (store.type: redis): limit state in Redis, so that several gateway instances
 * enforce one set of limits. Each decision is one script run (decide.lua.ts, the port of
 * MemoryStore.decideNow), atomic in Redis. The store fails fast rather than late: no offline
 * queue, a bounded wait on every call, and a StoreUnavailableError the caller turns into its
 * store.onError policy. It reconnects by itself every RECONNECT_EVERY_MS, forever.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis';
import { DECIDE_LUA } from './decide.lua.js';
import { HEARTBEAT_LUA, RENEW_LUA } from './lease.lua.js';
import { defineTokenCommands, RedisTokenStore, type TokenScripts } from './redis-tokens.js';
import {
  StoreUnavailableError,
  type DecideRequest,
  type Lease,
  type LimitStore,
  type Lowering,
  type RuleOutcome,
  type StoreDecision,
  type StoreRule,
} from './store.js';
import type { TokenStore } from './tokens.js';

export interface RedisStoreOptions {
  /**
   * One URL: a single node (`redis[s]://[user:password@]host:port[/db]`). Several (an array or a
   * comma-separated string): seed nodes of a Redis Cluster (credentials and TLS from the first).
   */
  url: string | readonly string[];
  /** Prefix of the store's own key, the instances set (rule keys arrive whole). Default 'sluice'. */
  prefix?: string;
  /** Longest any call waits for Redis; a decision then fails with StoreUnavailableError. */
  timeoutMs: number;
  /** Tests only: scripts take their time from this clock instead of Redis TIME. */
  clock?: () => number;
}

/** 'ready': Redis answers again. 'unavailable': it stopped (once per outage, with the error if any). */
export type RedisStoreEvent = 'ready' | 'unavailable';

const RECONNECT_EVERY_MS = 500;
/** A blackholed host must not stall reconnection for ioredis's default 10 s. */
const CONNECT_TIMEOUT_MS = 2_000;
const HEARTBEAT_EVERY_MS = 5_000;
/** Instances not seen for this long (three missed heartbeats) are no longer counted. */
const INSTANCE_WINDOW_MS = 15_000;

type Script = (...args: (string | number)[]) => Promise<unknown>;
interface Scripts {
  sluiceDecide: Script;
  sluiceRenew: Script;
  sluiceHeartbeat: Script;
}
type Client = (Redis | Cluster) & Scripts & TokenScripts;

const KIND = { rate: 'r', quota: 'q', concurrency: 'c' } as const;

export class RedisStore implements LimitStore {
  private readonly events = new EventEmitter();
  private readonly heartbeat: NodeJS.Timeout;
  private readonly id = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  private readonly instancesKey: string;
  private readonly timeoutMs: number;
  private readonly clock: (() => number) | undefined;
  private lastInstances = 1;
  private available: boolean | undefined;
  private closed = false;
  /** Handed out by tokens(): close() ends their listening connections too. */
  private readonly tokenStores = new Set<RedisTokenStore>();

  static connect(options: RedisStoreOptions): RedisStore {
    return new RedisStore(createClient(options), options);
  }

  private constructor(
    private readonly client: Client,
    options: RedisStoreOptions,
  ) {
    this.timeoutMs = options.timeoutMs;
    this.clock = options.clock;
    this.instancesKey = `{${options.prefix ?? 'sluice'}}:instances`;
    client.defineCommand('sluiceDecide', { lua: DECIDE_LUA });
    client.defineCommand('sluiceRenew', { lua: RENEW_LUA, numberOfKeys: 1 });
    client.defineCommand('sluiceHeartbeat', { lua: HEARTBEAT_LUA, numberOfKeys: 1 });
    defineTokenCommands(client);
    // Without an 'error' listener ioredis's errors would be thrown as unhandled 'error' events.
    client.on('error', (error: Error) => this.setAvailable(false, error));
    client.on('close', () => this.setAvailable(false));
    client.on('ready', () => {
      this.setAvailable(true);
      void this.beat();
    });
    this.heartbeat = setInterval(() => void this.beat(), HEARTBEAT_EVERY_MS).unref();
  }

  /** Redis is connected and answering commands now. */
  ready(): boolean {
    return this.client.status === 'ready';
  }

  /** Resolves true once ready, false if not within timeoutMs (startup can wait for it, or not). */
  waitReady(timeoutMs: number): Promise<boolean> {
    if (this.ready()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.events.off('ready', onReady);
        resolve(ok);
      };
      const onReady = () => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.events.on('ready', onReady);
    });
  }

  on(event: RedisStoreEvent, listener: (error?: Error) => void): this {
    this.events.on(event, listener);
    return this;
  }

  /** Gateway instances sharing this Redis (heartbeats of the last 15 s), last known, at least 1. */
  instances(): number {
    return this.lastInstances;
  }

  async decide(request: DecideRequest): Promise<StoreDecision> {
    return decode(await this.run(request, DECIDE), request.rules.length);
  }

  async peek(rules: readonly StoreRule[]): Promise<RuleOutcome[]> {
    const reply = await this.run({ ...READ_ONLY, rules }, PEEK);
    if (!Array.isArray(reply) || reply.length !== 4 * rules.length) throw new Error('unexpected reply from decide.lua (peek)');
    return outcomesOf(reply, 0);
  }

  async lower(lowerings: readonly Lowering[]): Promise<void> {
    const rules = lowerings.map((l) => l.rule);
    await this.run({ ...READ_ONLY, rules }, { mode: 'l', remaining: lowerings.map((l) => l.remaining) });
  }

  /** One run of decide.lua; its failures are sorted into "the store is down" and "this call failed". */
  private async run(request: DecideRequest, mode: ScriptMode): Promise<unknown> {
    const keys: string[] = [];
    for (const rule of request.rules) keys.push(...rule.keys);
    try {
      return await this.bounded(this.client.sluiceDecide(keys.length, ...keys, ...encode(request, mode, this.clock?.())));
    } catch (error) {
      const message = `Redis store: ${error instanceof Error ? error.message : String(error)}`;
      // Redis answered, but refused the script (a bug, or state of another shape): that request
      // fails, and the store is not taken for down. Cluster and failover replies (CLUSTERDOWN,
      // TRYAGAIN, LOADING, READONLY, ...) do mean it cannot decide now.
      if (error instanceof Error && error.name === 'ReplyError' && /^(ERR|WRONGTYPE) /.test(error.message)) {
        throw new Error(message, { cause: error });
      }
      throw new StoreUnavailableError(message, { cause: error });
    }
  }

  async release(leases: readonly Lease[]): Promise<void> {
    await this.quietly(leases.map(({ key, id }) => this.client.zrem(key, id)));
  }

  async renew(leases: readonly Lease[], ttlMs: number): Promise<void> {
    const now = this.clock?.() ?? '';
    await this.quietly(leases.map(({ key, id }) => this.client.sluiceRenew(key, now, ttlMs, id)));
  }

  /** Credential state on the same client, with the same bound on every call and the same test clock. */
  tokens(): TokenStore {
    const tokens = new RedisTokenStore(this.client, (promise) => this.bounded(promise), this.clock);
    if (this.closed) tokens.close();
    else this.tokenStores.add(tokens);
    return tokens;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.heartbeat);
    // The token stores' pub/sub connections are duplicates of the client, not closed with it: a
    // watcher never closed would leave one reconnecting every RECONNECT_EVERY_MS, for ever.
    for (const tokens of this.tokenStores) tokens.close();
    this.tokenStores.clear();
    // Leave the instances set at once, so the others' shares grow without waiting 15 s.
    await this.quietly([this.client.zrem(this.instancesKey, this.id)]);
    await this.quietly([this.client.quit()]);
    this.client.disconnect();
  }

  private setAvailable(available: boolean, error?: Error): void {
    if (this.closed || this.available === available) return;
    this.available = available;
    this.events.emit(available ? 'ready' : 'unavailable', error);
  }

  private async beat(): Promise<void> {
    if (this.closed || !this.ready()) return;
    try {
      const count = Number(await this.bounded(this.client.sluiceHeartbeat(this.instancesKey, this.id, INSTANCE_WINDOW_MS)));
      if (count >= 1) this.lastInstances = count;
    } catch {
      // The next heartbeat tries again; until then the last count stands.
    }
  }

  /**
   * ioredis bounds a command by commandTimeout once it is sent, but a Cluster still discovering
   * its slots parks commands until it is ready: this timer bounds every call, whatever the cause.
   */
  private bounded<T>(promise: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  /** Lease upkeep never throws: a lease not released or renewed expires by its TTL. */
  private async quietly(calls: readonly Promise<unknown>[]): Promise<void> {
    if (calls.length === 0) return;
    await this.bounded(Promise.all(calls)).catch(() => undefined);
  }
}

/** decide.lua's mode (ARGV 6) and the remaining counts a lowering brings its rules to (ARGV 7). */
interface ScriptMode {
  mode: 'd' | 'p' | 'l';
  remaining?: readonly number[];
}
const DECIDE: ScriptMode = { mode: 'd' };
const PEEK: ScriptMode = { mode: 'p' };
/** Peeks and lowerings take no lease. */
const READ_ONLY = { candidates: 1, lease: '-', leaseTtlMs: 0 } as const;

/** ARGV of decide.lua (its header documents the layout). */
function encode(request: DecideRequest, { mode, remaining }: ScriptMode, now: number | undefined): (string | number)[] {
  const argv: (string | number)[] = [
    now ?? '',
    request.candidates,
    request.lease,
    request.leaseTtlMs,
    request.excluded?.join(',') ?? '',
    mode,
    remaining?.join(',') ?? '',
  ];
  for (const rule of request.rules) {
    const fair = rule.kind === 'rate' ? rule.fair : undefined;
    argv.push(fair ? 'f' : KIND[rule.kind], rule.keys.length, rule.limit, rule.periodMs, rule.burst, rule.shadow ? 1 : 0);
    if (fair) argv.push(fair.tenant, fair.weight, fair.reservePerMs, fair.activeWindowMs);
    else argv.push('', '', '', '');
  }
  return argv;
}

function decode(reply: unknown, rules: number): StoreDecision {
  if (!Array.isArray(reply) || reply.length !== 2 + 4 * rules) throw new Error('unexpected reply from decide.lua');
  return { admitted: reply[0] === '1', candidate: Number(reply[1]), outcomes: outcomesOf(reply, 2) };
}

/** Per rule, from `from` on: ok, waitMs, remaining, resetMs. */
function outcomesOf(reply: readonly unknown[], from: number): RuleOutcome[] {
  const n = (i: number) => Number(reply[i]);
  const outcomes: RuleOutcome[] = [];
  for (let i = from; i < reply.length; i += 4) {
    outcomes.push({ ok: reply[i] === '1', waitMs: n(i + 1), remaining: n(i + 2), resetMs: n(i + 3) });
  }
  return outcomes;
}

function createClient(options: RedisStoreOptions): Client {
  const urls = (typeof options.url === 'string' ? options.url.split(',') : options.url).map((u) => u.trim()).filter((u) => u !== '');
  if (urls.length === 0) throw new Error('RedisStore: url is empty');
  if (!(options.timeoutMs > 0)) throw new Error(`RedisStore: timeoutMs must be > 0, got ${options.timeoutMs}`);
  const common = {
    commandTimeout: options.timeoutMs,
    // A command in flight when the connection drops fails at once, and is never sent again
    // after a reconnect: its caller has given up, and a replayed decision would consume twice.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: CONNECT_TIMEOUT_MS,
    // A peer that vanished without closing (half-open TCP) would leave the client 'ready' with
    // every command timing out: drop the socket when it stays silent, so reconnection starts.
    socketTimeout: Math.max(1_000, 4 * options.timeoutMs),
  } satisfies Partial<RedisOptions>;
  if (urls.length === 1) {
    return new Redis(urls[0]!, {
      ...common,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      retryStrategy: () => RECONNECT_EVERY_MS,
    }) as Client;
  }
  const seeds = urls.map((raw) => {
    const url = new URL(raw);
    if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new Error(`RedisStore: ${raw} is not a redis:// URL`);
    if (url.pathname.length > 1 && url.pathname !== '/0') throw new Error(`RedisStore: ${raw}: Redis Cluster has only database 0`);
    return url;
  });
  const first = seeds[0]!;
  const clusterOptions: ClusterOptions = {
    enableOfflineQueue: false,
    enableAutoPipelining: true,
    // Auto-pipelining groups a command by the slot of its first argument; a decision's first
    // argument is its key count, so decisions for different nodes would share a pipeline and all
    // fail ("All keys in the pipeline should belong to the same slots allocation group"). A
    // pipelined command redirected by MOVED also loses its NOSCRIPT fallback to EVAL.
    autoPipeliningIgnoredCommands: ['sluiceDecide'],
    clusterRetryStrategy: () => RECONNECT_EVERY_MS,
    redisOptions: {
      ...common,
      ...(first.username || first.password
        ? { username: decodeURIComponent(first.username), password: decodeURIComponent(first.password) }
        : {}),
      ...(first.protocol === 'rediss:' ? { tls: {} } : {}),
    },
  };
  const nodes = seeds.map((url) => ({ host: url.hostname.replace(/^\[|\]$/g, ''), port: Number(url.port || 6379) }));
  return new Cluster(nodes, clusterOptions) as Client;
}
