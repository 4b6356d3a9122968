import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../src/config/schema.js';
import { ERRORS } from '../src/errors.js';
import { schemaKeys } from './helpers/schema-keys.js';

const readme = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');

describe('README', () => {
  it('documents every error code with its status', () => {
    for (const [code, { status }] of Object.entries(ERRORS)) {
      expect(readme, code).toContain(`| \`${code}\` | ${status} |`);
    }
  });

  it('documents every routes.yaml key', () => {
    const keys = schemaKeys(configSchema);
    expect(keys.length).toBeGreaterThan(50);
    for (const key of keys) expect(readme, key).toContain(`| \`${key}\` |`);
  });

  it('gives the install and test commands that CI runs', () => {
    expect(readme).toContain('npm ci && npm start');
    expect(readFileSync(join(import.meta.dirname, '..', '.ci/run'), 'utf8')).toMatch(/^npm test$/m);
  });
});
