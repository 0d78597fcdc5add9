/**
 * What only the process itself can tell: signal handlers, the clear-child-tid address and
 * the current brk. Each is read by running a syscall inside a frozen thread through a
 * `syscall` instruction that is already in its memory (the vdso), so nothing in the
 * process's memory is written but a scratch page we map and unmap around the questions.
 * The thread's registers are put back afterwards.
 *
 * Each injected syscall is a ptrace round trip (10-65 µs, more across CPUs), so only what
 * cannot be learnt from outside is asked: the robust futex list comes from
 * get_robust_list(tid) called by us, and only the signals with a handler have their
 * sigaction asked (see sigactionsToAsk).
 */
import { SyscallInjector, findSyscallGadget, getRobustList, processVmRead } from '@lazymig/uffd-rs';
import type { RobustList, SigAction } from '../image/index.js';
import { NSIG } from '../image/index.js';
import type { ProcVma } from '../proc/index.js';

const SYS = { mmap: 9, munmap: 11, rt_sigaction: 13, brk: 12, prctl: 157 } as const;
const SIGCHLD = 17;
/** SIG_IGN as the kernel reports a handler. */
const SIG_IGN = 1n;
const PR_GET_TID_ADDRESS = 40;
const PAGE = 4096;
/** struct kernel_sigaction on x86-64: handler, flags, restorer, mask (8 bytes each). */
const KSIGACTION_SIZE = 32;

export class InjectionError extends Error {
  override readonly name = 'InjectionError';
}

/** Where to find a `syscall` instruction: the vdso first (it is small and always there). */
export function findGadget(pid: number, vmas: readonly ProcVma[]): number {
  const candidates = [
    ...vmas.filter((v) => v.kind === 'vdso'),
    ...vmas.filter((v) => v.kind === 'file' && v.perms.exec && /\/libc[.-]/.test(v.path)),
    ...vmas.filter((v) => v.perms.exec && v.kind !== 'vsyscall'),
  ];
  for (const v of candidates) {
    const at = findSyscallGadget(pid, v.start, Math.min(v.end - v.start, 16 << 20));
    if (at !== null) return at;
  }
  throw new InjectionError(`pid ${pid}: no syscall instruction found in its executable mappings`);
}

function check(pid: number, what: string, ret: bigint): bigint {
  if (ret < 0n && ret > -4096n) throw new InjectionError(`pid ${pid}: injected ${what} failed with errno ${-ret}`);
  return ret;
}

/** The signal dispositions /proc/PID/status shows (bit n-1 = signal n): SigCgt and SigIgn. */
export interface SignalSets {
  caught: bigint;
  ignored: bigint;
}

/**
 * The signals whose sigaction must be asked: those with a handler (SigCgt), and SIGCHLD,
 * whose SA_NOCLDSTOP / SA_NOCLDWAIT change what the kernel does even with SIG_DFL or SIG_IGN.
 * For any other signal the handler is SIG_DFL or SIG_IGN (SigIgn says which), and its
 * flags, mask and restorer are never used: the kernel acts on them only when it runs a
 * handler. They are recorded as zero (what a restore then sets is equivalent).
 */
export function sigactionsToAsk(sets: SignalSets): number[] {
  const out: number[] = [];
  for (let sig = 1; sig <= NSIG; sig++) if (sig === SIGCHLD || (sets.caught >> BigInt(sig - 1)) & 1n) out.push(sig);
  return out;
}

function defaultAction(sig: number, sets: SignalSets): SigAction {
  const ignored = (sets.ignored >> BigInt(sig - 1)) & 1n;
  return { handler: ignored ? SIG_IGN : 0n, flags: 0n, restorer: 0n, mask: 0n };
}

export interface ProcessAnswers {
  sigactions: SigAction[];
  brk: number;
  threads: Map<number, { clearChildTid: bigint; robustList: RobustList }>;
  injectedSyscalls: number;
}

/**
 * Asks pid's threads (all ptrace-stopped by us) the questions above. The first thread hosts
 * the scratch page; per-thread answers need a syscall in each thread. `signals` must have
 * been read while the process was frozen.
 */
export function askProcess(pid: number, tids: readonly number[], vmas: readonly ProcVma[], signals: SignalSets): ProcessAnswers {
  const gadget = findGadget(pid, vmas);
  const leaderTid = tids[0] ?? pid;
  const leader = new SyscallInjector(leaderTid, gadget);
  let injected = 0;
  let scratch = 0;
  let answers: Omit<ProcessAnswers, 'injectedSyscalls'>;
  try {
    const PROT_RW = 0x3;
    const MAP_PRIVATE_ANON = 0x22;
    scratch = Number(check(pid, 'mmap', leader.call(SYS.mmap, [0, PAGE, PROT_RW, MAP_PRIVATE_ANON, -1, 0])));

    const raw = Buffer.alloc(NSIG * KSIGACTION_SIZE);
    // One rt_sigaction per asked signal into its slot of the scratch page (64 × 32 bytes
    // fit in half of it), then one read for all of them.
    const asked = sigactionsToAsk(signals);
    for (const sig of asked) {
      check(pid, `rt_sigaction(${sig})`, leader.call(SYS.rt_sigaction, [sig, 0, scratch + (sig - 1) * KSIGACTION_SIZE, 8]));
    }
    processVmRead(pid, new Float64Array([scratch, raw.length]), raw);
    const sigactions: SigAction[] = [];
    for (let sig = 1; sig <= NSIG; sig++) {
      const o = (sig - 1) * KSIGACTION_SIZE;
      sigactions.push(asked.includes(sig) ? {
        handler: raw.readBigUInt64LE(o),
        flags: raw.readBigUInt64LE(o + 8),
        restorer: raw.readBigUInt64LE(o + 16),
        mask: raw.readBigUInt64LE(o + 24),
      } : defaultAction(sig, signals));
    }
    const brk = Number(check(pid, 'brk', leader.call(SYS.brk, [0])));

    const threads = new Map<number, { clearChildTid: bigint; robustList: RobustList }>();
    const slot = scratch + PAGE / 2; // past the sigactions
    for (const tid of tids) {
      const inj = tid === leaderTid ? leader : new SyscallInjector(tid, gadget);
      try {
        check(pid, `prctl(PR_GET_TID_ADDRESS) in tid ${tid}`, inj.call(SYS.prctl, [PR_GET_TID_ADDRESS, slot, 0, 0, 0]));
        const b = Buffer.alloc(8);
        processVmRead(pid, new Float64Array([slot, 8]), b);
        threads.set(tid, { clearChildTid: b.readBigUInt64LE(0), robustList: getRobustList(tid) });
      } finally {
        if (inj !== leader) {
          injected += inj.count;
          inj.restore();
        }
      }
    }
    answers = { sigactions, brk, threads };
  } finally {
    try {
      if (scratch !== 0) leader.call(SYS.munmap, [scratch, PAGE]);
    } finally {
      injected += leader.count;
      leader.restore();
    }
  }
  return { ...answers, injectedSyscalls: injected };
}
