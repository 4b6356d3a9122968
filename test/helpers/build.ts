import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Builds dist/ once before the suite, so child-process tests run what `npm start` runs, and
 * gives the run one temp folder (for configs and logs) that is removed when it ends.
 */
export default function setup(): () => void {
  // SLUICE_TEST_NO_BUILD=1: in-process tests only, while the tree does not build (never in CI).
  if (process.env.SLUICE_TEST_NO_BUILD !== '1' || process.env.CI) {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b'], { stdio: 'inherit' });
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-tests-'));
  process.env.SLUICE_TEST_TMP = dir;
  return () => rmSync(dir, { recursive: true, force: true });
}
