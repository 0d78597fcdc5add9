/**
 * Restoring into a new pid namespace (`restore --pid-ns`): every restored process and
 * thread gets its dumped pid/tid there, so what the program cached or stored (glibc's tid in
 * each pthread, pids in its memory, a parent's child pid) stays right.
 *
 * Pid 1 of the namespace is the stub's init (stub/stub.c): it creates the root with clone3
 * and set_tid = [dumped pid], reaps orphans, reports the root's end. Children and threads
 * are created by injected clone3 calls with set_tid = [dumped pid/tid] (only the innermost
 * level, the new namespace, is chosen; our own namespace gives whatever pid is free).
 *
 * A pid an injected syscall returns is the one seen inside the namespace; everything this
 * restorer does (ptrace, /proc, kill) needs the one seen from ours: NSpid in
 * /proc/<pid>/status lists a task's pid at every level, ours first, the innermost last.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** NSpid of a task (ours first, innermost last), or null when it is gone. */
export function nsPids(pid: number, tid = pid): number[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const m = /^NSpid:\s+(.*)$/m.exec(s);
    return m ? m[1]!.trim().split(/\s+/).map(Number) : null;
  } catch {
    return null;
  }
}

/** The pid a task has in the innermost namespace it lives in. */
export function innermostPid(pid: number, tid = pid): number | null {
  const ns = nsPids(pid, tid);
  return ns ? ns[ns.length - 1]! : null;
}

/** Among the children of thread `parentTid` of `parent` (our pids), the one that is `nsPid` in its namespace. */
export function hostChildWithNsPid(parent: number, nsPid: number, parentTid = parent): number | null {
  let kids: number[];
  try {
    kids = readFileSync(`/proc/${parent}/task/${parentTid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return null;
  }
  for (const k of kids) if (innermostPid(k) === nsPid) return k;
  return null;
}

/** The thread of `pid` (our pids) that is `nsTid` in its namespace. */
export function hostThreadWithNsTid(pid: number, nsTid: number): number | null {
  let tids: number[];
  try {
    tids = readdirSync(`/proc/${pid}/task`).map(Number);
  } catch {
    return null;
  }
  for (const t of tids) if (innermostPid(pid, t) === nsTid) return t;
  return null;
}

/** Field 22 of /proc/<pid>/stat (start time), undefined when gone or a zombie. */
export function startTimeOf(pid: number): string | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' ? undefined : f[19];
  } catch {
    return undefined;
  }
}

/** This host's pid_max: a dumped pid at or above it cannot be had in a namespace here. */
export function pidMax(): number {
  try {
    return Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim()) || 4194304;
  } catch {
    return 4194304;
  }
}
