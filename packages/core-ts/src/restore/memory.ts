/**
 * The dumped address space, rebuilt inside the stub:
 *  1. unmap the stub (everything but the control area and the kernel's special mappings);
 *  2. map every VMA at its address with MAP_FIXED_NOREPLACE (a range that is taken is an
 *     error, never silently replaced): anonymous ones fresh (zero pages need nothing), file
 *     ones from their path (opened once per file in the target);
 *  3. fill present pages with process_vm_writev in large batches; VMAs that get pages are
 *     mapped writable first (process_vm_writev respects protections) and mprotected after;
 *  4. madvise state.
 * Lazy ranges are left empty: they are handed to a userfaultfd (LazyHook in restore.ts).
 */
import { processVmWrite } from '@lazymig/uffd-rs';
import {
  MADV_KNOWN, MADV_MERGEABLE, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED, PROT_WRITE,
  type PagemapEntry, type PagesReader, type Vma,
} from '../image/index.js';
import { pageAlignedBuffer } from '../host/page-aligned.js';
import { readMaps, type ProcVma } from '../proc/index.js';
import { RestoreError, errnoName, hex } from './errors.js';
import { SPECIAL_KINDS, type Range } from './plan.js';
import { MAP, O, RemoteSyscallError, SYS, type Remote } from './remote.js';

/** Pages per process_vm_writev batch (16 MiB; at most IOV_MAX ranges). */
const FILL_BATCH_PAGES = 4096;
/**
 * Fills up to this size are read with synchronous preads: a lazy restore's few eager pages
 * (a few dozen KiB) cost less to read than the thread-pool round trips of async reads, on
 * the way to the resume.
 */
const SYNC_FILL_BYTES = 1 << 20;
const MAX_IOVECS = 1024;

/** Unmaps everything of the stub except `keep` and the vdso/vvar group. */
export function unmapStub(remote: Remote, keep: Range): ProcVma[] {
  const maps = readMaps(remote.pid);
  const list = remote.list();
  for (const v of maps) {
    if (v.kind === 'vsyscall' || (SPECIAL_KINDS as readonly string[]).includes(v.kind)) continue;
    if (v.start >= keep.start && v.end <= keep.end) continue;
    list.add('munmap', SYS.munmap, [v.start, v.end - v.start]);
  }
  list.run();
  return maps;
}

function describeOccupant(pid: number, start: number, end: number): string {
  try {
    const who = readMaps(pid).filter((v) => v.start < end && start < v.end);
    return who.map((v) => `${hex(v.start)}-${hex(v.end)} ${v.path || v.kind}`).join(', ') || 'nothing visible';
  } catch {
    return 'unknown';
  }
}

/** Which VMAs receive page contents (and so must be writable while they are filled). */
function vmasWithPages(vmas: readonly Vma[], entries: readonly PagemapEntry[], pageSize: number): Set<Vma> {
  const out = new Set<Vma>();
  let i = 0;
  for (const e of entries) {
    if (e.kind !== 'present') continue;
    const end = e.start + e.pages * pageSize;
    while (i < vmas.length && vmas[i]!.end <= e.start) i++;
    for (let j = i; j < vmas.length && vmas[j]!.start < end; j++) out.add(vmas[j]!);
  }
  return out;
}

export interface MapResult {
  /** VMAs mapped with PROT_WRITE added, to mprotect back once filled */
  widened: Vma[];
  mapped: number;
}

/** Maps every dumped VMA (but the special ones) at its address. */
export function mapVmas(remote: Remote, vmas: readonly Vma[], entries: readonly PagemapEntry[], pageSize: number): MapResult {
  const filled = vmasWithPages(vmas, entries, pageSize);
  const widened: Vma[] = [];
  const fds = new Map<string, number>();
  try {
    // One fd per file (opened first: the mmaps below take them): read-write only if a
    // shared writable mapping needs it.
    const needsRw = new Set(vmas.filter((v) => v.file && v.flags & MAP_SHARED && v.prot & PROT_WRITE).map((v) => v.file!.path));
    const mapped = vmas.filter((v) => v.kind !== 'vsyscall' && !(SPECIAL_KINDS as readonly string[]).includes(v.kind));
    for (const v of mapped) {
      if (v.kind !== 'file' || !v.file || fds.has(v.file.path)) continue;
      fds.set(v.file.path, remote.open(v.file.path, (needsRw.has(v.file.path) ? O.RDWR : O.RDONLY) | O.CLOEXEC));
    }
    const list = remote.list();
    for (const v of mapped) {
      const widen = filled.has(v) && !(v.prot & PROT_WRITE);
      const prot = v.prot | (widen ? PROT_WRITE : 0);
      let flags = (v.flags & (MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_NORESERVE)) | MAP.FIXED_NOREPLACE;
      let fd = -1;
      if (v.kind === 'file' && v.file) {
        fd = fds.get(v.file.path)!;
        flags &= ~MAP_ANONYMOUS;
      } else flags |= MAP_ANONYMOUS;
      list.add('mmap', SYS.mmap, [v.start, v.end - v.start, prot, flags, fd, v.kind === 'file' ? v.pgoff : 0], { detail: v.file?.path ?? v.kind });
      if (widen) widened.push(v);
    }
    // The fds go with the same trip (after every mmap has taken its reference).
    for (const fd of fds.values()) list.add('close', SYS.close, [fd], { goOn: true });
    let at: bigint[];
    try {
      at = list.run();
      fds.clear();
    } catch (err) {
      const v = err instanceof RemoteSyscallError && err.listIndex !== undefined ? mapped[err.listIndex] : undefined;
      if (v && errnoName((err as RemoteSyscallError).errno) === 'EEXIST')
        throw new RestoreError(
          `pid ${remote.pid}: the dumped mapping ${hex(v.start)}-${hex(v.end)} (${v.file?.path ?? v.kind}) cannot be restored: the range is taken by ${describeOccupant(remote.pid, v.start, v.end)}`,
          'address-taken',
          { cause: err },
        );
      throw err;
    }
    mapped.forEach((v, i) => {
      if (Number(at[i]) !== v.start) throw new RestoreError(`pid ${remote.pid}: mapping ${hex(v.start)}-${hex(v.end)} landed at ${hex(Number(at[i]))}`, 'address-taken');
    });
    return { widened, mapped: mapped.length };
  } finally {
    // Still open when the list failed (or never ran).
    if (fds.size > 0) {
      const close = remote.list();
      for (const fd of fds.values()) close.add('close', SYS.close, [fd], { goOn: true });
      close.run();
    }
  }
}

export interface FillProgress {
  bytes: number;
  totalBytes: number;
}

interface Batch {
  /** byte offset in the pages file */
  offset: number;
  pages: number;
  /** [address, length, ...] in the target */
  ranges: Float64Array;
}

/** Present entries cut into batches: contiguous in the file, at most FILL_BATCH_PAGES and MAX_IOVECS ranges. */
function planBatches(entries: readonly PagemapEntry[], P: number): Batch[] {
  const out: Batch[] = [];
  let ranges: number[] = [];
  let offset = -1;
  let pages = 0;
  const flush = (): void => {
    if (pages > 0) out.push({ offset, pages, ranges: new Float64Array(ranges) });
    ranges = [];
    pages = 0;
    offset = -1;
  };
  for (const e of entries) {
    if (e.kind !== 'present') continue;
    for (let done = 0; done < e.pages; ) {
      const fileOff = e.offset + done * P;
      if (pages > 0 && (offset + pages * P !== fileOff || ranges.length / 2 >= MAX_IOVECS || pages === FILL_BATCH_PAGES)) {
        flush();
        continue;
      }
      const n = Math.min(e.pages - done, FILL_BATCH_PAGES - pages);
      if (pages === 0) offset = fileOff;
      const addr = e.start + done * P;
      const last = ranges.length - 2;
      if (last >= 0 && ranges[last]! + ranges[last + 1]! === addr) ranges[last + 1] = ranges[last + 1]! + n * P;
      else ranges.push(addr, n * P);
      pages += n;
      done += n;
    }
  }
  flush();
  return out;
}

function writeBatch(pid: number, b: Batch, data: Buffer): void {
  try {
    processVmWrite(pid, b.ranges, data);
  } catch (err) {
    throw new RestoreError(`pid ${pid}: writing ${b.pages} pages at ${hex(b.ranges[0]!)}: ${(err as Error).message}`, 'process', { cause: err });
  }
}

/**
 * Copies every present page from the pages file into the process: runs that are contiguous
 * in the file are read with one pread (on the thread pool, the next batch while this one is
 * written; each page checked against its CRC) and written with one process_vm_writev of
 * many ranges.
 */
export async function fillPages(pid: number, reader: PagesReader, entries: readonly PagemapEntry[], onProgress?: (p: FillProgress) => void): Promise<number> {
  const P = reader.pageSize;
  const batches = planBatches(entries, P);
  const totalBytes = batches.reduce((n, b) => n + b.pages * P, 0);
  if (totalBytes <= SYNC_FILL_BYTES) {
    const buf = pageAlignedBuffer(totalBytes);
    let written = 0;
    for (const b of batches) {
      const data = reader.readAtSync(b.offset, b.pages, buf.subarray(0, b.pages * P));
      writeBatch(pid, b, data);
      written += data.length;
      onProgress?.({ bytes: written, totalBytes });
    }
    return written / P;
  }
  const bufs = [pageAlignedBuffer(Math.min(FILL_BATCH_PAGES * P, totalBytes)), pageAlignedBuffer(batches.length > 1 ? FILL_BATCH_PAGES * P : 0)];
  const read = (i: number): Promise<Buffer> => {
    const b = batches[i]!;
    return reader.readAt(b.offset, b.pages, bufs[i % 2]!.subarray(0, b.pages * P));
  };
  let written = 0;
  let pending: Promise<Buffer> | null = batches.length > 0 ? read(0) : null;
  try {
    for (let i = 0; i < batches.length; i++) {
      const data = await pending!;
      pending = i + 1 < batches.length ? read(i + 1) : null;
      writeBatch(pid, batches[i]!, data);
      written += data.length;
      onProgress?.({ bytes: written, totalBytes });
    }
  } finally {
    // never leave a read running into a buffer (or a file) that is about to go away
    await pending?.catch(() => undefined);
  }
  return written / P;
}

/** Puts back the protections widened for filling, then the madvise state. */
export function finishVmas(remote: Remote, vmas: readonly Vma[], widened: readonly Vma[], warn: (msg: string) => void): void {
  const list = remote.list();
  for (const v of widened) list.add('mprotect', SYS.mprotect, [v.start, v.end - v.start, v.prot]);
  // KSM may be compiled out: the process works the same without it (a warning, not a failure).
  const mergeable: Array<{ v: Vma; i: number }> = [];
  for (const v of vmas) {
    if (!v.madvise || v.kind === 'vsyscall' || (SPECIAL_KINDS as readonly string[]).includes(v.kind)) continue;
    for (const advice of MADV_KNOWN) {
      if (!(v.madvise & (1 << advice))) continue;
      const i = list.add('madvise', SYS.madvise, [v.start, v.end - v.start, advice], { goOn: advice === MADV_MERGEABLE });
      if (advice === MADV_MERGEABLE) mergeable.push({ v, i });
    }
  }
  const results = list.run();
  for (const { v, i } of mergeable) {
    const r = results[i]!;
    if (r < 0n) warn(`pid ${remote.pid}: madvise(${hex(v.start)}-${hex(v.end)}, ${MADV_MERGEABLE}) failed: ${errnoName(Number(-r))}`);
  }
}
