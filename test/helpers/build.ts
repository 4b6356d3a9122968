import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * Builds dist/ once before the suite, so child-process tests run what `npm start` runs, and
 * gives the run one temp folder (for configs and logs) that is removed when it ends.
 */
export default function setup(): () => void {
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b'], { stdio: 'inherit' });
  const dir = mkdtempSync(join(tmpdir(), 'sluice-tests-'));
  process.env.SLUICE_TEST_TMP = dir;
  return () => rmSync(dir, { recursive: true, force: true });
}
