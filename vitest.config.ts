import { defineConfig } from 'vitest/config';

/**
 * Two groups, one after the other. Most files wait on sockets and timers far more than they
 * compute, so they run two at a time (vitest's default on this 2-core machine is one). The files
 * that measure rates and fair shares against the wall clock run alone, one at a time, so that no
 * other test's load skews what they measure.
 */
const MEASURING = ['test/fair-share.test.ts', 'test/limits.test.ts', 'test/limits-redis.test.ts', 'test/redis-cluster.test.ts'];

export default defineConfig({
  test: {
    // Child-process tests run the built gateway (dist/), as `npm start` does.
    globalSetup: ['test/helpers/build.ts'],
    pool: 'forks',
    testTimeout: 30_000,
    hookTimeout: 30_000,
    projects: [
      {
        extends: true,
        test: { name: 'measuring', include: MEASURING, maxWorkers: 1, sequence: { groupOrder: 1 } },
      },
      {
        extends: true,
        test: { name: 'concurrent', include: ['test/**/*.test.ts'], exclude: MEASURING, maxWorkers: 2, sequence: { groupOrder: 2 } },
      },
    ],
  },
});
