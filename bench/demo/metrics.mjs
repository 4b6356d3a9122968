// Reading the gateway's GET /metrics (Prometheus text format) for the demo's view: the queue wait
// histogram and the request outcomes. Defensive: a gateway without /metrics, or without these
// series yet, gives undefined, and the view shows "-".
import { request } from 'undici';

/**
 * The samples of a Prometheus text exposition: [{ name, labels, value }]. Comments, blank and
 * unreadable lines are passed over.
 * @param {string} text
 */
export function parseSamples(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m) continue;
    const labels = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    const value = Number(m[3]);
    if (!Number.isNaN(value)) samples.push({ name: m[1], labels, value });
  }
  return samples;
}

/** The gateway's samples, or undefined when /metrics does not answer 200 (not there yet, or down). */
export async function scrape(adminUrl) {
  try {
    const res = await request(`${adminUrl}/metrics`, { headersTimeout: 1_000, bodyTimeout: 1_000 });
    const text = await res.body.text();
    return res.statusCode === 200 ? parseSamples(text) : undefined;
  } catch {
    return undefined;
  }
}

const matches = (labels, want) => Object.entries(want).every(([k, v]) => labels[k] === v);

/**
 * The q-quantile of a histogram's series with labels `want` (as PromQL's histogram_quantile:
 * linear within the bucket it falls in), its mean and count; undefined when it has no samples.
 */
export function histogram(samples, name, want, q = 0.95) {
  const buckets = samples
    .filter((s) => s.name === `${name}_bucket` && matches(s.labels, want))
    .map((s) => ({ le: s.labels.le === '+Inf' ? Infinity : Number(s.labels.le), count: s.value }))
    .sort((a, b) => a.le - b.le);
  const sum = samples.find((s) => s.name === `${name}_sum` && matches(s.labels, want))?.value;
  const count = buckets.at(-1)?.count ?? 0;
  if (count === 0 || sum === undefined) return undefined;
  const rank = q * count;
  let lower = 0;
  let below = 0;
  let quantile = buckets.at(-2)?.le ?? 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      // In the +Inf bucket the best answer is the highest finite bound, as Prometheus gives.
      quantile = Number.isFinite(b.le) ? lower + ((b.le - lower) * (rank - below)) / Math.max(b.count - below, 1e-9) : lower;
      break;
    }
    lower = b.le;
    below = b.count;
  }
  return { quantile, mean: sum / count, count };
}

/** The sum of a counter's series with labels `want`; undefined when there is none. */
export function counter(samples, name, want) {
  const series = samples.filter((s) => s.name === name && matches(s.labels, want));
  return series.length === 0 ? undefined : series.reduce((a, s) => a + s.value, 0);
}
