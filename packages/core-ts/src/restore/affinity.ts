/**
 * Pinning the tracer (this process's JS thread) and the processes being rebuilt to one CPU:
 * an injected syscall costs ~5x less when tracer and tracee share a CPU (KERNEL-NOTES).
 * The stub is pinned from here (sched_setaffinity on its pid) before its first injection;
 * what it forks and clones inherits that, and the restored threads get back the CPU set we
 * had before (the images do not record affinity), set the same way.
 *
 * Our own thread's affinity is set natively: uffd-rs setThreadAffinity / getThreadAffinity
 * act on the calling thread (sched_setaffinity(0)), which is the JS thread that traces.
 */
import { readFileSync } from 'node:fs';
import { getThreadAffinity, setThreadAffinity } from '@lazymig/uffd-rs';

export interface Pin {
  /** the CPUs we had before pinning (what the restored threads get) */
  readonly before: readonly number[];
  readonly cpu: number | null;
  release(): void;
}

function currentCpu(): number | null {
  try {
    const stat = readFileSync('/proc/thread-self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = Number(f[36]); // field 39 "processor"
    return Number.isInteger(cpu) ? cpu : null;
  } catch {
    return null;
  }
}

export function pinToOneCpu(enable: boolean): Pin {
  if (!enable) return { before: [], cpu: null, release() {} };
  const before = getThreadAffinity();
  const here = currentCpu();
  const cpu = here !== null && before.includes(here) ? here : before[0] ?? null;
  if (cpu === null || before.length <= 1) return { before, cpu: null, release() {} };
  setThreadAffinity([cpu]);
  let released = false;
  return {
    before,
    cpu,
    release() {
      if (released) return;
      released = true;
      setThreadAffinity([...before]);
    },
  };
}
