/**
 * Did the tree make a syscall that can change a mapping's flags between the pre-freeze
 * smaps read and the freeze? A lazy dump reuses the VmFlags of that read (layout.ts) and,
 * unless it knows none could have changed, reads smaps again after the freeze: a walk of
 * every page table, 15-50 ms at 1 GiB, on the way to the destination's resume.
 *
 * Flags change only through a syscall of a task using the mm: the tree's own threads (io_uring,
 * which could act for them, is refused by the dump), so a perf counter per thread on the syscall-exit
 * tracepoint, filtered on the syscalls below, opened before the read and read once the tree
 * is frozen, answers it: zero everywhere, and the same threads, means the flags read are
 * the flags frozen. Exits are counted, so a call already running when the counters open
 * counts too. Where counters cannot be had (no tracefs, no perf), the check falls back to
 * reading smaps again.
 */
import { close } from 'node:fs';
import { readSyscallCounter, syscallExitCounter } from '@lazymig/uffd-rs';
import type { ProcessTree } from '../proc/index.js';

/**
 * x86-64 syscalls that can change a VMA's flags (or the layout, or the threads) without
 * necessarily changing /proc/PID/maps: the m* family and madvise, prctl (PR_SET_MM,
 * PR_SET_MEMORY_MERGE, PR_SET_THP_DISABLE, ...), ioctl (UFFDIO_REGISTER), the ones that
 * make threads or processes (a new thread has no counter), exec, and shm.
 */
const FLAG_SYSCALLS: readonly number[] = [
  9, // mmap
  10, // mprotect
  11, // munmap
  12, // brk
  16, // ioctl
  25, // mremap
  28, // madvise
  30, // shmat
  56, // clone
  57, // fork
  58, // vfork
  59, // execve
  67, // shmdt
  149, // mlock
  150, // munlock
  151, // mlockall
  152, // munlockall
  157, // prctl
  216, // remap_file_pages
  237, // mbind
  322, // execveat
  325, // mlock2
  329, // pkey_mprotect
  426, // io_uring_enter
  435, // clone3
  440, // process_madvise
  453, // map_shadow_stack
  462, // mseal
];

export class FlagSyscallWatch {
  readonly #fds = new Map<number, Map<number, number>>(); // pid -> tid -> counter fd

  private constructor() {}

  /** Counters on every thread of `tree`, or null (with everything closed) when they cannot be had. */
  static open(tree: ProcessTree): FlagSyscallWatch | null {
    const w = new FlagSyscallWatch();
    try {
      for (const p of tree.processes) {
        const byTid = new Map<number, number>();
        w.#fds.set(p.pid, byTid);
        for (const tid of p.tids) byTid.set(tid, syscallExitCounter(tid, [...FLAG_SYSCALLS]));
      }
      return w;
    } catch {
      w.close();
      return null;
    }
  }

  /** True when `tids` are the threads watched in `pid` and none of them made such a syscall. */
  quiet(pid: number, tids: readonly number[]): boolean {
    const byTid = this.#fds.get(pid);
    if (!byTid || byTid.size !== tids.length || !tids.every((t) => byTid.has(t))) return false;
    try {
      return [...byTid.values()].every((fd) => readSyscallCounter(fd) === 0);
    } catch {
      return false;
    }
  }

  /**
   * Closes the counters on the thread pool: closing the last counter on a tracepoint
   * unregisters its probe, which waits out an RCU grace period (~40 ms measured), and the
   * tree is frozen by the time this is called.
   */
  close(): void {
    for (const byTid of this.#fds.values()) for (const fd of byTid.values()) close(fd, () => undefined);
    this.#fds.clear();
  }
}
