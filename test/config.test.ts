import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../src/config/load.js';
import { parseDuration, parseRate, parseSize } from '../src/config/units.js';
import { writeConfig } from './helpers/gateway.js';

const run = promisify(execFile);
const INVALID = join(import.meta.dirname, 'fixtures/invalid');

function problemsOf(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(text, 'routes.yaml', env);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('invalid configs: each fixture names its exact errors in "# error:" lines', () => {
  for (const file of readdirSync(INVALID)) {
    it(file, () => {
      const text = readFileSync(join(INVALID, file), 'utf8');
      const expected = text
        .split('\n')
        .filter((l) => l.startsWith('# error: '))
        .map((l) => l.slice('# error: '.length));
      expect(expected.length).toBeGreaterThan(0);
      expect(problemsOf(text)).toEqual(expected);
    });
  }
});

describe('valid configs', () => {
  it('accepts the repository routes.yaml and the reference shape', () => {
    // The design folder sits beside the repository in the workspace, not in a clone of it alone.
    const reference = '../shared/design/routes.reference.yaml';
    const files = ['routes.yaml', ...(existsSync(join(import.meta.dirname, '..', reference)) ? [reference] : [])];
    for (const file of files) {
      const loaded = parseConfig(readFileSync(join(import.meta.dirname, '..', file), 'utf8'), file, {});
      expect(Object.keys(loaded.config.upstreams)).toEqual(['twilio', 'baselinker', 'servicedesk']);
      expect([...loaded.credentialsMissing.keys()]).toEqual(['twilio', 'baselinker', 'servicedesk']);
    }
  });

  it('derives numbers once: rates, durations, sizes, defaults', () => {
    const { config } = parseConfig(
      `upstreams:
  a:
    match: { prefix: /a }
    target: http://127.0.0.1:1/base/
    allowPrivate: true
    limits: [{ name: r, rate: 100/min, burst: 5 }, { name: q, quota: 20000/day, per: tenant }]
    onLimit: { queue: 2s }
    maxBodySize: 1mb
`,
      'routes.yaml',
      {},
    );
    const a = config.upstreams.a!;
    expect(a.limits[0]!.rate).toEqual({ count: 100, periodMs: 60_000, text: '100/min' });
    expect(a.limits[1]!.quota?.periodMs).toBe(86_400_000);
    expect(a.onLimit).toEqual({ queue: 2000, maxQueue: 1000 });
    expect(a.maxBodySize).toBe(1024 * 1024);
    expect(a.timeouts).toEqual({ connect: 5000, headers: 30000, bodyIdle: 30000 });
    expect(config.listen.proxy).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.store.type).toBe('memory');
  });
});

describe('${ENV} substitution', () => {
  const yaml = `# a comment with \${NOT_A_VARIABLE} in it
listen:
  proxy: 127.0.0.1:\${PORT:-8181}
tenants:
  acme: { key: "\${ACME_KEY}" }
upstreams:
  a:
    match: { hosts: [\${HOST_A}, literal.example.com], prefix: /a }
    target: \${TARGET:-http://127.0.0.1:1}
    credentials:
      type: pool
      header: X-Token
      tokens: [\${T1}, \${T2:-fallback-token}]
      format: "$\${not} {token}"
    allowPrivate: true
`;

  it('substitutes inside flow sequences and quotes, keeps types and literal $${', () => {
    const { config, warnings } = parseConfig(yaml, 'routes.yaml', {
      ACME_KEY: 'k: with # odd "chars"',
      HOST_A: 'a.example.com',
      T1: 'token-one',
    });
    expect(warnings).toEqual([]);
    expect(config.listen.proxy.port).toBe(8181);
    expect(config.tenants?.acme?.key).toBe('k: with # odd "chars"');
    expect(config.upstreams.a!.match.hosts).toEqual(['a.example.com', 'literal.example.com']);
    expect(config.upstreams.a!.credentials).toMatchObject({ tokens: ['token-one', 'fallback-token'], format: '${not} {token}' });
    expect(config.upstreams.a!.target.href).toBe('http://127.0.0.1:1/');
  });

  it('treats unset secrets as a warning for that upstream or tenant, not an error', () => {
    const loaded = parseConfig(yaml, 'routes.yaml', { HOST_A: 'a.example.com' });
    expect(loaded.credentialsMissing.get('a')).toEqual(['T1']);
    expect([...loaded.tenantsWithoutKey]).toEqual(['acme']);
    expect(loaded.warnings).toEqual([
      'routes.yaml:5 tenants.acme.key: environment variable ACME_KEY is not set; tenant "acme" cannot authenticate',
      'routes.yaml:10 upstreams.a.credentials: environment variable T1 is not set; upstream "a" answers 503 credentials_missing until set',
    ]);
  });

  it('reports an unset variable elsewhere as an error on its line', () => {
    expect(problemsOf(yaml, { ACME_KEY: 'k', T1: 't' })).toEqual([
      'routes.yaml:8 upstreams.a.match.hosts[0]: environment variable HOST_A is not set and has no default (write ${NAME:-default})',
    ]);
  });
});

describe('secrets and timeouts', () => {
  it('keeps a secret that looks like a number as text, digits intact', () => {
    const yaml = 'tenants:\n  a: { key: ${K1} }\n  b: { key: ${K2} }\nupstreams:\n  x: { match: { prefix: /x }, target: "http://127.0.0.1:1", allowPrivate: true }\n';
    const { config } = parseConfig(yaml, 'routes.yaml', { K1: '20240101', K2: '0123' });
    expect(config.tenants?.a?.key).toBe('20240101');
    expect(config.tenants?.b?.key).toBe('0123');
  });

  it('refuses an empty adminToken (an unset ${VAR:-} would let an empty Bearer through)', () => {
    expect(problemsOf('listen: { adminToken: "${ADMIN_TOKEN:-}" }\nupstreams: {}\n')).toEqual([
      'routes.yaml:1 listen.adminToken: must not be empty (leave the key out to have no admin token)',
    ]);
  });

  it('refuses a headersTimeout longer than requestTimeout (Node would refuse to start)', () => {
    expect(problemsOf('listen: { requestTimeout: 5s }\nupstreams: {}\n')).toEqual([
      'routes.yaml:1 listen.headersTimeout: headersTimeout must not be longer than requestTimeout',
    ]);
  });
});

describe('units', () => {
  it('parses the documented forms and nothing else', () => {
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('1.5s')).toBe(1500);
    expect(parseDuration('1.1s')).toBe(1100); // whole milliseconds, as Node's timeouts need
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('2 seconds')).toBeUndefined();
    expect(parseRate('100/min')).toMatchObject({ count: 100, periodMs: 60_000 });
    expect(parseRate('10/day')).toMatchObject({ periodMs: 86_400_000 });
    expect(parseRate('1/sec')).toBeUndefined();
    expect(parseRate('0/s')).toBeUndefined();
    expect(parseSize('64kb')).toBe(65_536);
    expect(parseSize('10MB')).toBe(10 * 1024 * 1024);
    expect(parseSize('lots')).toBeUndefined();
  });
});

describe('sluice check', () => {
  it('exits 0 for a valid file, naming the warnings', async () => {
    const { stdout } = await run(process.execPath, ['dist/cli.js', 'check', 'routes.yaml'], { env: { PATH: process.env.PATH } });
    expect(stdout).toContain('routes.yaml: ok (3 upstreams, 2 tenants');
    expect(stdout).toContain('warning: routes.yaml:34 upstreams.twilio.credentials: environment variables TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN are not set');
  });

  it('exits 1 for an invalid file with every error on stderr', async () => {
    const file = writeConfig(readFileSync(join(INVALID, 'bad-target.yaml'), 'utf8'));
    const failure = await run(process.execPath, ['dist/cli.js', 'check', file]).then(
      () => undefined,
      (err: { code: number; stderr: string }) => err,
    );
    expect(failure?.code).toBe(1);
    expect(failure?.stderr).toContain(`${file}:6 upstreams.a.target: "ftp://files.example.com" must be an http:// or https:// URL`);
    expect(failure?.stderr).toContain(`${file}: 2 errors`);
  });

  it('refuses to start on an invalid file, saying why', async () => {
    const file = writeConfig(readFileSync(join(INVALID, 'open-relay.yaml'), 'utf8'));
    const failure = await run(process.execPath, ['dist/cli.js', 'start', '--config', file]).then(
      () => undefined,
      (err: { code: number; stderr: string }) => err,
    );
    expect(failure?.code).toBe(1);
    expect(failure?.stderr).toContain('would make the gateway an open relay');
  });
});
