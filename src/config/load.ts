/**
 * Reads routes.yaml into a validated Config: YAML parse, `${ENV}` substitution, schema, and the
 * checks that span several keys. Every problem is reported as `FILE:LINE path: message`, all of
 * them at once, so that one `sluice check` run shows everything to fix.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { isMap, isSeq, LineCounter, parseDocument, type Document, type Node } from 'yaml';
import type { z } from 'zod';
import { literalRange } from '../upstream/egress.js';
import { placehold, resolvePlaceholders } from './env.js';
import { formatPath, keyText, type ConfigPath } from './paths.js';
import { configSchema, type Config } from './schema.js';

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

export interface LoadedConfig {
  config: Config;
  /** The file it came from, as given. */
  source: string;
  /** Short hash of the file's text and the CA files it names: tells operators which version serves. */
  version: string;
  warnings: string[];
  /** Upstreams whose credentials reference unset environment variables, with those variables. */
  credentialsMissing: Map<string, string[]>;
  /** Tenants whose key references an unset environment variable: nobody can authenticate as them. */
  tenantsWithoutKey: Set<string>;
  /** Each upstream's `ca` file: its PEM certificates, read at load (a changed file is a new version). */
  upstreamCa: Map<string, string>;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host);
}

export async function loadConfigFile(file: string, env: NodeJS.ProcessEnv = process.env): Promise<LoadedConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError([`${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  return parseConfig(text, file, env);
}

export function parseConfig(text: string, source: string, env: NodeJS.ProcessEnv = process.env): LoadedConfig {
  const held = placehold(text, env);
  const lines = new LineCounter();
  const doc = parseDocument(held.text, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      doc.errors.map((e) => `${source}:${lines.linePos(e.pos[0]).line} YAML syntax: ${e.message.split(' at line')[0]}`),
    );
  }
  const missing = resolvePlaceholders(doc, held);
  const at = (path: ConfigPath, message: string) => `${source}:${lineOf(doc, lines, path)} ${formatPath(path)}: ${message}`;

  const problems: string[] = [];
  const warnings: string[] = [];
  const credentialsMissing = new Map<string, string[]>();
  const tenantsWithoutKey = new Set<string>();
  const upstreamCa = new Map<string, string>();
  for (const { path, names } of missing) {
    if (path[0] === 'upstreams' && path[2] === 'credentials') {
      const name = String(path[1]);
      credentialsMissing.set(name, [...(credentialsMissing.get(name) ?? []), ...names]);
    } else if (path[0] === 'tenants' && path[2] === 'key') {
      tenantsWithoutKey.add(String(path[1]));
      warnings.push(at(path, `${variables(names)} not set; tenant "${path[1]}" cannot authenticate`));
    } else {
      problems.push(at(path, `${variables(names)} not set and has no default (write \${NAME:-default})`));
    }
  }
  for (const [name, names] of credentialsMissing) {
    const path = ['upstreams', name, 'credentials'];
    warnings.push(at(path, `${variables(names)} not set; upstream "${name}" answers 503 credentials_missing until set`));
  }

  const parsed = configSchema.safeParse(doc.toJS() ?? {}, { reportInput: true });
  if (!parsed.success) {
    // An unset variable was reported already; the empty value it left is no second problem.
    const reported = new Set(missing.map((m) => formatPath(m.path)));
    for (const issue of parsed.error.issues) {
      if (!reported.has(formatPath(issue.path as ConfigPath))) problems.push(...describeIssue(issue, at));
    }
  } else {
    problems.push(...crossChecks(parsed.data, at), ...readCaFiles(parsed.data, dirname(source), upstreamCa, at));
  }
  if (problems.length > 0 || !parsed.success) throw new ConfigError(problems.sort(byLine));

  const version = createHash('sha256').update(text);
  for (const pem of upstreamCa.values()) version.update(pem);
  return {
    config: parsed.data,
    source,
    version: version.digest('hex').slice(0, 12),
    warnings,
    credentialsMissing,
    tenantsWithoutKey,
    upstreamCa,
  };
}

const lineNumber = (problem: string) => Number(/^[^\n]*?:(\d+) /.exec(problem)?.[1] ?? 0);
const byLine = (a: string, b: string) => lineNumber(a) - lineNumber(b);

type At = (path: ConfigPath, message: string) => string;

function describeIssue(issue: z.core.$ZodIssue, at: At): string[] {
  const path = issue.path as (string | number)[];
  switch (issue.code) {
    case 'unrecognized_keys':
      return issue.keys.map((key) => at([...path, key], 'is not a known key (see the README for the keys of routes.yaml)'));
    case 'invalid_type':
      return [at(path, issue.input === undefined ? 'is required' : `expected ${article(issue.expected)}, got ${describe(issue.input)}`)];
    case 'invalid_value':
      return [at(path, `${JSON.stringify(issue.input)} is not one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`)];
    case 'invalid_union':
      if ('discriminator' in issue && issue.discriminator !== undefined) {
        const options = (issue as { options?: unknown[] }).options ?? [];
        const value = (issue.input as Record<string, unknown> | undefined)?.[issue.discriminator];
        return [at(path, `${JSON.stringify(value)} is not one of ${options.map((o) => JSON.stringify(o)).join(', ')}`)];
      }
      if (issue.input === undefined) return [at(path, 'is required')];
      return describeUnion(issue.errors, path, at, issue.input);
    default:
      return [at(path, issue.message)];
  }
}

/**
 * A value that fits none of a union's shapes: report against the shape it got furthest into
 * (`onLimit: { queue: 2 seconds }` is a bad queue duration, not "not reject"); when it fits no
 * shape at all, say what the shapes were.
 */
function describeUnion(branches: z.core.$ZodIssue[][], path: (string | number)[], at: At, input: unknown): string[] {
  const depth = (issues: z.core.$ZodIssue[]) => Math.max(...issues.map((i) => i.path.length));
  const deepest = branches.reduce((best, b) => (depth(b) > depth(best) ? b : best), branches[0] ?? []);
  if (deepest.length > 0 && depth(deepest) > 0) {
    return deepest.flatMap((i) => describeIssue({ ...i, path: [...path, ...i.path] } as z.core.$ZodIssue, at));
  }
  const issues = branches.flat();
  if (issues.every((i) => i.code === 'invalid_type')) {
    const expected = issues.map((i) => (i as z.core.$ZodIssueInvalidType).expected).join(' or ');
    return [at(path, `expected ${expected}, got ${describe(input)}`)];
  }
  return [at(path, issues.map((i) => i.message.replace(/^Invalid input: /, '')).join(', or '))];
}

function crossChecks(config: Config, at: At): string[] {
  const problems: string[] = [];
  const hostOwner = new Map<string, string>();
  const prefixOwner = new Map<string, string>();
  for (const [name, up] of Object.entries(config.upstreams)) {
    up.match.hosts.forEach((host, i) => {
      const owner = hostOwner.get(host);
      if (owner) problems.push(at(['upstreams', name, 'match', 'hosts', i], `"${host}" is already matched by upstream "${owner}"`));
      hostOwner.set(host, name);
    });
    const prefix = up.match.prefix;
    if (prefix !== undefined) {
      const owner = prefixOwner.get(prefix);
      if (owner) problems.push(at(['upstreams', name, 'match', 'prefix'], `"${prefix}" is already the prefix of upstream "${owner}"`));
      prefixOwner.set(prefix, name);
    }
    const ruleNames = new Set<string>();
    up.limits.forEach((rule, i) => {
      if (ruleNames.has(rule.name)) problems.push(at(['upstreams', name, 'limits', i, 'name'], `"${rule.name}" is used twice`));
      ruleNames.add(rule.name);
      for (const tenant of Object.keys(rule.reserve ?? {})) {
        if (!config.tenants?.[tenant]) problems.push(at(['upstreams', name, 'limits', i, 'reserve', tenant], 'is not a tenant'));
      }
      const reserved = Object.values(rule.reserve ?? {}).reduce((sum, r) => sum + r.count / r.periodMs, 0);
      if (rule.rate && reserved > rule.rate.count / rule.rate.periodMs + 1e-12) {
        problems.push(at(['upstreams', name, 'limits', i, 'reserve'], `adds up to more than the rate (${rule.rate.text})`));
      }
      if (rule.per === 'credential' && up.credentials === undefined) {
        problems.push(at(['upstreams', name, 'limits', i, 'per'], 'per: credential needs credentials on the upstream'));
      }
    });
    problems.push(...credentialChecks(up.credentials, (path, message) => at(['upstreams', name, 'credentials', ...path], message)));
    // An address literal never reaches the connect-time check (there is nothing to resolve).
    const literals: [string[], string][] = [[['target'], up.target.hostname]];
    if (up.credentials?.type === 'oauth2') literals.push([['credentials', 'tokenUrl'], new URL(up.credentials.tokenUrl).hostname]);
    for (const [path, host] of literals) {
      const range = up.allowPrivate ? undefined : literalRange(host);
      if (range === undefined) continue;
      const refusal = `${host} is ${article(range)} address; the gateway refuses private destinations`;
      problems.push(at(['upstreams', name, ...path], `${refusal} unless the upstream sets allowPrivate: true`));
    }
  }
  if (config.tenants === undefined && !isLoopback(config.listen.proxy.host)) {
    problems.push(
      at(
        ['listen', 'proxy'],
        `without a tenants: section every client is let in with no key, which on ${config.listen.proxy.host} would make ` +
          "the gateway an open relay for the upstreams' credentials; add tenants with keys, or listen on 127.0.0.1",
      ),
    );
  }
  return problems;
}

function credentialChecks(credentials: Config['upstreams'][string]['credentials'], at: At): string[] {
  if (credentials?.type !== 'oauth2') return [];
  const problems: string[] = [];
  if (credentials.grant === 'refresh_token' && credentials.refreshToken === undefined) {
    problems.push(at(['refreshToken'], 'is required by grant refresh_token'));
  }
  if (credentials.grant === 'client_credentials' && credentials.refreshToken !== undefined) {
    problems.push(at(['refreshToken'], 'is not used by grant client_credentials; remove it'));
  }
  return problems;
}

/**
 * Reads each upstream's `ca` (relative to the config file's folder) into `into`, keeping only its
 * certificates: a file that cannot be read or holds none is a config error now, not a failed TLS
 * handshake later.
 */
function readCaFiles(config: Config, folder: string, into: Map<string, string>, at: At): string[] {
  const problems: string[] = [];
  for (const [name, up] of Object.entries(config.upstreams)) {
    if (up.ca === undefined) continue;
    const path = ['upstreams', name, 'ca'];
    if (up.target.protocol !== 'https:') {
      problems.push(at(path, 'goes with an https:// target'));
      continue;
    }
    let text: string;
    try {
      text = readFileSync(resolve(folder, up.ca), 'utf8');
    } catch (err) {
      problems.push(at(path, `cannot read ${up.ca}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`));
      continue;
    }
    const certificates = text.match(/-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/g) ?? [];
    if (certificates.length === 0 || !certificates.every(parsesAsCertificate)) problems.push(at(path, `${up.ca} is not a PEM certificate`));
    else into.set(name, `${certificates.join('\n')}\n`);
  }
  return problems;
}

function parsesAsCertificate(pem: string): boolean {
  try {
    new X509Certificate(pem);
    return true;
  } catch {
    return false;
  }
}

/** The line of the key (or item) at `path`, or of its deepest existing ancestor. */
function lineOf(doc: Document, lines: LineCounter, path: ConfigPath): number {
  let node: Node | null | undefined = doc.contents;
  let offset = node?.range?.[0] ?? 0;
  for (const part of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => keyText(p.key) === String(part));
      if (!pair) break;
      offset = (pair.key as Node | null)?.range?.[0] ?? offset;
      node = pair.value as Node | null;
    } else if (isSeq(node) && typeof part === 'number' && node.items[part]) {
      node = node.items[part] as Node;
      offset = node.range?.[0] ?? offset;
    } else {
      break;
    }
  }
  return lines.linePos(offset).line;
}

function variables(names: string[]): string {
  return names.length === 1 ? `environment variable ${names[0]} is` : `environment variables ${names.join(', ')} are`;
}

function article(type: string): string {
  return /^[aeiou]/i.test(type) ? `an ${type}` : `a ${type}`;
}

function describe(value: unknown): string {
  if (value === null) return 'nothing';
  if (Array.isArray(value)) return 'a list';
  if (typeof value === 'object') return 'a mapping';
  return `${typeof value} ${JSON.stringify(value)}`;
}
