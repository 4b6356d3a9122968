import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second, the unit of the CPU times in /proc/PID/stat. */
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

/**
 * utime+stime in clock ticks of a process (all its threads), from /proc/PID/stat; `ifGone` when it
 * cannot be read. bench/overhead sums several processes and counts a gone one as 0;
 * bench/fidelity/decide.mjs wants NaN, so that a Redis it cannot see (another host) shows as '–'.
 */
export function cpuTicks(pid, ifGone) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after its last ')'.
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(f[11]) + Number(f[12]);
  } catch {
    return ifGone;
  }
}

/** Busy, steal and total ticks of one core, from /proc/stat. */
export function coreTicks(cpu) {
  const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`cpu${cpu} `));
  if (!line) return { busy: 0, steal: 0, total: 0 };
  const [user, nice, system, idle, iowait, irq, softirq, steal = 0] = line.trim().split(/\s+/).slice(1).map(Number);
  const busy = user + nice + system + irq + softirq;
  return { busy, steal, total: busy + steal + idle + iowait };
}
