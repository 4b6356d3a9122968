/**
 * Credential state of one instance (store.type: memory), with the same answers as token.lua.ts.
 * Calls are synchronous inside, so each is atomic by construction. Time comes from the injected
 * clock, so tests drive it instead of sleeping.
 */
import type { Clock } from './memory.js';
import type { CoolDownWatch, CredentialRecord, RefreshBudget, RefreshGrant, RefreshRequest, TokenStore } from './tokens.js';

const NOT_WATCHING: CoolDownWatch = { close: () => undefined };

interface CredentialState {
  /** Fences handed out so far (the last grant's fence). */
  fences: number;
  token: { sealed: string; expires: number; fence: number } | undefined;
  lock: { fence: number; until: number } | undefined;
  /** Token-endpoint calls, oldest first (only the budget window's are kept). */
  calls: number[];
  blockedUntil: number;
  revoked: string | undefined;
  /** Pool member → out of rotation until. */
  cooling: Map<number, number>;
}

export class MemoryTokenStore implements TokenStore {
  private readonly states = new Map<string, CredentialState>();

  constructor(private readonly clock: Clock = Date.now) {}

  read(key: string, budget: RefreshBudget): Promise<CredentialRecord> {
    const now = this.clock();
    const state = this.states.get(key);
    if (!state) {
      return Promise.resolve({
        token: undefined,
        refreshesInWindow: 0,
        lastRefreshAgoMs: undefined,
        blockedForMs: 0,
        revoked: undefined,
        lockedForMs: 0,
      });
    }
    const calls = state.calls.filter((at) => at > now - budget.perMs);
    const last = state.calls.at(-1);
    return Promise.resolve({
      token: state.token && { sealed: state.token.sealed, expiresInMs: state.token.expires - now, fence: state.token.fence },
      refreshesInWindow: calls.length,
      lastRefreshAgoMs: last === undefined ? undefined : now - last,
      blockedForMs: Math.max(0, state.blockedUntil - now),
      revoked: state.revoked,
      lockedForMs: state.lock && state.lock.until > now ? state.lock.until - now : 0,
    });
  }

  acquire(request: RefreshRequest): Promise<RefreshGrant> {
    const now = this.clock();
    const state = this.state(request.key);
    const { token, lock } = state;
    const budget = request.budget;
    if (state.revoked !== undefined && !request.force) return refuse('revoked', 0);
    if (!request.force && token && token.fence > request.replacing && token.expires - now > request.dueWithinMs) {
      return refuse('newer', 0);
    }
    if (lock && lock.until > now) return refuse('locked', lock.until - now);
    if (!request.force) {
      if (state.blockedUntil > now) return refuse('blocked', state.blockedUntil - now);
      const wait = budgetWaitMs(state.calls, budget, now);
      if (wait > 0) return refuse('budget', wait);
    }
    const fence = ++state.fences;
    state.lock = { fence, until: now + request.lockTtlMs };
    state.calls = [...state.calls.filter((at) => at > now - budget.perMs), now].slice(-Math.max(budget.max, 1));
    return Promise.resolve({ granted: true, fence });
  }

  publish(key: string, fence: number, sealed: string, ttlMs: number): Promise<boolean> {
    const state = this.state(key);
    if (fence < 1 || fence !== state.fences) return Promise.resolve(false);
    state.token = { sealed, expires: this.clock() + ttlMs, fence };
    state.lock = undefined;
    state.blockedUntil = 0;
    state.revoked = undefined;
    return Promise.resolve(true);
  }

  fail(key: string, fence: number, outcome: { blockMs?: number; revoked?: string }): Promise<void> {
    const state = this.state(key);
    if (state.lock?.fence === fence) state.lock = undefined;
    if (outcome.blockMs !== undefined) state.blockedUntil = Math.max(state.blockedUntil, this.clock() + outcome.blockMs);
    // Only the latest grant may revoke: a stalled holder's late answer must not undo a newer refresh.
    if (outcome.revoked !== undefined && fence === state.fences) state.revoked = outcome.revoked;
    return Promise.resolve();
  }

  coolDown(key: string, member: number, ms: number): Promise<void> {
    const state = this.state(key);
    state.cooling.set(member, Math.max(state.cooling.get(member) ?? 0, this.clock() + ms));
    return Promise.resolve();
  }

  cooling(key: string): Promise<Map<number, number>> {
    const now = this.clock();
    const left = new Map<number, number>();
    for (const [member, until] of this.states.get(key)?.cooling ?? []) if (until > now) left.set(member, until - now);
    return Promise.resolve(left);
  }

  /** One instance: there is nobody else whose cool-downs to hear. */
  watchCoolDowns(): CoolDownWatch {
    return NOT_WATCHING;
  }

  private state(key: string): CredentialState {
    let state = this.states.get(key);
    if (!state) {
      state = { fences: 0, token: undefined, lock: undefined, calls: [], blockedUntil: 0, revoked: undefined, cooling: new Map() };
      this.states.set(key, state);
    }
    return state;
  }
}

/**
 * How long until the budget allows one more call (0: now): a free slot in the window, and the
 * spacing after the last call. Shared by both stores' arithmetic (token.lua.ts ports it).
 */
export function budgetWaitMs(calls: readonly number[], budget: RefreshBudget, now: number): number {
  const inWindow = calls.filter((at) => at > now - budget.perMs);
  let wait = 0;
  // The window frees a slot when its oldest call that keeps it full leaves.
  if (inWindow.length >= budget.max) wait = inWindow[inWindow.length - budget.max]! + budget.perMs - now;
  const last = calls.at(-1);
  if (last !== undefined) wait = Math.max(wait, last + budget.everyMs - now);
  return Math.max(0, wait);
}

function refuse(reason: Exclude<RefreshGrant, { granted: true }>['reason'], retryAfterMs: number): Promise<RefreshGrant> {
  return Promise.resolve({ granted: false, reason, retryAfterMs });
}
