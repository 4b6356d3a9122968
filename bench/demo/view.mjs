// The demo's terminal view. A frame is plain text lines built from a snapshot; on a TTY the screen
// is cleared and redrawn every second, otherwise (a pipe, a log, a test) short progress lines are
// appended instead, so the output stays readable. The summary is the same table once more.

/** @typedef {{ tenant: string, upstream: string, perSecond: number, forwarded: number, queued: number | undefined, queueWait: { quantile: number, mean: number, count: number } | undefined, refusals: [string, number][], sent: number, retries: number }} Row */
/** @typedef {{ received: number, accepted: number, unauthorized: number, limited: number, blocks?: number }} ApiTruth */
/** @typedef {{ twilio: ApiTruth, baselinker: ApiTruth, servicedesk: ApiTruth, zoho: { issued: number, refused: number, lifetimeS: number, max: number, perS: number, everyS: number } }} Truth */
/** @typedef {{ elapsedS: number, durationS: number, rows: Row[], truth: Truth, metrics: boolean }} Snapshot */

import { PATIENCE_MS } from './load.mjs';

const CLEAR = '\x1b[H\x1b[2J';

const num = (x) => (x === undefined ? '-' : String(x));
const secs = (x) => (x === undefined ? '-' : `${x.toFixed(2)} s`);
const refusalText = (refusals) => (refusals.length === 0 ? '-' : refusals.map(([why, n]) => `${why} ${n}`).join(', '));

/** Text columns: the first `left` left-aligned, the others right-aligned, the last left-aligned. */
function columns(rows, left) {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i]).length)));
  return rows.map((r) =>
    r
      .map((cell, i) => (i < left || i === r.length - 1 ? String(cell).padEnd(widths[i]) : String(cell).padStart(widths[i])))
      .join('  ')
      .trimEnd(),
  );
}

/** The tenants' table: what each tenant got from each upstream through the gateway. */
export function tenantTable(rows, rateHead) {
  return columns(
    [
      ['tenant', 'upstream', rateHead, 'forwarded', 'queued', 'queue wait p95', 'retried', 'not forwarded (reason: requests)'],
      ...rows.map((r) => [r.tenant, r.upstream, r.perSecond.toFixed(1), r.forwarded, num(r.queued), secs(r.queueWait?.quantile), r.retries, refusalText(r.refusals)]),
    ],
    2,
  );
}

/** The upstreams' side: what the fakes received, and whether any of it broke their rules. */
export function upstreamTable(truth) {
  const { zoho } = truth;
  return [
    ...columns(
      [
        ['upstream', 'received', 'served', 'over its own limit', 'wrong credentials'],
        ['twilio', truth.twilio.received, truth.twilio.accepted, `${truth.twilio.limited} (429 code 20429)`, `${truth.twilio.unauthorized} (401)`],
        ['baselinker', truth.baselinker.received, truth.baselinker.accepted, `${truth.baselinker.limited} (ERROR_BLOCKED_TOKEN)`, `${truth.baselinker.unauthorized} (401)`],
        ['servicedesk', truth.servicedesk.received, truth.servicedesk.accepted, `${truth.servicedesk.limited} (429)`, `${truth.servicedesk.unauthorized} (401)`],
      ],
      1,
    ),
    `zoho token endpoint: ${zoho.issued} tokens issued, ${zoho.refused} refused (tokens live ${zoho.lifetimeS} s; its budget: ${zoho.max} per ${zoho.perS / 60} min, one per ${zoho.everyS} s)`,
  ];
}

/** A full frame for a TTY. */
export function frame(s) {
  return [
    `Sluice demo: ${Math.round(s.elapsedS)} s of ${s.durationS} s   (Ctrl-C stops)`,
    '',
    'Through the gateway, as each tenant saw it (acme weight 2, globex weight 1):',
    ...tenantTable(s.rows, 'req/s now'),
    `(retried: refused attempts the client sent again when their Retry-After said, for up to ${PATIENCE_MS / 1000} s per request)`,
    ...(s.metrics ? [] : ['(queued and queue wait come from the gateway\'s /metrics, which this build does not serve: "-")']),
    '',
    'At the upstreams (the fakes enforce the real APIs\' limits and credentials):',
    ...upstreamTable(s.truth),
  ];
}

/** Progress lines for a pipe: one a tenant, one for the upstreams. */
export function progressLines(s) {
  const t = `[${String(Math.round(s.elapsedS)).padStart(3)} s]`;
  const tenants = [...new Set(s.rows.map((r) => r.tenant))];
  const lines = tenants.map((tenant) => {
    const rows = s.rows.filter((r) => r.tenant === tenant);
    const rates = rows.map((r) => `${r.upstream} ${r.perSecond.toFixed(1)}`).join(', ');
    const refused = rows.reduce((a, r) => a + r.refusals.reduce((b, [, n]) => b + n, 0), 0);
    const retried = rows.reduce((a, r) => a + r.retries, 0);
    const waits = rows.filter((r) => r.queueWait).map((r) => `${r.upstream} ${secs(r.queueWait.quantile)}`);
    return `${t} ${tenant.padEnd(7)} forwarded/s: ${rates}; retried ${retried}, not forwarded ${refused}; queue wait p95: ${waits.length ? waits.join(', ') : '-'}`;
  });
  const { twilio, baselinker, servicedesk, zoho } = s.truth;
  const over = twilio.limited + baselinker.limited + servicedesk.limited;
  const wrong = twilio.unauthorized + baselinker.unauthorized + servicedesk.unauthorized;
  lines.push(`${t} upstreams received ${twilio.received + baselinker.received + servicedesk.received}, over their limits ${over}, wrong credentials ${wrong}, zoho tokens ${zoho.issued}`);
  return lines;
}

/** Draws a snapshot: redraws the screen on a TTY, appends progress lines otherwise. */
export function draw(out, s) {
  if (out.isTTY) out.write(`${CLEAR}${frame(s).join('\n')}\n`);
  else out.write(`${progressLines(s).join('\n')}\n`);
}
