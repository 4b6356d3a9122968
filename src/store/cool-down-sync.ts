/**
 * Reading other instances' cool-downs back from the token store (store.type redis): circuit breaker
 * openings and learned pauses are written there by the instance that saw them (coolDown) and read
 * by every instance once a second (cooling). One read at a time, so a slow store never stacks them;
 * a store that stops answering is logged once, and once when it is back, and meanwhile each instance
 * keeps what it learned itself.
 */
import type { Logger } from '../observability/logger.js';
import type { TokenStore } from './tokens.js';

/** How often an instance reads the cool-downs of the others (the pools' sync, credentials/pool.ts, shares it). */
export const SYNC_EVERY_MS = 1_000;

/** A hash of cool-downs in the store, and what to do with what it holds (member → ms left). */
export interface CoolDownSource {
  readonly key: string;
  learn(coolDowns: ReadonlyMap<number, number>): void;
}

export class CoolDownSync {
  private readonly timer: NodeJS.Timeout;
  private reading = false;
  private storeAway = false;

  constructor(
    private readonly store: TokenStore,
    private readonly logger: Logger,
    /** What is shared, for the log: "circuit breaker openings", "learned pauses". */
    private readonly what: string,
    private readonly sources: () => Iterable<CoolDownSource>,
  ) {
    this.timer = setInterval(() => void this.read(), SYNC_EVERY_MS).unref();
  }

  close(): void {
    clearInterval(this.timer);
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
}
