/**
 * onLimit: { queue } — requests that may not go yet wait here, on this instance, until the store
 * admits them or their time is up. Waiters with the same tenant and the same rules share a lane;
 * a lane is ordered by X-Sluice-Priority, then arrival, and only its head asks the store, at the
 * moment the store said room would be there (or, for concurrency, when a request ends here, or
 * every RELEASE_POLL_MS for ends on other instances). Fairness between tenants is the store's
 * job (their lanes never block each other); the queue only orders one tenant's own requests.
 */

export const PRIORITIES = { critical: 0, high: 1, normal: 2, low: 3 } as const;
export type Priority = keyof typeof PRIORITIES;

/** The rank of an X-Sluice-Priority value; anything unknown is normal. */
export function priorityRank(header: string | string[] | undefined): number {
  const value = (Array.isArray(header) ? header[0] : header)?.trim().toLowerCase();
  return value !== undefined && Object.hasOwn(PRIORITIES, value) ? PRIORITIES[value as Priority] : PRIORITIES.normal;
}

/** Concurrency frees on other instances unseen: a waiting lane asks again this often. */
export const RELEASE_POLL_MS = 50;

export interface Attempt<T> {
  admitted: boolean;
  /** When refused: ms until the store expects room; undefined when room comes with a request's end. */
  waitMs: number | undefined;
  value: T;
}

export type QueueResult<T> = { outcome: 'admitted'; value: T } | { outcome: 'timeout'; value: T | undefined };

export interface WaitOptions<T> {
  /** What the waiters are counted under for a queue bound (the upstream). */
  group: string;
  /** Whose request it is, for queue depths by tenant ("" when unsaid). */
  tenant?: string;
  lane: string;
  rank: number;
  /** performance.now() after which the waiter gives up. */
  deadline: number;
  signal: AbortSignal;
  attempt: () => Promise<Attempt<T>>;
}

interface Waiter<T> {
  rank: number;
  seq: number;
  options: WaitOptions<T>;
  settle(result: QueueResult<T> | { outcome: 'failed'; error: unknown }): void;
}

interface Lane<T> {
  waiters: Waiter<T>[];
  running: boolean;
  /** The last refusal, given to waiters that time out. */
  last: T | undefined;
  waitsOnRelease: boolean;
  wake: (() => void) | undefined;
}

export class QueueAbortedError extends Error {
  constructor() {
    super('the client left while its request was queued');
    this.name = 'QueueAbortedError';
  }
}

export class WaitQueue<T> {
  private readonly lanes = new Map<string, Lane<T>>();
  private seq = 0;
  private readonly waitingByGroup = new Map<string, number>();

  /** @param discard an admission nobody is left to use (its waiter left mid-attempt) */
  constructor(private readonly discard: (value: T) => void) {}

  /** Requests waiting on this instance in one group. */
  sizeOf(group: string): number {
    return this.waitingByGroup.get(group) ?? 0;
  }

  /** Waiters now by group and tenant; walks every waiter, so it is for scrapes, not the hot path. */
  depths(): Map<string, Map<string, number>> {
    const depths = new Map<string, Map<string, number>>();
    for (const lane of this.lanes.values()) {
      for (const { options } of lane.waiters) {
        const byTenant = depths.get(options.group) ?? new Map<string, number>();
        const tenant = options.tenant ?? '';
        byTenant.set(tenant, (byTenant.get(tenant) ?? 0) + 1);
        depths.set(options.group, byTenant);
      }
    }
    return depths;
  }

  /** How many waiters of `lane` would go before a new one of rank `rank`. */
  ahead(lane: string, rank: number): number {
    return this.lanes.get(lane)?.waiters.filter((w) => w.rank <= rank).length ?? 0;
  }

  wait(options: WaitOptions<T>): Promise<QueueResult<T>> {
    if (options.signal.aborted) return Promise.reject(new QueueAbortedError());
    const lane = this.lane(options.lane);
    return new Promise<QueueResult<T>>((resolve, reject) => {
      const onAbort = () => done({ outcome: 'failed', error: new QueueAbortedError() });
      const timer = setTimeout(() => done({ outcome: 'timeout', value: lane.last }), Math.max(0, options.deadline - performance.now()));
      let settled = false;
      const waiter: Waiter<T> = { rank: options.rank, seq: this.seq++, options, settle: (r) => done(r) };
      const done = (result: QueueResult<T> | { outcome: 'failed'; error: unknown }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal.removeEventListener('abort', onAbort);
        const at = lane.waiters.indexOf(waiter);
        if (at >= 0) {
          lane.waiters.splice(at, 1);
          this.count(options.group, -1);
          if (at === 0) lane.wake?.(); // the next head asks at once
        }
        if (result.outcome === 'failed') reject(result.error);
        else resolve(result);
      };
      options.signal.addEventListener('abort', onAbort, { once: true });
      const at = lane.waiters.findIndex((w) => w.rank > waiter.rank);
      lane.waiters.splice(at < 0 ? lane.waiters.length : at, 0, waiter);
      this.count(options.group, +1);
      if (at === 0) lane.wake?.();
      if (!lane.running) void this.pump(options.lane, lane);
    });
  }

  /** A request ended on this instance: lanes waiting for concurrency ask again now. */
  released(): void {
    for (const lane of this.lanes.values()) if (lane.waitsOnRelease) lane.wake?.();
  }

  private count(group: string, change: number): void {
    const now = (this.waitingByGroup.get(group) ?? 0) + change;
    if (now === 0) this.waitingByGroup.delete(group);
    else this.waitingByGroup.set(group, now);
  }

  private lane(key: string): Lane<T> {
    let lane = this.lanes.get(key);
    if (!lane) {
      lane = { waiters: [], running: false, last: undefined, waitsOnRelease: false, wake: undefined };
      this.lanes.set(key, lane);
    }
    return lane;
  }

  private async pump(key: string, lane: Lane<T>): Promise<void> {
    lane.running = true;
    while (lane.waiters.length > 0) {
      const head = lane.waiters[0]!;
      let attempt: Attempt<T>;
      try {
        attempt = await head.options.attempt();
      } catch (error) {
        head.settle({ outcome: 'failed', error });
        continue;
      }
      if (attempt.admitted) {
        // The admission is the head's (it carries the head's lease). Only if the head left while
        // the store answered does the next in line take its place.
        const taker = lane.waiters.includes(head) ? head : lane.waiters[0];
        if (taker) taker.settle({ outcome: 'admitted', value: attempt.value });
        else this.discard(attempt.value);
        continue;
      }
      lane.last = attempt.value;
      lane.waitsOnRelease = attempt.waitMs === undefined;
      // Hopeless: the head's time runs out before the room the store expects; answer it now, not
      // at its deadline. (Room from a request ending may come any moment: that wait runs to the end.)
      if (attempt.waitMs !== undefined && performance.now() + attempt.waitMs > head.options.deadline) {
        head.settle({ outcome: 'timeout', value: attempt.value });
        continue;
      }
      await this.sleep(lane, attempt.waitMs ?? RELEASE_POLL_MS);
    }
    lane.running = false;
    this.lanes.delete(key);
  }

  private sleep(lane: Lane<T>, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(wake, Math.ceil(ms));
      function wake() {
        clearTimeout(timer);
        lane.wake = undefined;
        resolve();
      }
      lane.wake = wake;
    });
  }
}
