/**
 * Threads and per-thread state.
 *
 * Extra threads are cloned inside the rebuilt process (CLONE_VM|CLONE_THREAD|...) by the
 * leader; a new thread starts in the control area's pause loop on the control stack and is
 * seized there. Then each thread gets what is its own: signal mask (ptrace), rseq, robust
 * list and clear-child-tid (syscalls injected into that thread), and last of all its
 * registers and extended state.
 */
import { ptrace, type Regs } from '@lazymig/uffd-rs';
import type { SigAction, ThreadState } from '../image/index.js';
import { RestoreError } from './errors.js';
import type { ControlArea } from './control.js';
import { Remote, RemoteSyscallError, SYS, type CallList } from './remote.js';
import { hostThreadWithNsTid } from './pidns.js';

const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000; // VM FS FILES SIGHAND THREAD SYSVSEM
const STOP_TIMEOUT_MS = 5_000;
const SIGKILL = 9;
const SIGSTOP = 19;
const KSIGACTION_SIZE = 32;

/** Seizes a thread (of a process we created) and waits until it is stopped. */
export function seizeStopped(tid: number): void {
  ptrace.seize(tid, { exitKill: true });
  ptrace.interrupt(tid);
  for (;;) {
    const st = ptrace.waitStop(tid, STOP_TIMEOUT_MS);
    if (st.kind === 'exited' || st.kind === 'killed')
      throw new RestoreError(`tid ${tid} ${st.kind === 'exited' ? `exited with ${st.code}` : `was killed by signal ${st.signal}`} before it could be rebuilt`, 'process');
    if (st.kind === 'stopped' && st.event === 0 && !st.groupStop && st.signal !== 0) {
      // a signal on its way: keep it from the stub (it is not the restored process's yet)
      ptrace.cont(tid, 0);
      ptrace.interrupt(tid);
      continue;
    }
    if (st.kind === 'syscall') {
      ptrace.cont(tid, 0);
      continue;
    }
    return;
  }
}

/**
 * Clones one thread for each non-leader of the image; returns their remotes in image order.
 * In a pid namespace of the restore's own (`pidNs`) each gets its dumped tid there (clone3,
 * set_tid); the remote is addressed by its tid in our namespace.
 */
export function cloneThreads(leader: Remote, threads: readonly ThreadState[], area: ControlArea, pidNs = false): Remote[] {
  const out: Remote[] = [];
  for (const t of threads.slice(1)) {
    let tid: number;
    if (pidNs) {
      const nsTid = leader.clone3(
        { flags: CLONE_THREAD_FLAGS, exitSignal: 0, stack: area.stackBase, stackSize: area.stackTop - area.stackBase, setTid: [t.tid] },
        `thread ${t.tid} at its dumped tid in the new pid namespace`,
      );
      const host = hostThreadWithNsTid(leader.pid, nsTid);
      if (nsTid !== t.tid || host === null)
        throw new RestoreError(`pid ${leader.pid}: the thread cloned for dumped tid ${t.tid} is tid ${nsTid} in the pid namespace${host === null ? ', and not found from here' : ''}`, 'process');
      tid = host;
    } else {
      tid = leader.clone(CLONE_THREAD_FLAGS, area.stackTop);
    }
    seizeStopped(tid);
    out.push(new Remote(leader.pid, tid, area.gadget, leader.scratch, area.runner));
  }
  return out;
}

/** Every handler but SIGKILL's and SIGSTOP's (the stub has only defaults: those are skipped). */
export function restoreSigactions(list: CallList, actions: readonly SigAction[]): void {
  actions.forEach((a, i) => {
    const sig = i + 1;
    if (sig === SIGKILL || sig === SIGSTOP) return;
    if (a.handler === 0n && a.flags === 0n && a.restorer === 0n && a.mask === 0n) return;
    const b = Buffer.alloc(KSIGACTION_SIZE);
    b.writeBigUInt64LE(a.handler, 0);
    b.writeBigUInt64LE(a.flags, 8);
    b.writeBigUInt64LE(a.restorer, 16);
    b.writeBigUInt64LE(a.mask, 24);
    list.add(`rt_sigaction(${sig})`, SYS.rt_sigaction, [sig, list.put(b), 0, 8]);
  });
}

/** What a thread sets for itself: rseq, robust list, clear-child-tid; and its signal mask. */
export function restoreThreadState(remote: Remote, t: ThreadState): void {
  ptrace.setSigmask(remote.tid, t.sigmask);
  const list = remote.list();
  if (t.robustList.head !== 0n && t.robustList.len !== 0n) list.add('set_robust_list', SYS.set_robust_list, [t.robustList.head, t.robustList.len]);
  list.add('set_tid_address', SYS.set_tid_address, [t.clearChildTid]);
  const rseq = t.rseq ? list.add('rseq', SYS.rseq, [t.rseq.ptr, t.rseq.len, 0, t.rseq.sig], { goOn: true }) : -1;
  const results = list.run();
  if (t.rseq && results[rseq]! < 0n) {
    if (results[rseq] === -38n) throw new RestoreError(`pid ${remote.pid}: the kernel has no rseq, the dumped thread ${t.tid} used it`, 'unsupported');
    throw new RemoteSyscallError(remote.pid, remote.tid, `rseq(${t.rseq.ptr}, ${t.rseq.len}, 0, ${t.rseq.sig})`, Number(-results[rseq]!));
  }
}

const RESTART_CODES = new Set([-512n, -513n, -514n, -516n]);

function signed(v: bigint): bigint {
  return BigInt.asIntN(64, v);
}

/**
 * The registers a thread resumes with: the dumped ones, except that a thread frozen inside
 * a syscall the kernel would restart (-ERESTART*) is set up to run it again (rip back over
 * the 2-byte `syscall`, rax = its number), and orig_rax = -1 so the kernel applies no
 * restart logic of its own to registers set at a syscall-exit stop.
 */
export function finalRegs(t: ThreadState): Regs {
  const r: Regs = { ...t.regs };
  if (signed(r.orig_rax) >= 0n && RESTART_CODES.has(signed(r.rax))) {
    r.rip = r.rip - 2n;
    r.rax = r.orig_rax;
  }
  r.orig_rax = -1n;
  return r;
}

/** Checks the dumped extended state fits this CPU (the stub's thread has the host's size). */
export function checkXstate(tid: number, threads: readonly ThreadState[], pid: number): void {
  const here = ptrace.getXstate(tid).length;
  for (const t of threads) {
    if (t.xstate.length !== here)
      throw new RestoreError(`pid ${pid}: thread ${t.tid}'s extended register state is ${t.xstate.length} bytes, this CPU's is ${here} (another CPU model)`, 'unsupported');
  }
}

export function setFinalState(tid: number, t: ThreadState): void {
  ptrace.setXstate(tid, t.xstate);
  ptrace.setRegs(tid, finalRegs(t));
}
