/**
 * Pinning the tracer (this process's JS thread) and its tracees to one CPU: an injected
 * syscall costs ~5x less when tracer and tracee share a CPU (KERNEL-NOTES). Restore pins
 * the processes it rebuilds; dump pins a frozen process's threads while it asks them
 * questions (`withTraceesOnOurCpu`).
 * The stub is pinned from here (sched_setaffinity on its pid) before its first injection;
 * what it forks and clones inherits that, and the restored threads get back the CPU set we
 * had before (the images do not record affinity), set the same way.
 *
 * Affinity is set natively: uffd-rs setThreadAffinity / getThreadAffinity act on the
 * calling thread (the JS thread that traces), or on a tid given.
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

/**
 * Runs `fn` with this thread and `tids` on one CPU, then puts every thread's own CPU set
 * back (the tracees must not notice). Where that cannot be done (one CPU, a cpuset that
 * excludes ours), `fn` just runs where everything is.
 */
export function withTraceesOnOurCpu<T>(tids: readonly number[], fn: () => T): T {
  const pin = pinToOneCpu(true);
  const moved: Array<{ tid: number; cpus: number[] }> = [];
  try {
    if (pin.cpu !== null) {
      try {
        for (const tid of tids) {
          const cpus = getThreadAffinity(tid);
          setThreadAffinity([pin.cpu], tid);
          moved.push({ tid, cpus });
        }
      } catch {
        /* not allowed there: the questions are only slower */
      }
    }
    return fn();
  } finally {
    for (const { tid, cpus } of moved) {
      try {
        setThreadAffinity(cpus, tid);
      } catch {
        /* gone */
      }
    }
    pin.release();
  }
}
