/**
 * The schema of routes.yaml (the keys of ../shared/design/routes.reference.yaml, extended where a
 * feature needs it; every key is documented in the README). Unknown keys are errors, and the
 * textual units (durations, rates, sizes, addresses) become numbers here, once.
 */
import { z } from 'zod';
import { DURATION_HINT, RATE_HINT, SIZE_HINT, parseDuration, parseRate, parseSize, type Rate } from './units.js';

function unit<T>(parse: (v: string) => T | undefined, what: string, hint: string) {
  return z.union([z.string(), z.number()]).transform((value, ctx): T => {
    const parsed = parse(String(value));
    if (parsed === undefined) {
      ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not ${what}; ${hint}` });
      return z.NEVER;
    }
    return parsed;
  });
}

const duration = unit((v) => parseDuration(v), 'a duration', DURATION_HINT);
const size = unit((v) => parseSize(v), 'a size', SIZE_HINT);
const rate = unit<Rate>(parseRate, 'a rate', RATE_HINT);
const quota = unit<Rate>(
  (v) => {
    const r = parseRate(v);
    return r && (r.periodMs === 3_600_000 || r.periodMs === 86_400_000) ? r : undefined;
  },
  'a quota',
  'use N/h or N/day (calendar hours and days, UTC)',
);

export interface Address {
  host: string;
  port: number;
}

/** "0.0.0.0:8080", "[::1]:9090", "localhost:0". */
export function parseAddress(text: string): Address | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]+)):(\d{1,5})$/.exec(text.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65_535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

const address = unit(parseAddress, 'an address', 'use HOST:PORT, like "127.0.0.1:8080" or "[::1]:8080"');

/**
 * A secret: may be empty when its environment variable is unset (the loader decides what that
 * means). A secret that happens to look like a number (`key: ${KEY}` with KEY=20240101) is still
 * text, and a wrong type is reported without echoing the value.
 */
const secret = z
  .union([z.string(), z.number(), z.boolean()], { error: 'must be text' })
  .transform((value) => String(value));

const NAME = /^[A-Za-z0-9_.-]+$/;
const NAME_HINT = 'must be letters, digits, "_", "." or "-"';

const targetUrl = z.string().transform((value, ctx) => {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} is not a URL; use http(s)://host[:port][/base/path]` });
    return z.NEVER;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} must be an http:// or https:// URL` });
    return z.NEVER;
  }
  if (url.search || url.hash || url.username || url.password) {
    ctx.addIssue({ code: 'custom', message: `${JSON.stringify(value)} must not carry a query, fragment or credentials` });
    return z.NEVER;
  }
  return url;
});

const redisUrl = z.string().refine(
  (value) => value.split(',').every((u) => /^rediss?:\/\/[^\s/]+(\/\d+)?$/.test(u.trim())),
  'must be redis://[user:password@]host:port[/db] (rediss:// for TLS), or several of them for Redis Cluster',
);

const hostPattern = z
  .string()
  .regex(/^(\*\.)?[A-Za-z0-9.-]+(:\d{1,5})?$/, 'is not a host name; use "api.example.com" or "*.example.com"')
  .transform((h) => h.toLowerCase());

const prefix = z
  .string()
  .regex(/^\/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*[^/]$/, 'must start with "/" and not end with "/", like "/twilio"');

const methodList = z
  .union([z.string(), z.array(z.string())])
  .transform((m) => (Array.isArray(m) ? m : [m]).map((x) => x.toUpperCase()));

const ruleMatch = z.strictObject({
  method: methodList.optional(),
  path: z
    .string()
    .regex(/^\/[^\s?#]*$/, 'must be a path starting with "/" ("*" matches within a segment, "**" across segments), without a query')
    // Two "**" make a backtracking match that a long request path can keep busy for seconds.
    .refine((p) => p.split('**').length <= 2, 'may hold "**" once')
    .optional(),
});

/** enforce: refuse past the limit; shadow: evaluate and report (logs, headers) but never refuse. */
const mode = z.enum(['enforce', 'shadow']);

const limitRule = z
  .strictObject({
    name: z.string().regex(NAME, NAME_HINT),
    match: ruleMatch.optional(),
    rate: rate.optional(),
    burst: z.number().int().positive().optional(),
    concurrency: z.number().int().positive().optional(),
    quota: quota.optional(),
    per: z.enum(['upstream', 'credential', 'tenant']).default('upstream'),
    share: z.enum(['fair']).optional(),
    reserve: z.record(z.string(), rate).optional(),
    mode: mode.optional(),
  })
  .superRefine((rule, ctx) => {
    const kinds = (['rate', 'concurrency', 'quota'] as const).filter((k) => rule[k] !== undefined);
    if (kinds.length !== 1) {
      ctx.addIssue({ code: 'custom', message: 'needs exactly one of rate, concurrency or quota' });
    }
    if (rule.burst !== undefined && rule.rate === undefined) {
      ctx.addIssue({ code: 'custom', path: ['burst'], message: 'goes with rate' });
    }
    if (rule.share !== undefined && rule.rate === undefined) {
      ctx.addIssue({ code: 'custom', path: ['share'], message: 'applies to rate rules' });
    }
    if (rule.share !== undefined && rule.per === 'tenant') {
      ctx.addIssue({ code: 'custom', path: ['share'], message: 'has nothing to share with per: tenant (every tenant has its own limit)' });
    }
    if (rule.reserve !== undefined && rule.share === undefined) {
      ctx.addIssue({ code: 'custom', path: ['reserve'], message: 'goes with share: fair' });
    }
  });

const basicCredentials = z.strictObject({ type: z.literal('basic'), username: secret, password: secret });
const headerCredentials = z.strictObject({
  type: z.literal('header'),
  header: z.string().min(1),
  value: secret,
  format: z.string().includes('{token}').optional(),
});
const poolCredentials = z.strictObject({
  type: z.literal('pool'),
  header: z.string().min(1),
  tokens: z.array(secret).min(1),
  format: z.string().includes('{token}').optional(),
  /** A token the upstream answers 401 or 403 to is out of rotation this long, on every instance. */
  coolDown: duration.default(300_000),
});
const oauth2Credentials = z.strictObject({
  type: z.literal('oauth2'),
  grant: z.enum(['refresh_token', 'client_credentials']),
  tokenUrl: z.url({ protocol: /^https?$/ }),
  clientId: secret,
  clientSecret: secret,
  refreshToken: secret.optional(),
  scope: z.string().optional(),
  /** How the client id and secret travel: form fields (body, as Zoho wants) or HTTP Basic (RFC 6749 §2.3.1). */
  clientAuth: z.enum(['body', 'basic']).default('body'),
  header: z.string().min(1).default('Authorization'),
  format: z.string().includes('{token}').default('Bearer {token}'),
  refreshBefore: duration.default(300_000),
  refreshLimit: z
    .strictObject({ every: duration.default(0), max: z.number().int().positive(), per: duration })
    .default({ every: 0, max: 10, per: 600_000 }),
  /** Longest wait for the token endpoint's answer. */
  timeout: duration.default(10_000),
});

const credentials = z.discriminatedUnion('type', [basicCredentials, headerCredentials, poolCredentials, oauth2Credentials]);

/**
 * A circuit breaker (upstream/breaker.ts): opens after `failures` failures, or past a failure
 * `ratio` over at least `minRequests` requests, within `window`; refuses for `cooldown`; then lets
 * `probes` requests through, whose outcome closes or reopens it.
 */
const breaker = z
  .strictObject({
    failures: z.number().int().positive().optional(),
    ratio: z.number().gt(0, 'must be more than 0').lt(1, 'must be less than 1').optional(),
    minRequests: z.number().int().positive().optional(),
    window: duration.default(30_000),
    cooldown: duration.default(30_000),
    probes: z.number().int().positive().default(1),
    on: z
      .array(z.number().int().min(500, 'must be a 5xx status (a 4xx is not the upstream failing)').max(599, 'must be a 5xx status'))
      .min(1)
      .optional(),
    per: z.enum(['upstream', 'credential']).optional(),
  })
  .superRefine((b, ctx) => {
    if (b.minRequests !== undefined && b.ratio === undefined) ctx.addIssue({ code: 'custom', path: ['minRequests'], message: 'goes with ratio' });
    // Ten buckets of at least 10 ms each (opossum's rolling window).
    if (b.window < 100) ctx.addIssue({ code: 'custom', path: ['window'], message: 'must be at least 100ms' });
    if (b.cooldown <= 0) ctx.addIssue({ code: 'custom', path: ['cooldown'], message: 'must be more than 0' });
  })
  // Without a ratio, the reference shape's count: 5 failures.
  .transform((b) => ({ ...b, failures: b.failures ?? (b.ratio === undefined ? 5 : undefined) }));

/** A regular expression of the config, compiled once; it must capture the time (group `until`, or a first group). */
const timePattern = z.string().transform((source, ctx): RegExp => {
  let pattern: RegExp;
  try {
    pattern = new RegExp(source);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: `is not a regular expression (${(err as Error).message})` });
    return z.NEVER;
  }
  // An empty alternative always matches, and shows how many groups the pattern has.
  if ((new RegExp(`${source}|`).exec('')?.length ?? 1) < 2) {
    ctx.addIssue({ code: 'custom', message: 'needs a group around the time, like "until (?<until>[0-9: -]+)"' });
    return z.NEVER;
  }
  return pattern;
});

const timezone = z.string().refine((zone) => {
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
    return true;
  } catch {
    return false;
  }
}, 'is not an IANA time zone, like "UTC" or "Europe/Warsaw"');

/**
 * A `feedback.body` rule (limits/feedback.ts): a small JSON body whose value at `path` equals
 * `equals` is the upstream saying 429; `until` finds the time to pause until in its text.
 */
const bodyRule = z
  .strictObject({
    path: z.string().regex(/^[^.\s]+(\.[^.\s]+)*$/, 'must be a dot path into the JSON body, like "error_code" or "error.code"'),
    equals: z.union([z.string(), z.number(), z.boolean()]),
    until: timePattern.optional(),
    timezone: timezone.default('UTC'),
    pause: duration.default(60_000),
  })
  .transform((r) => ({ path: r.path.split('.'), equals: r.equals, until: r.until, timezone: r.timezone, pauseMs: r.pause }));

/** Limits learned from the upstream's answers: its headers (on by default) and `body` rules. */
const feedback = z
  .strictObject({
    headers: z.boolean().default(true),
    maxPause: duration.refine((ms) => ms > 0, 'must be more than 0').default(3_600_000),
    // Bodies up to this size may be held in memory until their end.
    maxBodySize: size.refine((bytes) => bytes <= 1024 * 1024, 'must be at most 1mb').default(16 * 1024),
    body: z.array(bodyRule).default([]),
  });

/** Statuses a retry may follow: an upstream's answer, never a gateway-made one or a 1xx/2xx. */
const retryStatus = z.number().int().min(400, 'must be a 4xx or 5xx status').max(599, 'must be a 4xx or 5xx status');

/**
 * Retries (upstream/retry.ts): which answers are retried (`on` for idempotent or keyed requests,
 * `unprocessed` for any method), how often, how long apart, within which time and which budget.
 */
const retry = z
  .strictObject({
    on: z.array(retryStatus).default([]),
    /** Retries after the first attempt (the reference shape's `attempts: 2` is three requests at most). */
    attempts: z.number().int().min(0).max(10, 'must be at most 10').default(2),
    methods: methodList.default(['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE', 'TRACE']),
    unprocessed: z.array(retryStatus).default([]),
    idempotencyKey: z.enum(['keep', 'generate']).default('keep'),
    backoff: z
      .strictObject({ base: duration.default(100), max: duration.default(2_000) })
      .prefault({})
      .refine((b) => b.base > 0, { message: 'must be more than 0', path: ['base'] })
      .refine((b) => b.max >= b.base, { message: 'must not be shorter than base', path: ['max'] }),
    budget: z
      .strictObject({
        ratio: z.number().gt(0, 'must be more than 0').max(1, 'must be at most 1').default(0.2),
        window: duration.refine((ms) => ms >= 1_000, 'must be at least 1s').default(10_000),
        minPerSecond: z.number().min(0).default(1),
      })
      .prefault({}),
    within: duration.refine((ms) => ms > 0, 'must be more than 0').default(10_000),
    // Bodies up to this size are kept in memory to be sent again.
    maxBodySize: size.refine((bytes) => bytes <= 1024 * 1024, 'must be at most 1mb').default(64 * 1024),
  });

const upstream = z
  .strictObject({
    match: z
      .strictObject({ hosts: z.array(hostPattern).default([]), prefix: prefix.optional() })
      .refine((m) => m.hosts.length > 0 || m.prefix !== undefined, 'needs hosts, a prefix, or both'),
    target: targetUrl,
    /** Let the target resolve to loopback, private, link-local and other non-public addresses (src/upstream/egress.ts). */
    allowPrivate: z.boolean().default(false),
    /** A PEM file of CA certificates trusted for the target's TLS besides the default roots; read by the loader. */
    ca: z.string().min(1).optional(),
    intercept: z.boolean().default(true),
    credentials: credentials.optional(),
    limits: z.array(limitRule).default([]),
    onLimit: z
      .union([
        z.literal('reject'),
        z.strictObject({ queue: duration, maxQueue: z.number().int().positive().default(1000) }),
      ])
      .default('reject'),
    mode: mode.default('enforce'),
    breaker: breaker.optional(),
    feedback: feedback.prefault({}),
    retry: retry.optional(),
    timeouts: z
      .strictObject({
        connect: duration.default(5_000),
        headers: duration.default(30_000),
        bodyIdle: duration.default(30_000),
      })
      .prefault({}),
    connections: z.number().int().positive().default(128),
    maxBodySize: size.optional(),
  })
  .refine((u) => u.breaker?.per !== 'credential' || u.credentials?.type === 'pool', {
    message: 'per: credential needs credentials of type pool',
    path: ['breaker', 'per'],
  });

const tenant = z.strictObject({ key: secret, weight: z.number().positive().default(1) });

export const configSchema = z.strictObject({
  listen: z
    .strictObject({
      proxy: address.default({ host: '127.0.0.1', port: 8080 }),
      admin: address.default({ host: '127.0.0.1', port: 9090 }),
      // An empty token (say `${ADMIN_TOKEN:-}` with the variable unset) would let `Bearer ` with nothing through.
      adminToken: secret.refine((value) => value.length > 0, { error: 'must not be empty (leave the key out to have no admin token)' }).optional(),
      maxHeaderSize: size.default(16 * 1024),
      maxBodySize: size.default(32 * 1024 * 1024),
      headersTimeout: duration.default(10_000),
      requestTimeout: duration.default(300_000),
      keepAliveTimeout: duration.default(5_000),
      drainTimeout: duration.default(30_000),
      idleTimeout: duration.default(120_000),
      /** CONNECT tunnels open at once on this instance, intercepted and blind: each holds sockets and TLS state. */
      maxTunnels: z.number().int().positive().default(4096),
    })
    .prefault({})
    .refine((l) => l.headersTimeout <= l.requestTimeout, {
      message: 'headersTimeout must not be longer than requestTimeout',
      path: ['headersTimeout'],
    }),
  store: z
    .strictObject({
      type: z.enum(['memory', 'redis']).default('memory'),
      url: z.union([redisUrl, z.array(redisUrl).min(1)]).optional(),
      onError: z.enum(['local', 'deny', 'allow']).default('local'),
      prefix: z.string().regex(/^[A-Za-z0-9_.:-]+$/, 'must be letters, digits, "_", ".", ":" or "-"').default('sluice'),
      timeout: duration.default(250),
      leaseTtl: duration.default(30_000),
      /** Seals OAuth2 tokens kept in the store (AES-256-GCM); give it from the environment. */
      tokenKey: secret.optional(),
    })
    .prefault({})
    .refine((s) => s.type !== 'redis' || s.url !== undefined, { message: 'type redis needs url', path: ['url'] })
    .refine((s) => s.timeout > 0, { message: 'must be more than 0', path: ['timeout'] })
    .refine((s) => s.leaseTtl >= 3_000, { message: 'must be at least 3s (leases are renewed every third of it)', path: ['leaseTtl'] })
    .refine((s) => s.tokenKey === undefined || s.tokenKey.length >= 16, {
      message: 'must be at least 16 characters (32 random bytes in base64: openssl rand -base64 32)',
      path: ['tokenKey'],
    }),
  tls: z
    .strictObject({ caDir: z.string().default('./.sluice/ca'), caCert: z.string().optional(), caKey: z.string().optional() })
    .prefault({}),
  log: z
    .strictObject({ level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info') })
    .prefault({}),
  tenants: z.record(z.string().regex(NAME, NAME_HINT), tenant).optional(),
  upstreams: z.record(z.string().regex(NAME, NAME_HINT), upstream),
});

export type Config = z.output<typeof configSchema>;
export type UpstreamConfig = Config['upstreams'][string];
export type LimitRuleConfig = UpstreamConfig['limits'][number];
export type StoreConfig = Config['store'];
export type CredentialsConfig = NonNullable<UpstreamConfig['credentials']>;
export type BreakerConfig = NonNullable<UpstreamConfig['breaker']>;
export type FeedbackConfig = UpstreamConfig['feedback'];
export type RetryConfig = NonNullable<UpstreamConfig['retry']>;
