/**
 * A frozen process's memory as image VMAs, a pagemap, and page data streamed into the pages
 * file. Which pages are written where:
 *  - private anonymous memory (anon, heap, stack) and the copied-on-write pages of private
 *    file mappings are the process's own: present pages are dumped, zero-page mappings are
 *    recorded as zero;
 *  - a lazy dump leaves the anonymous ones on the source ('lazy'), except the pages the
 *    kernel itself will read while the process is rebuilt (each thread's stack top, the
 *    rseq area): those must already be there when the userfaultfd is registered;
 *  - file pages that are still the file's, shared file mappings, and the kernel's own
 *    mappings (vdso, vvar) carry no data.
 */
import { statSync } from 'node:fs';
import { PAGE_SIZE, processVmRead } from '@lazymig/uffd-rs';
import {
  MADV_DONTDUMP, MADV_DONTFORK, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE, MADV_WIPEONFORK,
  MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_LOCKED, MAP_PRIVATE, MAP_SHARED, PROT_EXEC, PROT_READ, PROT_WRITE,
  type PagemapEntry, type PagesWriter, type Vma, type VmaKind,
} from '../image/index.js';
import { pageAlignedBuffer } from '../host/page-aligned.js';
import { PM_FILE, PM_PRESENT, PM_SWAPPED, PM_ZERO, scanPopulated, type FlaggedVma, type PageRun, type PageRuns, type ScanRange } from '../proc/index.js';

const MADVISE_BITS: Record<string, number> = {
  MADV_DONTFORK,
  MADV_MERGEABLE,
  MADV_HUGEPAGE,
  MADV_NOHUGEPAGE,
  MADV_DONTDUMP,
  MADV_WIPEONFORK,
};

/** Pages read from the process per process_vm_readv batch (8 MiB). */
const READ_CHUNK_PAGES = 2048;

export class MemoryDumpError extends Error {
  override readonly name = 'MemoryDumpError';
}

function imageKind(v: FlaggedVma): VmaKind {
  switch (v.kind) {
    case 'anon':
    case 'file':
    case 'stack':
    case 'heap':
    case 'vdso':
    case 'vvar':
    case 'vvar_vclock':
    case 'vsyscall':
      return v.kind;
    default:
      // refusals.ts turns these away before the freeze; reaching here is a bug.
      throw new MemoryDumpError(`mapping ${v.start.toString(16)}-${v.end.toString(16)} ${v.path}: kind ${v.kind} cannot be dumped`);
  }
}

function fileBacked(v: FlaggedVma): boolean {
  return v.kind === 'file';
}

/** The image's mmap flags and madvise bits of a VMA: everything the images take from its VmFlags. */
export function vmaFlagBits(v: FlaggedVma): { flags: number; madvise: number } {
  let flags = v.vmFlags.mayShare ? MAP_SHARED : MAP_PRIVATE;
  if (!fileBacked(v)) flags |= MAP_ANONYMOUS;
  if (v.vmFlags.growsDown) flags |= MAP_GROWSDOWN;
  if (v.vmFlags.locked) flags |= MAP_LOCKED;
  let madvise = 0;
  for (const name of v.madvise) {
    const bit = MADVISE_BITS[name];
    if (bit !== undefined) madvise |= 1 << bit;
  }
  return { flags, madvise };
}

type FileIds = Map<string, NonNullable<Vma['file']>['id']>;

/**
 * The image form of one VMA; file identity through /proc/PID/map_files, which works for
 * deleted files too. `ids` caches it by the device and inode maps shows (a library is
 * mapped four or five times: one stat each is time the tree spends frozen).
 */
export function toImageVma(pid: number, v: FlaggedVma, ids: FileIds = new Map()): Vma {
  const kind = imageKind(v);
  const prot = (v.perms.read ? PROT_READ : 0) | (v.perms.write ? PROT_WRITE : 0) | (v.perms.exec ? PROT_EXEC : 0);
  const { flags, madvise } = vmaFlagBits(v);
  let file: Vma['file'] = null;
  if (kind === 'file') {
    const key = `${v.devMajor}:${v.devMinor}:${v.inode}`;
    let id = ids.get(key);
    if (!id) {
      const link = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
      const st = statSync(link, { bigint: true });
      id = { dev: st.dev, ino: st.ino, size: Number(st.size), mtimeNs: st.mtimeNs };
      ids.set(key, id);
    }
    file = { path: v.path, id };
  }
  return { start: v.start, end: v.end, prot, flags, kind, file, pgoff: kind === 'file' ? v.offset : 0, madvise };
}

export interface MemoryPlan {
  /** Pages the kernel touches during a lazy restore: dumped eagerly even in a lazy dump. */
  eagerAddresses: readonly number[];
  lazy: boolean;
  /**
   * Lazy dumps: starts of anonymous VMAs (as [start, end)) that were wholly populated a
   * moment before the freeze (see wholePopulatedAnon), not scanned again: one lazy run each.
   */
  wholeBeforeFreeze?: ReadonlyMap<number, number>;
}

/**
 * The anonymous VMAs of `ranges` (private, not file-backed) whose every page is populated
 * (present or swapped, none the shared zero page), as start -> end. Read before a lazy dump's
 * freeze: such a VMA, still there unchanged at the freeze, needs no scan while frozen. Its
 * pages can stop being populated only through madvise/munmap (or the kernel's own reclaim of
 * MADV_FREE'd pages): a lazy dump reads them from the frozen process when asked, so they
 * then read as what they are, zeros. What a scan must catch is the other way, a page that
 * becomes populated, and a wholly populated VMA has none left to become so.
 */
export function wholePopulatedAnon(pid: number, ranges: ReadonlyArray<{ start: number; end: number }>): Map<number, number> {
  const out = new Map<number, number>();
  if (ranges.length === 0) return out;
  const runs = scanPopulated(pid, ranges.map((r) => ({ start: r.start, end: r.end, file: false })));
  const P = PAGE_SIZE;
  let ri = 0;
  for (const r of ranges) {
    let covered = 0;
    let clean = true;
    while (ri < runs.count && runs.run(ri).start < r.end) {
      const run = runs.run(ri++);
      if (run.start < r.start) continue;
      if (run.flags & PM_ZERO || !(run.flags & (PM_PRESENT | PM_SWAPPED))) clean = false;
      covered += run.pages;
    }
    if (clean && covered * P === r.end - r.start) out.set(r.start, r.end);
  }
  return out;
}

export interface MemoryDump {
  vmas: Vma[];
  entries: PagemapEntry[];
  pages: { present: number; lazy: number; zero: number };
  bytesWritten: number;
}

type Disposition = 'skip' | 'present' | 'lazy' | 'zero';

/** VMAs whose pages are never the process's own: the kernel's mappings, and shared ones (the file holds them). */
function holdsNoPages(v: Vma): boolean {
  return v.kind === 'vdso' || v.kind === 'vvar' || v.kind === 'vvar_vclock' || v.kind === 'vsyscall' || (v.flags & MAP_SHARED) !== 0;
}

/** `scanned` runs and one populated run per VMA of `whole`, in address order. */
function withWholeRuns(scanned: PageRuns, whole: readonly Vma[], P: number): { count: number; run(i: number): PageRun } {
  if (whole.length === 0) return scanned;
  const all: PageRun[] = [...scanned, ...whole.map((v) => ({ start: v.start, pages: (v.end - v.start) / P, flags: PM_PRESENT }))];
  all.sort((a, b) => a.start - b.start);
  return { count: all.length, run: (i) => all[i]! };
}

/** What to do with a run of pages of a VMA, given its pagemap flags. */
function dispose(v: Vma, flags: number, lazy: boolean): Disposition {
  if (holdsNoPages(v)) return 'skip';
  if (!(flags & (PM_PRESENT | PM_SWAPPED))) return 'skip'; // never touched: zero-fill (or the file's) on restore
  if (flags & PM_ZERO) return 'zero';
  if (v.kind === 'file') return flags & PM_FILE ? 'skip' : 'present'; // only COW'd copies are ours
  return lazy ? 'lazy' : 'present';
}

/**
 * Reads the layout and pages of `pid` (frozen) and streams present pages into `pages`.
 * Must run before anything is injected into the process (an injection may leave traces).
 */
export async function dumpMemory(
  pid: number,
  layout: readonly FlaggedVma[],
  pages: PagesWriter,
  plan: MemoryPlan,
  onProgress?: (bytes: number) => void,
  onPhase?: (name: string) => void,
): Promise<MemoryDump> {
  const lap = onPhase ?? ((): void => undefined);
  const P = pages.pageSize;
  const ids: FileIds = new Map();
  const vmas = layout.map((v) => toImageVma(pid, v, ids));
  lap('mem-vmas');
  const scanned = vmas.filter((v) => !holdsNoPages(v));
  const whole = (v: Vma): boolean => plan.lazy && v.kind !== 'file' && plan.wholeBeforeFreeze?.get(v.start) === v.end;
  const runs = withWholeRuns(
    scanPopulated(pid, scanned.filter((v) => !whole(v)).map((v): ScanRange => ({ start: v.start, end: v.end, file: v.kind === 'file' }))),
    scanned.filter(whole),
    pages.pageSize,
  );
  lap('mem-pagemap');
  const entries: PagemapEntry[] = [];
  const counts = { present: 0, lazy: 0, zero: 0 };
  let bytesWritten = 0;
  // Eager pages of a lazy dump, sorted: a lazy run looks up the few that fall inside it
  // instead of testing each of its pages.
  const eager = [...new Set(plan.eagerAddresses.map((a) => Math.floor(a / P) * P))].sort((a, b) => a - b);

  // Two buffers: the process's pages are read (process_vm_readv, on this thread) into one
  // while the other is being written (thread pool). Pages are appended to the current buffer
  // (`fill` pages so far) and the buffer is handed to the writer when full or at the end, so
  // small runs (a lazy dump's few eager pages) cost one write, not one each.
  const bufs = [pageAlignedBuffer(READ_CHUNK_PAGES * P), pageAlignedBuffer(READ_CHUNK_PAGES * P)];
  const inflight: Array<Promise<number> | undefined> = [undefined, undefined];
  let cur = 0;
  let fill = 0;
  const flush = (): void => {
    if (fill === 0) return;
    const w = pages.write(bufs[cur]!.subarray(0, fill * P));
    w.catch(() => undefined); // awaited before the buffer is reused, or at the end
    inflight[cur] = w;
    bytesWritten += fill * P;
    onProgress?.(bytesWritten);
    cur ^= 1;
    fill = 0;
  };
  const ready = async (): Promise<void> => {
    const w = inflight[cur];
    if (w) {
      inflight[cur] = undefined;
      await w;
    }
  };

  let ok = false;
  try {
    const pushAbsent = (start: number, n: number, kind: 'lazy' | 'zero'): void => {
      const last = entries[entries.length - 1];
      if (last && last.kind === kind && last.start + last.pages * P === start) last.pages += n;
      else entries.push({ start, pages: n, kind });
      counts[kind] += n;
    };
    const pushPresent = async (start: number, n: number): Promise<void> => {
      for (let done = 0; done < n; ) {
        lap('mem-pagemap');
        if (fill === 0) {
          await ready();
          lap('mem-write-wait');
        }
        const count = Math.min(READ_CHUNK_PAGES - fill, n - done);
        const addr = start + done * P;
        const view = bufs[cur]!.subarray(fill * P, (fill + count) * P);
        processVmRead(pid, new Float64Array([addr, view.length]), view);
        lap('mem-readv');
        // Where these pages will land: after everything handed to the writer and what is
        // already in this buffer (the writer appends in call order).
        const offset = pages.nextOffset + fill * P;
        const last = entries[entries.length - 1];
        if (last && last.kind === 'present' && last.start + last.pages * P === addr && last.offset + last.pages * P === offset) {
          last.pages += count;
        } else entries.push({ start: addr, pages: count, kind: 'present', offset });
        counts.present += count;
        fill += count;
        done += count;
        if (fill === READ_CHUNK_PAGES) flush();
        lap('mem-crc+write');
      }
    };

    // Runs are in address order and each lies in one scanned VMA: walk both together.
    let vi = 0;
    for (let i = 0; i < runs.count; i++) {
      const run = runs.run(i);
      while (scanned[vi] && scanned[vi]!.end <= run.start) vi++;
      const v = scanned[vi];
      if (!v || run.start < v.start || run.start + run.pages * P > v.end)
        throw new MemoryDumpError(`pid ${pid}: populated pages at 0x${run.start.toString(16)} outside the VMA they were scanned in`);
      const what = dispose(v, run.flags, plan.lazy);
      if (what === 'skip') continue;
      if (what === 'zero') pushAbsent(run.start, run.pages, 'zero');
      else if (what === 'present') await pushPresent(run.start, run.pages);
      else {
        // A lazy run, with the kernel-touched pages in it dumped eagerly.
        let from = run.start;
        const end = run.start + run.pages * P;
        let lo = 0;
        let hi = eager.length;
        while (lo < hi) {
          const mid = (lo + hi) >>> 1;
          if (eager[mid]! < run.start) lo = mid + 1;
          else hi = mid;
        }
        for (let k = lo; k < eager.length && eager[k]! < end; k++) {
          const a = eager[k]!;
          if (a > from) pushAbsent(from, (a - from) / P, 'lazy');
          await pushPresent(a, 1);
          from = a + P;
        }
        if (end > from) pushAbsent(from, (end - from) / P, 'lazy');
      }
    }
    flush();
    ok = true;
    lap('mem-pagemap');
  } finally {
    // On success the last writes are left to the pages writer (its close() waits for them
    // and reports their errors; the buffers are ours alone, nothing reuses them), so they
    // overlap with what the dump does next. On failure, wait: nothing may outlive the error.
    if (!ok) await Promise.allSettled(inflight.filter((w): w is Promise<number> => w !== undefined));
  }
  return { vmas, entries, pages: counts, bytesWritten };
}
