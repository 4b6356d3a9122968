/**
 * The wait queue on its own: an admission the store gives to a lane's head stays the head's (it
 * carries the head's lease), even when a request of higher priority joined while the store was
 * answering; it goes to the next in line only when the head has left.
 */
import { describe, expect, it } from 'vitest';
import { WaitQueue, type Attempt } from '../src/limits/queue.js';

function controlled() {
  let answer: (a: Attempt<string>) => void = () => undefined;
  const attempt = () => new Promise<Attempt<string>>((resolve) => (answer = resolve));
  return { attempt, answer: (a: Attempt<string>) => answer(a) };
}

describe('WaitQueue', () => {
  it("keeps an admission with the head whose lease it carries when a higher priority joins mid-answer", async () => {
    const discarded: string[] = [];
    const queue = new WaitQueue<string>((v) => discarded.push(v));
    const store = controlled();
    const common = { group: 'api', lane: 'api/acme', deadline: performance.now() + 5_000, signal: new AbortController().signal };
    const head = queue.wait({ ...common, rank: 2, attempt: store.attempt });
    await new Promise((r) => setImmediate(r)); // the head is asking the store now
    const critical = queue.wait({ ...common, rank: 0, attempt: () => Promise.resolve({ admitted: true, waitMs: 0, value: 'critical-lease' }) });
    store.answer({ admitted: true, waitMs: 0, value: 'head-lease' });
    expect(await head).toEqual({ outcome: 'admitted', value: 'head-lease' });
    expect(await critical).toEqual({ outcome: 'admitted', value: 'critical-lease' });
    expect(discarded).toEqual([]);
  });

  it('hands the admission to the next in line when the head left while the store answered', async () => {
    const queue = new WaitQueue<string>(() => undefined);
    const store = controlled();
    const gone = new AbortController();
    const common = { group: 'api', lane: 'api/acme', rank: 2, deadline: performance.now() + 5_000 };
    const head = queue.wait({ ...common, signal: gone.signal, attempt: store.attempt }).catch((err: Error) => err.name);
    const next = queue.wait({ ...common, signal: new AbortController().signal, attempt: store.attempt });
    await new Promise((r) => setImmediate(r));
    gone.abort();
    store.answer({ admitted: true, waitMs: 0, value: 'slot' });
    expect(await head).toBe('QueueAbortedError');
    expect(await next).toEqual({ outcome: 'admitted', value: 'slot' });
    expect(queue.sizeOf('api')).toBe(0);
  });

  it('reads X-Sluice-Priority by its own names only', async () => {
    const { priorityRank } = await import('../src/limits/queue.js');
    expect(['critical', 'HIGH', ' low ', 'constructor', '__proto__', undefined].map((v) => priorityRank(v))).toEqual([0, 1, 3, 2, 2, 2]);
  });
});
