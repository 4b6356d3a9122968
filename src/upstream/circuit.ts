/**
 * One circuit breaker: an opossum circuit and the thin layer over it. opossum keeps the rolling
 * window of outcomes, decides on the failure ratio, and times the cooldown (open → halfOpen). The
 * layer adds what it lacks: an absolute failure count, more than one half-open probe, knowing when
 * the cooldown ends (for Retry-After), opening for the time another instance has left, and a clean
 * window after recovery. Outcomes are reported after the fact rather than by wrapping the request
 * (breaker.ts says why).
 */
import { EventEmitter } from 'node:events';
import CircuitBreaker from 'opossum';
import { GatewayError } from '../errors.js';

export interface BreakerSettings {
  /** Failures in the window that open the breaker (undefined: only the ratio decides). */
  failures: number | undefined;
  /** The breaker opens past this share of failures (0..1) over at least minRequests requests. */
  ratio: number | undefined;
  minRequests: number;
  windowMs: number;
  cooldownMs: number;
  /** Half-open requests let through at once. */
  probes: number;
  /** Statuses that count as failures (undefined: every 5xx). */
  on: readonly number[] | undefined;
}

export type BreakerState = 'closed' | 'open' | 'halfOpen';

/** What a breaker tells its owner: state changes (to log, and to share an opening with other instances). */
export interface BreakerListener {
  changed(breaker: Breaker, state: BreakerState, learned: boolean): void;
}

/** opossum's window is this many buckets; rotated by our own timer so that a close can empty it. */
const BUCKETS = 10;
/** A half-open breaker whose probes are all out: ask again in about this long. */
const PROBE_WAIT_MS = 1_000;
/** Another instance's opening within this much of our own deadline is our own, echoed back. */
const ECHO_TOLERANCE_MS = 250;

export class Breaker {
  private readonly circuit: CircuitBreaker<[boolean], void>;
  /** Kept: opossum reads resetTimeout from this very object each time it opens (see openFor). */
  private readonly options: CircuitBreaker.Options<[boolean]>;
  private readonly rotation = new EventEmitter();
  private readonly ticker: NodeJS.Timeout;
  private openUntil = 0;
  private probesOut = 0;
  private learning = false;

  constructor(
    /** Pool member index, or undefined for the upstream as a whole. */
    readonly member: number | undefined,
    private readonly settings: BreakerSettings,
    listener: BreakerListener,
    private readonly clock: () => number = Date.now,
  ) {
    this.options = {
      timeout: false, // the gateway has its own timeouts; outcomes arrive already decided
      resetTimeout: settings.cooldownMs,
      // Without a ratio, opossum's own rule never trips (a rate cannot exceed 100%): the count does.
      errorThresholdPercentage: settings.ratio === undefined ? 100 : settings.ratio * 100,
      volumeThreshold: settings.minRequests,
      rollingCountTimeout: settings.windowMs,
      rollingCountBuckets: BUCKETS,
      rotateBucketController: this.rotation,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
    };
    this.circuit = new CircuitBreaker((failed: boolean) => (failed ? Promise.reject(new Error('failed')) : Promise.resolve()), this.options);
    this.circuit.on('failure', () => {
      // opossum only knows ratios; the reference shape counts failures.
      if (settings.failures !== undefined && this.circuit.stats.failures >= settings.failures) this.circuit.open();
    });
    this.circuit.on('open', () => {
      this.openUntil = this.clock() + (this.options.resetTimeout ?? settings.cooldownMs);
      listener.changed(this, 'open', this.learning);
    });
    this.circuit.on('halfOpen', () => listener.changed(this, 'halfOpen', false));
    this.circuit.on('close', () => {
      // A recovered upstream starts with a clean count (opossum would keep the failures that opened it).
      for (let i = 0; i < BUCKETS; i++) this.rotation.emit('rotate');
      listener.changed(this, 'closed', false);
    });
    this.ticker = setInterval(() => this.rotation.emit('rotate'), Math.floor(settings.windowMs / BUCKETS)).unref();
  }

  state(): BreakerState {
    return this.circuit.opened ? 'open' : this.circuit.halfOpen ? 'halfOpen' : 'closed';
  }

  /** Whether a request may go now: closed, or half-open with a probe free. */
  admits(): boolean {
    return this.circuit.closed || (this.circuit.halfOpen && this.probesOut < this.settings.probes);
  }

  /** ms until it may admit again (0 when it admits). */
  retryAfterMs(): number {
    if (this.circuit.opened) return Math.max(this.openUntil - this.clock(), 0);
    return this.admits() ? 0 : PROBE_WAIT_MS;
  }

  /** Lets one request through: true when it is a half-open probe. Throws when the breaker refuses. */
  enter(upstream: string): boolean {
    if (!this.admits()) throw circuitOpen(upstream, this.retryAfterMs());
    if (this.circuit.closed) return false;
    this.probesOut++;
    return true;
  }

  /** The outcome of a request let through (failed undefined: it ended without one, e.g. the client left). */
  settle(probe: boolean, failed: boolean | undefined): void {
    if (this.circuit.isShutdown) return; // dropped by a reload while this request ran
    if (probe) {
      this.probesOut--;
      if (failed === undefined || !this.circuit.halfOpen) return;
      if (failed) this.circuit.open();
      else this.circuit.close();
    } else if (failed !== undefined && this.circuit.closed) {
      void this.circuit.fire(failed).catch(() => undefined); // a failure's rejection is only the count
    }
  }

  isFailure(status: number): boolean {
    return this.settings.on ? this.settings.on.includes(status) : status >= 500;
  }

  /**
   * Another instance opened this breaker with `leftMs` of its cooldown to go: open for that long
   * (opossum opens for resetTimeout, read when it opens, so it is set for that one opening).
   * An opening already known (our own, read back from the store) changes nothing.
   */
  openFor(leftMs: number): void {
    if (this.circuit.opened || this.clock() + leftMs <= this.openUntil + ECHO_TOLERANCE_MS) return;
    this.options.resetTimeout = leftMs;
    this.learning = true;
    try {
      this.circuit.open();
    } finally {
      this.options.resetTimeout = this.settings.cooldownMs;
      this.learning = false;
    }
  }

  status(): { state: BreakerState; failures: number; retryAfterMs?: number } {
    const state = this.state();
    const failures = this.circuit.stats.failures;
    return state === 'closed' ? { state, failures } : { state, failures, retryAfterMs: this.retryAfterMs() };
  }

  close(): void {
    clearInterval(this.ticker);
    this.circuit.shutdown();
  }
}

export function circuitOpen(upstream: string, retryAfterMs: number): GatewayError {
  return new GatewayError('circuit_open', `the circuit breaker of upstream "${upstream}" is open: it failed too often recently`, {
    upstream,
    retryAfterMs: Math.ceil(retryAfterMs),
  });
}
