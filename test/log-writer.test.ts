import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BatchedLogWriter } from '../src/observability/log-writer.js';
import { tempDir } from './helpers/gateway.js';

describe('BatchedLogWriter', () => {
  it('writes the lines of one turn together, in order, after the turn', async () => {
    const file = join(tempDir(), 'out.log');
    const fd = openSync(file, 'w');
    const writer = new BatchedLogWriter(fd);
    for (let i = 0; i < 100; i++) writer.write(`line ${i}\n`);
    expect(readFileSync(file, 'utf8')).toBe(''); // nothing written inside the turn
    await new Promise((r) => setImmediate(r));
    expect(readFileSync(file, 'utf8')).toBe(Array.from({ length: 100 }, (_, i) => `line ${i}\n`).join(''));
    writer.write('last, flushed synchronously\n');
    writer.flushSync();
    expect(readFileSync(file, 'utf8')).toMatch(/line 99\nlast, flushed synchronously\n$/);
    closeSync(fd);
  });

  it('drops lines instead of failing when its descriptor is unusable', () => {
    const writer = new BatchedLogWriter(987_654); // no such descriptor: EBADF
    writer.write('lost\n');
    expect(() => writer.flushSync()).not.toThrow();
    writer.write('lost too\n');
    expect(writer.dropped).toBe(2);
  });
});
