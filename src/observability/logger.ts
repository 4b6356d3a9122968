/**
 * pino JSON logs that cannot leak a secret. Two layers: we log chosen fields only (never header
 * maps), and every line passes a scrubber that replaces each configured secret value — tenant
 * keys, upstream credentials, the admin token, OAuth2 tokens as they are obtained — wherever it
 * appears, whatever field it hid in. The scrubber's list follows config reloads.
 */
import { pino, type DestinationStream, type Logger } from 'pino';
import { BatchedLogWriter } from './log-writer.js';

export type { Logger };

export const REDACTED = '[REDACTED]';

export class SecretScrubber {
  private pattern: RegExp | undefined;
  private configured: readonly string[] = [];
  /** Tokens obtained at run time (OAuth2), newest last: the last LEARNED_KEPT of them. */
  private learned: string[] = [];

  /** Replace the set of configured secret values (on start and on every reload). */
  update(secrets: Iterable<string>): void {
    this.configured = [...secrets];
    this.compile();
  }

  /** A secret the gateway obtained (a refreshed token): redacted from now on. */
  learn(secret: string): void {
    if (secret.length < 4 || this.learned.includes(secret)) return;
    this.learned = [...this.learned, secret].slice(-LEARNED_KEPT);
    this.compile();
  }

  scrub(text: string): string {
    return this.pattern ? text.replace(this.pattern, REDACTED) : text;
  }

  private compile(): void {
    const forms = new Set<string>();
    for (const secret of [...this.configured, ...this.learned]) {
      if (secret.length === 0) continue;
      forms.add(secret);
      forms.add(JSON.stringify(secret).slice(1, -1)); // as it appears inside a JSON string
      forms.add(encodeURIComponent(secret)); // as it appears in a logged path
    }
    const alternatives = [...forms].sort((a, b) => b.length - a.length).map(escapeRegExp);
    this.pattern = alternatives.length > 0 ? new RegExp(alternatives.join('|'), 'g') : undefined;
  }
}

/**
 * Learned tokens kept redacted: the current and recent tokens of every OAuth2 upstream (a token
 * older than that expired long ago, hourly refreshes being the norm).
 */
const LEARNED_KEPT = 64;

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export interface LoggerOptions {
  level: string;
  scrubber: SecretScrubber;
  /** Where lines go; stdout by default. Tests pass a stream to capture them. */
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level,
      base: { service: 'sluice' },
      hooks: { streamWrite: (line) => options.scrubber.scrub(line) },
    },
    options.destination ?? new BatchedLogWriter(),
  );
}

const SECRET_QUERY_NAME = /key|token|secret|passw|auth|sig|session|credential|code/i;

/** The path for a log line: query values whose names suggest a secret are masked. */
export function loggablePath(path: string): string {
  const q = path.indexOf('?');
  if (q < 0) return path;
  const query = path
    .slice(q + 1)
    .split('&')
    .map((pair) => {
      const eq = pair.indexOf('=');
      return eq > 0 && SECRET_QUERY_NAME.test(pair.slice(0, eq)) ? `${pair.slice(0, eq)}=${REDACTED}` : pair;
    })
    .join('&');
  return `${path.slice(0, q)}?${query}`;
}
