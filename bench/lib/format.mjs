// Number formatting and Markdown tables for the bench drivers' reports. A figure that could not be
// measured (NaN, Infinity) prints as '–', so a missing target or a Redis on another host leaves a
// dash in the table instead of "NaN".

export const f0 = (x) => (Number.isFinite(x) ? Math.round(x).toLocaleString('en-US') : '–');
export const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '–');
export const f3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : '–');
export const ratio = (x) => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '–');

/** A Markdown table: the first column left-aligned, the others (figures) right-aligned. */
export function table(head, rows) {
  return [`| ${head.join(' | ')} |`, `| ${head.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

/** The overhead drivers' first figure columns (runCells adds proxy CPU and upstream CPU after them). */
export const RUN_HEAD = ['req/s', 'p50 ms', 'p99 ms', 'added p50 ms', 'req/s vs direct'];

/** A target's figures `m` beside the direct run's `d` (dashes where they compare the direct run with itself). */
export function runCells(m, d, isDirect) {
  return [
    f0(m.rps),
    f3(m.p50ms),
    f3(m.p99ms),
    isDirect ? '–' : f3(m.p50ms - d.p50ms),
    isDirect ? '1.00x' : ratio(m.rps / d.rps),
    isDirect ? '–' : f1(m.cpu),
    f1(m.upCpu),
  ];
}
