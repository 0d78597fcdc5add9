import { parseError, procDir, readText } from './errors.js';

/** RLIM_INFINITY as the kernel stores it; 'unlimited' in /proc/PID/limits. */
export const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;

/** In RLIMIT_* number order (asm-generic/resource.h), with the names /proc/PID/limits prints. */
export const RLIMITS = [
  ['RLIMIT_CPU', 'Max cpu time'],
  ['RLIMIT_FSIZE', 'Max file size'],
  ['RLIMIT_DATA', 'Max data size'],
  ['RLIMIT_STACK', 'Max stack size'],
  ['RLIMIT_CORE', 'Max core file size'],
  ['RLIMIT_RSS', 'Max resident set'],
  ['RLIMIT_NPROC', 'Max processes'],
  ['RLIMIT_NOFILE', 'Max open files'],
  ['RLIMIT_MEMLOCK', 'Max locked memory'],
  ['RLIMIT_AS', 'Max address space'],
  ['RLIMIT_LOCKS', 'Max file locks'],
  ['RLIMIT_SIGPENDING', 'Max pending signals'],
  ['RLIMIT_MSGQUEUE', 'Max msgqueue size'],
  ['RLIMIT_NICE', 'Max nice priority'],
  ['RLIMIT_RTPRIO', 'Max realtime priority'],
  ['RLIMIT_RTTIME', 'Max realtime timeout'],
] as const;

export type RlimitName = (typeof RLIMITS)[number][0];

export interface ProcRlimit {
  resource: RlimitName;
  /** RLIMIT_* number, the argument prlimit() wants. */
  index: number;
  /** RLIM_INFINITY when 'unlimited'. */
  soft: bigint;
  hard: bigint;
  units: string;
}

export function parseLimits(pid: number, text: string, file = `/proc/${pid}/limits`): ProcRlimit[] {
  const byName = new Map<string, number>(RLIMITS.map(([, label], i) => [label, i]));
  const out: ProcRlimit[] = [];
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  if (!lines[0]?.startsWith('Limit')) throw parseError(pid, file, 'missing header');
  for (const line of lines.slice(1)) {
    // The kernel prints the label left-justified in 25 columns; labels contain spaces.
    const label = line.slice(0, 25).trim();
    const index = byName.get(label);
    if (index === undefined) throw parseError(pid, file, `unknown limit ${JSON.stringify(label)}`);
    const [soft, hard, units = ''] = line.slice(25).trim().split(/\s+/);
    const val = (s: string | undefined): bigint => {
      if (s === 'unlimited') return RLIM_INFINITY;
      if (s === undefined || !/^\d+$/.test(s)) throw parseError(pid, file, `bad value ${JSON.stringify(s)} for ${label}`);
      return BigInt(s);
    };
    const entry = RLIMITS[index];
    if (!entry) throw parseError(pid, file, `unknown limit ${label}`);
    out.push({ resource: entry[0], index, soft: val(soft), hard: val(hard), units });
  }
  if (out.length !== RLIMITS.length) throw parseError(pid, file, `expected ${RLIMITS.length} limits, got ${out.length}`);
  out.sort((a, b) => a.index - b.index);
  return out;
}

export function readLimits(pid: number): ProcRlimit[] {
  const file = `${procDir(pid)}/limits`;
  return parseLimits(pid, readText(pid, file), file);
}
