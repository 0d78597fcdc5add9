/**
 * Processes ptrace cannot seize, told apart by what /proc says of them: PTRACE_SEIZE itself
 * only answers EPERM, which to root reads like a permission problem.
 *
 * - Kernel threads: nothing of them lives in user space.
 * - A process that has exited and was not reaped (a zombie): its parent still expects to
 *   wait() for it, which a restored tree could not give it.
 * - A process whose main thread called pthread_exit while other threads run: its leader is
 *   a zombie too, and ptrace refuses it the same way.
 * - A thread another tracer (a debugger, strace) holds: a thread has one tracer at a time.
 */
import { readComm, readStat, readStatus, type ProcStat, type Refusal, type TreeProcess } from '../proc/index.js';

/** include/linux/sched.h */
const PF_KTHREAD = 0x00200000;

function exited(st: ProcStat): boolean {
  return st.state === 'Z' || st.state === 'X';
}

/** Why `tid` of process `pid` cannot be traced, from its stat; null if nothing there says. */
export function whyUntraceable(pid: number, tid: number, threads: number, root: number): string | null {
  let st: ProcStat;
  try {
    st = readStat(pid, tid === pid ? undefined : tid);
  } catch {
    return null;
  }
  if (st.flags & PF_KTHREAD) return 'it is a kernel thread: only user processes can be dumped';
  const tracer = tracerOf(pid, tid);
  if (tracer !== null) return `${tid === pid ? 'it' : `its thread ${tid}`} is traced by ${tracer}: only one tracer at a time, detach that one first`;
  if (!exited(st) || tid !== pid) return null;
  if (threads > 1) return `its main thread has exited (pthread_exit) while ${threads - 1} other thread(s) run: not supported`;
  return pid === root
    ? `it has exited, and its parent (pid ${st.ppid}) has not reaped it yet: there is nothing to dump`
    : `it has exited, and its parent (pid ${st.ppid}) has not reaped it yet: a restored tree could not give the parent its exit status`;
}

/** "pid N (comm)" of the tracer of `tid`, if another process traces it. */
function tracerOf(pid: number, tid: number): string | null {
  try {
    const tracer = readStatus(pid, tid === pid ? undefined : tid).tracerPid;
    if (tracer === 0 || tracer === process.pid) return null;
    let comm = '?';
    try {
      comm = readComm(tracer);
    } catch {
      /* gone since: the pid says enough */
    }
    return `pid ${tracer} (${comm})`;
  } catch {
    return null;
  }
}

/** A thread that is exiting (not its process's leader): ptrace refuses it, and it never runs user code again. */
export function isExitingThread(pid: number, tid: number): boolean {
  if (tid === pid) return false;
  try {
    return exited(readStat(pid, tid));
  } catch {
    return true; // gone already
  }
}

/** The tree's processes that cannot be seized, as refusals (before anything is touched). */
export function untraceableRefusals(tree: readonly TreeProcess[], root: number): Refusal[] {
  const out: Refusal[] = [];
  for (const p of tree) {
    const reason = whyUntraceable(p.pid, p.pid, p.tids.length, root);
    if (reason) out.push({ pid: p.pid, what: 'process', object: `${p.pid} (${p.comm})`, reason, message: `pid ${p.pid} (${p.comm}): ${reason}` });
  }
  return out;
}
