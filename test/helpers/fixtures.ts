/**
 * What a test file starts, closed after each test, last started first: call `perTestFixtures()` at
 * the top of the file, then start upstreams and gateways through it, or `onCleanup` anything else.
 */
import { afterEach } from 'vitest';
import { startGateway, type TestGateway } from './gateway.js';
import { startUpstream, type FakeUpstream } from './upstream.js';

export interface PerTestFixtures {
  /** Closed after the test that called it. */
  onCleanup(...cleanups: (() => Promise<void>)[]): void;
  upstream(): Promise<FakeUpstream>;
  gateway(yaml: string, env?: NodeJS.ProcessEnv): Promise<TestGateway>;
}

export function perTestFixtures(): PerTestFixtures {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  return {
    onCleanup: (...more) => void cleanups.push(...more),
    async upstream() {
      const up = await startUpstream();
      cleanups.push(() => up.close());
      return up;
    },
    async gateway(yaml, env = {}) {
      const gw = await startGateway(yaml, { env });
      cleanups.push(() => gw.close());
      return gw;
    },
  };
}
