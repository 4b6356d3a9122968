// Summarises a V8 .cpuprofile (from `node --cpu-prof`): where the samples landed, by area
// (gateway code, undici, pino, Node internals, GC, idle) and by function, self and inclusive.
// Usage: node profile-summary.mjs FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

function area(url, name) {
  if (name === '(garbage collector)') return 'GC';
  if (name === '(idle)') return 'idle';
  if (name === '(program)') return 'V8/native (program)';
  if (!url) return 'native/builtins';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return `npm:${nm[1]}`;
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/').slice(0, 2).join('/')}`;
  const dist = /\/dist\/(.*)$/.exec(url);
  if (dist) return `sluice:${dist[1]}`;
  return url.replace(/^file:\/\//, '');
}

const short = (url) =>
  url.replace(/^file:\/\/.*?\/node_modules\//, '').replace(/^file:\/\/.*?\/dist\//, 'dist/').replace(/^node:internal\//, 'node:');

export function summarise(file, top = 20) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  profile.samples.forEach((id, i) => self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const idleIds = profile.nodes.filter((n) => n.callFrame.functionName === '(idle)').map((n) => n.id);
  const idle = idleIds.reduce((a, id) => a + (self.get(id) ?? 0), 0);
  const busy = total - idle;

  const key = (n) => `${n.callFrame.functionName || '(anonymous)'}  ${short(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
  const selfByFn = new Map();
  const selfByArea = new Map();
  for (const n of profile.nodes) {
    const t = self.get(n.id) ?? 0;
    if (!t) continue;
    selfByFn.set(key(n), (selfByFn.get(key(n)) ?? 0) + t);
    const a = area(n.callFrame.url, n.callFrame.functionName);
    selfByArea.set(a, (selfByArea.get(a) ?? 0) + t);
  }
  // Inclusive time per function, counting each function once per stack (recursion-safe).
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const incl = new Map();
  for (const [id, t] of self) {
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const k = key(byId.get(cur));
      if (seen.has(k)) continue;
      seen.add(k);
      incl.set(k, (incl.get(k) ?? 0) + t);
    }
  }
  const pct = (t) => `${((100 * t) / busy).toFixed(1).padStart(5)}%`;
  const lines = [];
  lines.push(`profile ${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(busy / 1e6).toFixed(2)} s busy (percentages are of busy time)`);
  lines.push('', 'self time by area:');
  for (const [a, t] of [...selfByArea].filter(([a]) => a !== 'idle').sort((x, y) => y[1] - x[1]).slice(0, top)) {
    lines.push(`  ${pct(t)}  ${a}`);
  }
  lines.push('', 'self time by function:');
  for (const [k, t] of [...selfByFn].filter(([k]) => !k.startsWith('(idle)')).sort((x, y) => y[1] - x[1]).slice(0, top)) {
    lines.push(`  ${pct(t)}  ${k}`);
  }
  lines.push('', 'inclusive time of the gateway\'s own functions (dist/):');
  for (const [k, t] of [...incl].filter(([k]) => k.includes(' dist/')).sort((x, y) => y[1] - x[1]).slice(0, top)) {
    lines.push(`  ${pct(t)}  ${k}`);
  }
  return lines.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (!process.argv[2]) {
    console.error('usage: node profile-summary.mjs FILE.cpuprofile [TOP]');
    process.exit(2);
  }
  console.log(summarise(process.argv[2], Number(process.argv[3] ?? 20)));
}
