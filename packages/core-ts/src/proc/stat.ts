import { parseError, procDir, readText } from './errors.js';

/** /proc/PID/stat (or a thread's /proc/PID/task/TID/stat). Field numbers follow proc(5). */
export interface ProcStat {
  pid: number;
  /** Between the first '(' and the last ')': comm may itself contain spaces and parens. */
  comm: string;
  /** R S D T t Z X I ... */
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  ttyNr: number;
  tpgid: number;
  flags: number;
  minflt: number;
  majflt: number;
  utime: number;
  stime: number;
  priority: number;
  nice: number;
  numThreads: number;
  /** Field 22, clock ticks after boot: with the pid, identifies a process across pid reuse. */
  startTime: number;
  vsize: number;
  rss: number;
  startCode: number;
  endCode: number;
  startStack: number;
  exitSignal: number;
  processor: number;
  rtPriority: number;
  policy: number;
  // Fields 45-52, what PR_SET_MM_MAP needs besides brk (which stat does not show).
  startData: number;
  endData: number;
  startBrk: number;
  argStart: number;
  argEnd: number;
  envStart: number;
  envEnd: number;
  exitCode: number;
  /** All fields after comm as text, index 0 = field 3 (state). */
  raw: string[];
}

export function parseStat(pid: number, text: string, file = `/proc/${pid}/stat`): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw parseError(pid, file, 'no (comm)');
  const raw = text
    .slice(close + 1)
    .trim()
    .split(' ');
  if (raw.length < 50) throw parseError(pid, file, `only ${raw.length + 2} fields`);
  const f = (n: number): number => {
    const s = raw[n - 3] ?? '';
    const v = Number(s);
    if (!/^-?\d+$/.test(s) || !Number.isSafeInteger(v)) throw parseError(pid, file, `field ${n} ${JSON.stringify(s)} is not a safe integer`);
    return v;
  };
  return {
    pid: Number(text.slice(0, open).trim()),
    comm: text.slice(open + 1, close),
    state: raw[0] ?? '?',
    ppid: f(4),
    pgrp: f(5),
    session: f(6),
    ttyNr: f(7),
    tpgid: f(8),
    flags: f(9),
    minflt: f(10),
    majflt: f(12),
    utime: f(14),
    stime: f(15),
    priority: f(18),
    nice: f(19),
    numThreads: f(20),
    startTime: f(22),
    vsize: f(23),
    rss: f(24),
    startCode: f(26),
    endCode: f(27),
    startStack: f(28),
    exitSignal: f(38),
    processor: f(39),
    rtPriority: f(40),
    policy: f(41),
    startData: f(45),
    endData: f(46),
    startBrk: f(47),
    argStart: f(48),
    argEnd: f(49),
    envStart: f(50),
    envEnd: f(51),
    exitCode: f(52),
    raw,
  };
}

export function readStat(pid: number, tid?: number): ProcStat {
  const file = `${procDir(pid, tid)}/stat`;
  return parseStat(pid, readText(pid, file), file);
}
