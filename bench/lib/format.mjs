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
