/**
 * Cool-downs announced over Redis pub/sub (store.type redis), so that a learned pause or a breaker
 * opening reaches the other instances in a round trip instead of at their next read (up to
 * SYNC_EVERY_MS later; with N instances, up to N-1 more refusals from the upstream per pause).
 *
 * The instance that writes a cool-down PUBLISHes its key (no secret: keys name the upstream and the
 * kind) on the channel `<key>:cool-down`; every instance PSUBSCRIBEs `{<prefix>:*}:cool-down` on a
 * connection of its own (a subscribed connection takes no other command) and reads the key it
 * hears. The channel is the key's own, so the writer needs no prefix (the token store is built
 * without one); an announcement that matches no key of the listener's is simply not read.
 *
 * Best effort by design: Redis does not keep messages for a subscriber that was away, so the
 * readers keep their once-a-second read as the safety net. A Redis that is down costs nothing
 * here: the connection retries on its own, its errors are left to the readers' own outage log, and
 * nothing waits on it. A Redis that refuses to announce (an ACL without pub/sub) is said once, not
 * again at every reconnection, until a subscription succeeds.
 *
 * A listening connection sends nothing, so a socket left half-open (Redis's host gone without a
 * word) would look alive for ever, and ioredis's socketTimeout only arms while a command waits for
 * its answer: the connection PINGs (allowed while subscribed) every PING_EVERY_MS, and one that has
 * not answered by the next PING is dropped, so that it reconnects and subscribes again. On a
 * Cluster, PING would go to any node rather than the subscriber's, so there the readers' poll is
 * the only net.
 */
import type { Cluster, Redis } from 'ioredis';
import type { CoolDownListener, CoolDownWatch } from './tokens.js';

const SUFFIX = ':cool-down';

/** How often the listening connection checks that Redis still answers (see above). */
export const PING_EVERY_MS = 10_000;

/** The channel a cool-down of `key` is announced on. */
export function coolDownChannel(key: string): string {
  return key + SUFFIX;
}

/** The pattern of every cool-down channel under store prefix `prefix` (keys are `{prefix:...}`). */
export function coolDownPattern(prefix: string): string {
  // store.prefix allows none of glob's specials today; escaped all the same, a pattern must not widen.
  return `{${prefix.replace(/[*?[\]\\]/g, '\\$&')}:*}${SUFFIX}`;
}

/** One listening connection per token store, opened at the first watch, shared by every watcher. */
export class CoolDownSubscriber {
  private connection: Redis | Cluster | undefined;
  /** Pattern → its watchers. */
  private readonly watchers = new Map<string, Set<CoolDownListener>>();
  /** Listeners told that Redis refused to announce: not told again until a subscription succeeds. */
  private readonly told = new Set<CoolDownListener>();
  private pinger: NodeJS.Timeout | undefined;
  /** close() was called: no connection opens again, whoever watches. */
  private closed = false;

  constructor(
    private readonly client: Redis | Cluster,
    /** Tests shorten it. */
    private readonly pingEveryMs = PING_EVERY_MS,
  ) {}

  watch(prefix: string, listener: CoolDownListener): CoolDownWatch {
    // The store is closed: hear nothing rather than open a connection nobody would close.
    if (this.closed) return { close: () => undefined };
    const pattern = coolDownPattern(prefix);
    let listeners = this.watchers.get(pattern);
    if (!listeners) {
      listeners = new Set();
      this.watchers.set(pattern, listeners);
      const connection = (this.connection ??= this.open());
      if (connection.status === 'ready') this.subscribe(connection, [pattern]);
    }
    listeners.add(listener);
    return { close: () => this.unwatch(pattern, listener) };
  }

  private unwatch(pattern: string, listener: CoolDownListener): void {
    const listeners = this.watchers.get(pattern);
    this.told.delete(listener);
    if (!listeners?.delete(listener) || listeners.size > 0) return;
    this.watchers.delete(pattern);
    if (this.watchers.size > 0) return void this.connection?.punsubscribe(pattern).catch(() => undefined);
    this.disconnect();
  }

  /**
   * Ends the listening connection even if watchers remain (their watches then hear nothing), for
   * good: its owner (RedisStore.close) is going away, and a connection left open would reconnect
   * every half second and keep the process alive. Idempotent.
   */
  close(): void {
    this.closed = true;
    this.watchers.clear();
    this.told.clear();
    this.disconnect();
  }

  /** Nobody listens any more (the gateway stops): no goodbye to a Redis that may be gone. */
  private disconnect(): void {
    clearInterval(this.pinger);
    this.pinger = undefined;
    this.connection?.disconnect();
    this.connection = undefined;
  }

  private open(): Redis | Cluster {
    const connection = this.client.isCluster
      ? (this.client as Cluster).duplicate()
      : (this.client as Redis).duplicate({ autoResubscribe: false, enableAutoPipelining: false });
    // Errors and reconnects are the readers' to report (their read fails too); without a listener
    // ioredis would throw them as unhandled 'error' events.
    connection.on('error', () => undefined);
    // Subscribed again at every (re)connection: the offline queue is off, so a subscription asked
    // for while Redis is away would be dropped rather than wait.
    connection.on('ready', () => this.subscribe(connection, [...this.watchers.keys()]));
    connection.on('pmessage', (pattern: string, _channel: string, key: string) => {
      for (const listener of this.watchers.get(pattern) ?? []) listener.cooled(key);
    });
    if (!connection.isCluster) this.pinger = this.keepAlive(connection as Redis);
    return connection;
  }

  /** PINGs every pingEveryMs; a connection whose last PING got no answer is dropped (it reconnects). */
  private keepAlive(connection: Redis): NodeJS.Timeout {
    let waiting = false;
    return setInterval(() => {
      if (connection.status !== 'ready') return void (waiting = false);
      // A PING that failed (commandTimeout) or never came back: half-open, or too slow to matter.
      if (waiting) {
        waiting = false; // the next PING goes on the new connection
        return void connection.stream.destroy();
      }
      waiting = true;
      connection.ping().then(
        () => void (waiting = false),
        () => undefined,
      );
    }, this.pingEveryMs).unref();
  }

  private subscribe(connection: Redis | Cluster, patterns: string[]): void {
    if (patterns.length === 0) return;
    const listeners = () => patterns.flatMap((pattern) => [...(this.watchers.get(pattern) ?? [])]);
    connection.psubscribe(...patterns).then(
      () => listeners().forEach((listener) => this.told.delete(listener)),
      (error: unknown) => {
        // Redis answered no (NOPERM, ...): say so, once. A lost connection subscribes again once ready.
        if (!(error instanceof Error) || error.name !== 'ReplyError') return;
        for (const listener of listeners()) {
          if (this.told.has(listener)) continue;
          this.told.add(listener);
          listener.refused(error);
        }
      },
    );
  }
}
