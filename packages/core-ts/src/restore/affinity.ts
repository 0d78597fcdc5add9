/**
 * Pinning the tracer (this process's JS thread) and the processes being rebuilt to one CPU:
 * an injected syscall costs ~5x less when tracer and tracee share a CPU (KERNEL-NOTES).
 * Stubs started while we are pinned inherit the pin; the restored threads get the CPU set
 * we had before (the images do not record affinity) by an injected sched_setaffinity.
 *
 * Setting our own thread's affinity needs a native call; uffd-rs only has it as a testing
 * helper today (testing.setAffinity, the calling thread). Without it, nothing is pinned.
 */
import { readFileSync } from 'node:fs';
import { testing } from '@lazymig/uffd-rs';

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
  const api = testing as { setAffinity?: (c: number[]) => void; getAffinity?: () => number[] } | undefined;
  if (!enable || !api?.setAffinity || !api.getAffinity) return { before: [], cpu: null, release() {} };
  const before = api.getAffinity();
  const here = currentCpu();
  const cpu = here !== null && before.includes(here) ? here : before[0] ?? null;
  if (cpu === null || before.length <= 1) return { before, cpu: null, release() {} };
  api.setAffinity([cpu]);
  let released = false;
  return {
    before,
    cpu,
    release() {
      if (released) return;
      released = true;
      api.setAffinity!([...before]);
    },
  };
}
