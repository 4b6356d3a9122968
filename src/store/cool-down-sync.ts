/**
 * Reading other instances' cool-downs back from the token store (store.type redis): circuit breaker
 * openings, learned pauses and pool tokens out of rotation are written there by the instance that
 * saw them (coolDown), which
 * announces the key; every instance that hears it reads that key at once (cool-down-channel.ts,
 * Redis pub/sub), and reads them all once a second besides (cooling), for what it did not hear (a
 * reconnect, a lost message). One round of reads at a time, so a slow store never stacks them; a
 * store that stops answering is logged once, and once when it is back, and meanwhile each instance
 * keeps what it learned itself.
 */
import type { Logger } from '../observability/logger.js';
import type { CoolDownWatch, TokenStore } from './tokens.js';

/** How often an instance reads the cool-downs of the others. */
export const SYNC_EVERY_MS = 1_000;

/** A hash of cool-downs in the store, and what to do with what it holds (member → ms left). */
export interface CoolDownSource {
  readonly key: string;
  learn(coolDowns: ReadonlyMap<number, number>): void;
}

export class CoolDownSync {
  private readonly timer: NodeJS.Timeout;
  private readonly watch: CoolDownWatch | undefined;
  private reading = false;
  private storeAway = false;

  constructor(
    private readonly store: TokenStore,
    private readonly logger: Logger,
    /** What is shared, for the log: "circuit breaker openings", "learned pauses". */
    private readonly what: string,
    private readonly sources: () => Iterable<CoolDownSource>,
    /** store.prefix, to hear cool-downs announced under it at once (undefined: the poll only). */
    prefix?: string,
    /**
     * How often every source is read. Tests only (GatewayOptions.syncEveryMs): one that proves an
     * announcement sets it far beyond the test, so that only the announcement can arrive in time.
     */
    everyMs = SYNC_EVERY_MS,
  ) {
    this.timer = setInterval(() => void this.read(), everyMs).unref();
    if (prefix === undefined) return;
    this.watch = store.watchCoolDowns(prefix, {
      cooled: (key) => void this.readKey(key),
      refused: (error) => logger.warn({ err: error.message }, `the store does not announce ${this.what}; they are read once a second`),
    });
  }

  close(): void {
    clearInterval(this.timer);
    this.watch?.close();
  }

  /** One round of reads (the timer's; tests call it too). */
  async read(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      for (const source of [...this.sources()]) source.learn(await this.store.cooling(source.key));
      if (this.storeAway) this.logger.info(`${this.what} are shared through the store again`);
      this.storeAway = false;
    } catch (err) {
      if (!this.storeAway) this.logger.warn({ err: String(err) }, `cannot read ${this.what} from the store; they are local to this instance until it answers`);
      this.storeAway = true;
    } finally {
      this.reading = false;
    }
  }

  /**
   * Reads one key just announced. Not held back by a round in progress: that round may have read
   * the key before the write. A failure is left to the next round, which logs an outage.
   */
  async readKey(key: string): Promise<void> {
    const matching = [...this.sources()].filter((source) => source.key === key);
    if (matching.length === 0) return; // another kind's, or another upstream's no longer configured
    try {
      const coolDowns = await this.store.cooling(key);
      for (const source of matching) source.learn(coolDowns);
    } catch {
      // the poll reads it again at its next round
    }
  }
}
