import { execFileSync } from 'node:child_process';

/** Builds dist/ once before the suite, so child-process tests run what `npm start` runs. */
export default function setup(): void {
  execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b'], { stdio: 'inherit' });
}
