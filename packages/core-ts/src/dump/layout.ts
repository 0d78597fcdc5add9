/**
 * The memory layout of a frozen process with each VMA's VmFlags, if possible without reading
 * /proc/PID/smaps while the process is frozen: smaps walks every page table to count pages
 * (15-35 ms for 1 GiB of 4 KiB pages), and of all it prints a dump needs only the VmFlags.
 *
 * The dump reads smaps before the freeze anyway (to refuse what it cannot restore). After the
 * freeze it reads the cheap /proc/PID/maps; if every line is identical (bounds, perms, offset,
 * device, inode, path), the pre-freeze VmFlags are reused. What can change in between without
 * changing maps is a flag change of a whole VMA that did not merge it with a neighbour:
 * madvise (DONTFORK, WIPEONFORK, DONTDUMP, MERGEABLE, HUGEPAGE, NOHUGEPAGE, ...),
 * mlock/munlock, mseal, userfaultfd registration, prctl(PR_SET_MEMORY_MERGE), or a
 * MAP_FIXED mmap replacing a mapping by an identical-looking one with other flags. Of these
 * the images record the madvise bits and MAP_LOCKED / MAP_GROWSDOWN, and the refusals look
 * at hugetlb / pfn / io mappings: a stale value would restore a process with the wrong advice
 * (a fork after the restore could then, say, share memory marked WIPEONFORK).
 *
 * So reused flags are only a guess, unless perf counters on the tree's threads saw none of the
 * syscalls that make such changes between that read and the freeze (flag-syscalls.ts). Else
 * `staleFlags` checks it against smaps read again after the freeze (on the thread pool, while
 * the dump goes on), once the images are written. That is only possible where the tree is still frozen after the
 * images are committed and no copy of it can run yet: a lazy dump, before its page server
 * starts. A lazy dump whose guess was wrong removes its images and resumes the tree, like any
 * failure after the freeze. A destination that copied them meanwhile (one armed with
 * --wait-images acts at once) never runs a copy: lazy-pages acknowledges a hand-over only
 * once it has reached the page server, restore resumes nothing before every
 * acknowledgement, and this page server never starts. Eager dumps read smaps after the
 * freeze, as before (they take far longer than that read anyway).
 */
import { readFlaggedVmas, readMaps, vmaRefusalReason, type FlaggedVma, type ProcVma } from '../proc/index.js';
import { vmaFlagBits } from './memory.js';

/** A lazy dump's images took VmFlags from before the freeze that had changed by the freeze. */
export class StaleFlagsError extends Error {
  override readonly name = 'StaleFlagsError';
}

export interface FrozenLayout {
  vmas: FlaggedVma[];
  /** 'smaps': read after the freeze; 'reused': the pre-freeze VmFlags, to be checked by staleFlags. */
  flags: 'smaps' | 'reused';
}

function sameLine(a: ProcVma, b: ProcVma): boolean {
  return (
    a.start === b.start && a.end === b.end && a.permsText === b.permsText && a.offset === b.offset &&
    a.devMajor === b.devMajor && a.devMinor === b.devMinor && a.inode === b.inode && a.path === b.path && a.deleted === b.deleted
  );
}

function sameLayout(a: readonly ProcVma[], b: readonly ProcVma[]): boolean {
  return a.length === b.length && a.every((v, i) => sameLine(v, b[i]!));
}

/**
 * The layout of frozen `pid`: with `preFreeze` (its smaps read before the freeze) and an
 * unchanged maps, the pre-freeze VmFlags; otherwise smaps, read now.
 */
export function frozenLayout(pid: number, preFreeze: readonly FlaggedVma[] | undefined): FrozenLayout {
  if (preFreeze) {
    const maps = readMaps(pid);
    if (sameLayout(maps, preFreeze)) {
      // Object.assign onto maps' own fresh objects: a spread into new ones cost ~10 µs a VMA
      // here, frozen, in a daemon without TurboFan.
      const vmas = maps.map((m, i) => {
        const { vmFlagCodes, vmFlags, madvise } = preFreeze[i]!;
        return Object.assign(m, { vmFlagCodes, vmFlags, madvise });
      });
      return { vmas, flags: 'reused' };
    }
  }
  return { vmas: readFlaggedVmas(pid), flags: 'smaps' };
}

/** What the images and the refusals take from a VMA's VmFlags. */
function dumpedFlags(v: FlaggedVma): string {
  const { flags, madvise } = vmaFlagBits(v);
  return `${flags}/${madvise}/${vmaRefusalReason(v) ?? ''}`;
}

/**
 * Says how the reused flags in `used` were wrong, given `now`, smaps of `pid` read after the
 * freeze; undefined when the images hold what smaps says.
 */
export function staleFlags(pid: number, used: readonly FlaggedVma[], now: readonly FlaggedVma[]): string | undefined {
  if (!sameLayout(now, used)) return `pid ${pid}: the memory layout changed while the process was frozen`;
  for (let i = 0; i < now.length; i++) {
    const a = used[i]!;
    const b = now[i]!;
    if (dumpedFlags(a) !== dumpedFlags(b)) {
      return `pid ${pid}: mapping ${a.start.toString(16)}-${a.end.toString(16)} ${a.path || '[anon]'}: its flags changed just before the freeze (VmFlags ${a.vmFlagCodes.join(' ')} -> ${b.vmFlagCodes.join(' ')}); dump again`;
    }
  }
  return undefined;
}
