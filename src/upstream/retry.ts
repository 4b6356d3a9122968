/**
 * Retries (`retry:`), with the discipline of undici's retry-handler and Traefik's retry middleware:
 * only what is safe to send twice, never once the client got a byte, never in a storm.
 *
 * A RetryPolicy is compiled per upstream when the policy is built; each request that reaches the
 * forward stage begins a RetryRun, which answers after each attempt "retry, after this long?" or
 * "no: this outcome is the client's". What may be retried:
 *
 * - a status in `unprocessed`, for any method: the upstream documents that it did nothing (Twilio's
 *   429 code 20429);
 * - a status in `on`, or a connection failure (refused, reset before an answer, connect timeout),
 *   for an idempotent method (`methods`) or a request with an `Idempotency-Key` (the client's, or
 *   one the gateway generated: `idempotencyKey: generate`);
 * - a headers timeout only for an idempotent method: the upstream may have processed the request
 *   and still be at it, and even a keyed retry would race the first attempt.
 *
 * The wait is exponential with full jitter, random(0, min(max, base·2^n)), so that clients failing
 * together do not come back together; it is at least the upstream's Retry-After. A retry whose wait
 * would end past the request's `within` is not attempted, and the budget (`budget:`, per upstream,
 * per instance) allows retries up to `ratio` of the requests of the last `window`, plus
 * `minPerSecond`, so an upstream that fails everything gets at most (1 + ratio) times the traffic,
 * not (1 + attempts) times. Budgets outlive reloads (RetryBudgets), like breakers.
 *
 * A retry decided is not yet a retry sent: it still passes the breaker, the pauses and the limits,
 * which may refuse it. So it takes its place in the budget when decided (concurrent decisions must
 * not all see the same free place) and gives it back if it is refused (refused()); it counts as an
 * attempt only once it goes (sending()). The answer it was to replace is kept meanwhile, when
 * forward.ts could keep it whole, so that a refused retry leaves the client that answer rather than
 * the gateway's refusal.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { performance } from 'node:perf_hooks';
import type { RetryConfig } from '../config/schema.js';
import { GatewayError } from '../errors.js';
import { retryAfterMs } from '../limits/feedback.js';
import type { KeptAnswer } from './forward.js';

/** How a request may be retried: by its method, by its idempotency key, or only on `unprocessed` statuses. */
type Safety = 'idempotent' | 'keyed' | 'unsafe';

export class RetryPolicy {
  private readonly on: ReadonlySet<number>;
  private readonly unprocessed: ReadonlySet<number>;
  private readonly methods: ReadonlySet<string>;

  constructor(
    readonly config: RetryConfig,
    /** The upstream's budget (RetryBudgets.acquire: kept across reloads). */
    readonly budget: RetryBudget,
    private readonly random: () => number = Math.random,
  ) {
    this.on = new Set(config.on);
    this.unprocessed = new Set(config.unprocessed);
    this.methods = new Set(config.methods);
  }

  /** Bodies up to this size are kept to be sent again; a larger one makes the request not retried. */
  get maxBodySize(): number {
    return this.config.maxBodySize;
  }

  /**
   * A request's retries. `startedAt` (performance.now()) is when it reached the gateway: `within`
   * runs from there. Counts the request in the budget.
   */
  begin(method: string, headers: IncomingHttpHeaders, startedAt: number): RetryRun {
    this.budget.request();
    const idempotent = this.methods.has(method);
    const generate = !idempotent && headers['idempotency-key'] === undefined && this.config.idempotencyKey === 'generate';
    const keyed = generate || headers['idempotency-key'] !== undefined;
    const safety: Safety = idempotent ? 'idempotent' : keyed ? 'keyed' : 'unsafe';
    return new RetryRun(this, safety, startedAt + this.config.within, generate ? randomUUID() : undefined);
  }

  /** May a request of this safety be retried after this status? */
  retriesStatus(status: number, safety: Safety): boolean {
    return this.unprocessed.has(status) || (safety !== 'unsafe' && this.on.has(status));
  }

  /** The wait before retry number `n` (0: the first): full jitter, at least the upstream's Retry-After. */
  waitMs(n: number, retryAfter: number | undefined): number {
    const { base, max } = this.config.backoff;
    const jitter = this.random() * Math.min(max, base * 2 ** n);
    return Math.max(jitter, retryAfter ?? 0);
  }

  /** Takes a retry's place in the budget: its ticket, or undefined when the budget has none. */
  take(): number | undefined {
    return this.budget.take();
  }

  /** A retry that was never sent gives its place back. */
  giveBack(ticket: number): void {
    this.budget.giveBack(ticket);
  }
}

/** One request's attempts: what was retried, and whether the next outcome is retried. */
export class RetryRun {
  /** Attempts sent so far (1 once the first went; a retry counts once it is sent). */
  attempts = 1;
  /** The status or error code of each attempt that was retried (by a retry sent), for the log. */
  readonly retried: (number | string)[] = [];
  /** Why this request is never retried (for the debug log), when that is known before it goes. */
  never: string | undefined;
  /** The retry decided and not sent yet: the outcome it retries, and its place in the budget. */
  private pending: { outcome: number | string; ticket: number } | undefined;
  /** The answer the pending retry is to replace, when it could be kept whole. */
  private kept: KeptAnswer | undefined;

  constructor(
    private readonly policy: RetryPolicy,
    private readonly safety: Safety,
    /** performance.now() past which no retry starts. */
    private readonly deadline: number,
    /** The Idempotency-Key the gateway adds to every attempt (idempotencyKey: generate). */
    readonly idempotencyKey: string | undefined,
  ) {
    if (safety === 'unsafe' && policy.config.unprocessed.length === 0) this.never = 'method not idempotent and no Idempotency-Key';
    else if (policy.config.attempts === 0) this.never = 'attempts: 0';
  }

  /** The time left for the pending retry to start (0 without one: the first attempt waits as any request). */
  leftMs(): number {
    return this.pending ? Math.max(0, this.deadline - performance.now()) : 0;
  }

  /** The answer the pending retry replaces (forward.ts kept it whole), for the client if the retry is refused. */
  keep(answer: KeptAnswer | undefined): void {
    if (this.pending) this.kept = answer;
  }

  /** The pending retry goes to the upstream now: it is an attempt. */
  sending(): void {
    if (!this.pending) return;
    this.attempts++;
    this.retried.push(this.pending.outcome);
    this.pending = this.kept = undefined;
  }

  /**
   * The pending retry will not go (the breaker, a pause, the limits refused it, or the client left):
   * its place in the budget goes back. Returns the answer it was to replace, when kept.
   */
  refused(): KeptAnswer | undefined {
    if (!this.pending) return undefined;
    this.policy.giveBack(this.pending.ticket);
    const kept = this.kept;
    this.pending = this.kept = undefined;
    return kept;
  }

  /** Bodies up to this size are kept to be sent again. */
  get maxBodySize(): number {
    return this.policy.maxBodySize;
  }

  /** After an answer: the ms to wait before the retry, or undefined when the client gets this answer. */
  afterStatus(status: number, headers: Record<string, string | string[] | undefined>): number | undefined {
    if (!this.policy.retriesStatus(status, this.safety)) return undefined;
    const value = headers['retry-after'];
    return this.next(status, retryAfterMs(Array.isArray(value) ? value[0] : value, Date.now()));
  }

  /**
   * After a failure with no answer from the upstream: the ms to wait, or undefined. `answered`: the
   * upstream had started its answer (a failure mid-body is never retried).
   */
  afterError(err: unknown, answered: boolean): number | undefined {
    if (answered || !(err instanceof GatewayError)) return undefined;
    const kind = failureKind(err);
    if (kind === undefined || this.safety === 'unsafe' || (kind === 'headers' && this.safety !== 'idempotent')) return undefined;
    return this.next(err.code, undefined);
  }

  private next(outcome: number | string, retryAfter: number | undefined): number | undefined {
    // A decision while one is pending (not reachable today: forward.ts sends or refuses each one
    // first) replaces it: the pending retry will never go, so its place goes back to the budget.
    this.refused();
    if (this.never !== undefined || this.attempts > this.policy.config.attempts) return undefined;
    const waitMs = this.policy.waitMs(this.attempts - 1, retryAfter !== undefined && retryAfter > 0 ? retryAfter : undefined);
    if (performance.now() + waitMs > this.deadline) return undefined;
    // Last, so that a retry the other checks forbid takes nothing from the budget.
    const ticket = this.policy.take();
    if (ticket === undefined) return undefined;
    this.pending = { outcome, ticket };
    return waitMs;
  }
}

/**
 * Connection failures (the request did not reach the upstream's application, or reached it and the
 * connection broke before any answer) and headers timeouts (it may be processing the request).
 */
function failureKind(err: GatewayError): 'connect' | 'headers' | undefined {
  if (err.code === 'upstream_unreachable') return 'connect';
  if (err.code !== 'upstream_timeout') return undefined;
  const cause = (err.cause as { code?: unknown } | undefined)?.code;
  if (cause === 'UND_ERR_CONNECT_TIMEOUT') return 'connect';
  return cause === 'UND_ERR_HEADERS_TIMEOUT' ? 'headers' : undefined;
}

const SLOTS = 10;

/**
 * Retries allowed: `ratio` of the requests in the last `window` plus `minPerSecond` × window, counted
 * in SLOTS slots of window/SLOTS each (a slot's counts leave the window whole, at its end).
 *
 * Per upstream and per instance. That holds the cluster to the same ratio: each instance's retries
 * are at most `ratio` of its own requests (plus its floor), so their sum is at most `ratio` of the
 * sum of the requests, without a store round trip per retry.
 */
export class RetryBudget {
  private readonly requests = new Array<number>(SLOTS).fill(0);
  private readonly retries = new Array<number>(SLOTS).fill(0);
  private slot = 0;
  /** Slots since the budget began: a ticket's slot number, to find it again while it is in the window. */
  private slotNumber = 0;
  private slotStart: number;
  private readonly slotMs: number;
  private readonly floor: number;

  constructor(
    private readonly config: RetryConfig['budget'],
    private readonly clock: () => number,
  ) {
    this.slotMs = config.window / SLOTS;
    this.slotStart = clock();
    this.floor = (config.minPerSecond * config.window) / 1000;
  }

  request(): void {
    this.advance();
    this.requests[this.slot]!++;
  }

  /** Counts a retry when there is room: returns its ticket (for giveBack), or undefined. */
  take(): number | undefined {
    this.advance();
    if (sum(this.retries) + 1 > this.config.ratio * sum(this.requests) + this.floor) return undefined;
    this.retries[this.slot]!++;
    return this.slotNumber;
  }

  /** Uncounts a retry taken but never sent; one whose slot left the window is forgotten already. */
  giveBack(ticket: number): void {
    this.advance();
    const age = this.slotNumber - ticket;
    if (age < 0 || age >= SLOTS) return;
    const slot = (this.slot - age + SLOTS) % SLOTS;
    if (this.retries[slot]! > 0) this.retries[slot]!--;
  }

  /** Moves to the slot of now, emptying the slots that left the window. */
  private advance(): void {
    const passed = Math.floor((this.clock() - this.slotStart) / this.slotMs);
    if (passed <= 0) return;
    for (let i = 0; i < Math.min(passed, SLOTS); i++) {
      this.slot = (this.slot + 1) % SLOTS;
      this.requests[this.slot] = this.retries[this.slot] = 0;
    }
    this.slotNumber += passed;
    this.slotStart += passed * this.slotMs;
  }
}

/**
 * The retry budgets of the running policy, kept across reloads like breakers: an upstream whose
 * budget settings did not change keeps its counts, so a reload (a file watcher may make several a
 * minute) does not hand every upstream a fresh budget in the middle of a retry storm.
 */
export class RetryBudgets {
  private readonly budgets = new Map<string, RetryBudget>();

  constructor(private readonly clock: () => number = () => performance.now()) {}

  /** The upstream's budget: the running one when its settings are the same. */
  acquire(upstream: string, config: RetryConfig['budget']): RetryBudget {
    const id = JSON.stringify([upstream, config.ratio, config.window, config.minPerSecond]);
    let budget = this.budgets.get(id);
    if (!budget) {
      budget = new RetryBudget(config, this.clock);
      this.budgets.set(id, budget);
    }
    return budget;
  }

  /** Forgets the budgets no policy in `used` holds (after a reload swapped the policy). */
  retainOnly(used: ReadonlySet<RetryBudget>): void {
    for (const [id, budget] of this.budgets) if (!used.has(budget)) this.budgets.delete(id);
  }
}

function sum(counts: readonly number[]): number {
  let total = 0;
  for (const n of counts) total += n;
  return total;
}
