import * as fs from 'node:fs';
import { ProcError, parseError, procDir, wrapFsError } from './errors.js';
import { PAGE_SIZE, USER_ADDR_LIMIT } from './maps.js';

// Our page flags (one byte per run). Derived from the 64-bit pagemap entry
// (Documentation/admin-guide/mm/pagemap.rst):
//   bit 63 present, 62 swapped, 61 file-page or shared-anon, 57 pte uffd-wp,
//   56 exclusively mapped, 55 soft-dirty, 0-54 PFN (present) or swap type/offset.
/** A page is in RAM. */
export const PM_PRESENT = 1;
/** A page is in swap: its contents must be saved like a present one. */
export const PM_SWAPPED = 2;
/** Page cache page (unmodified file page) or shared anonymous/shmem page: not ours to save in a private file VMA. */
export const PM_FILE = 4;
/** Mapped by this process only (mapcount 1). Not set for COW pages still shared after fork. */
export const PM_EXCLUSIVE = 8;
/** Soft-dirty (CONFIG_MEM_SOFT_DIRTY; never set on this kernel). */
export const PM_SOFT_DIRTY = 16;
/** Write-protected by a userfaultfd (pte marker). */
export const PM_UFFD_WP = 32;
/**
 * The page is the shared zero page (or the huge zero page): present, reads as zeros, costs
 * nothing to restore. Detecting it needs the PFN, which the kernel shows only to
 * CAP_SYS_ADMIN (else PFN bits read as 0) and /proc/kpageflags (root only). We run as root;
 * without the privilege the flag is simply never set.
 */
export const PM_ZERO = 64;

const KPF_ZERO_PAGE = 24n;

/** Our flags for each value of the top 9 bits of a pagemap entry (bits 55..63: hi >>> 23). */
const FLAGS_OF_HI = new Uint8Array(512);
for (let k = 0; k < 512; k++) {
  const hi = (k << 23) >>> 0;
  let f = 0;
  if (hi & 0x80000000) f |= PM_PRESENT;
  if (hi & 0x40000000) f |= PM_SWAPPED;
  if (hi & 0x20000000) f |= PM_FILE;
  if (hi & 0x02000000) f |= PM_UFFD_WP;
  if (hi & 0x01000000) f |= PM_EXCLUSIVE;
  if (hi & 0x00800000) f |= PM_SOFT_DIRTY;
  FLAGS_OF_HI[k] = f;
}
const PFN_HI_MASK = 0x7fffff;

export interface PageRun {
  start: number;
  pages: number;
  flags: number;
}

/**
 * Runs of consecutive pages with identical flags, stored column-wise in typed arrays so a
 * 1 GiB VMA with fragmented residency costs a few bytes per run and no object per page.
 */
export class PageRuns implements Iterable<PageRun> {
  constructor(
    readonly starts: Float64Array,
    readonly pages: Uint32Array,
    readonly flags: Uint8Array,
  ) {}

  get count(): number {
    return this.starts.length;
  }

  run(i: number): PageRun {
    const start = this.starts[i];
    const pages = this.pages[i];
    const flags = this.flags[i];
    if (start === undefined || pages === undefined || flags === undefined) throw new RangeError(`run ${i} out of range`);
    return { start, pages, flags };
  }

  *[Symbol.iterator](): Iterator<PageRun> {
    for (let i = 0; i < this.starts.length; i++) yield this.run(i);
  }

  /** Pages whose flags, masked by `mask`, equal `value` (default: any bit of mask set). */
  countPages(mask: number, value?: number): number {
    let n = 0;
    for (let i = 0; i < this.starts.length; i++) {
      const f = (this.flags[i] ?? 0) & mask;
      if (value === undefined ? f !== 0 : f === value) n += this.pages[i] ?? 0;
    }
    return n;
  }

  /** Runs matching a predicate on their flags. */
  filter(pred: (flags: number) => boolean): PageRun[] {
    const out: PageRun[] = [];
    for (let i = 0; i < this.starts.length; i++) if (pred(this.flags[i] ?? 0)) out.push(this.run(i));
    return out;
  }
}

export interface PagemapOptions {
  /** Tell zero-page mappings apart (PM_ZERO). Default true. */
  detectZero?: boolean;
  /** Pagemap entries read per syscall. Default 262144 (2 MiB buffer, 1 GiB of address space). */
  chunkPages?: number;
}

// The small zero page lives in the kernel's .bss; find it once per process by scanning the
// kpageflags of the "Kernel bss" range of /proc/iomem (a few hundred entries).
let smallZeroPfn: number | null | undefined;
/** PFNs found to be zero pages (the huge zero folio is allocated at run time). */
const knownZeroPfns = new Set<number>();

function readKpageflags(fd: number, firstPfn: number, count: number): BigUint64Array {
  const buf = new BigUint64Array(count);
  const bytes = new Uint8Array(buf.buffer);
  let done = 0;
  while (done < bytes.length) {
    const n = fs.readSync(fd, bytes, done, bytes.length - done, firstPfn * 8 + done);
    if (n <= 0) break;
    done += n;
  }
  return buf;
}

export function findSmallZeroPfn(): number | null {
  if (smallZeroPfn !== undefined) return smallZeroPfn;
  smallZeroPfn = null;
  try {
    const iomem = fs.readFileSync('/proc/iomem', 'utf8');
    const m = /^\s*([0-9a-f]+)-([0-9a-f]+) : Kernel bss$/m.exec(iomem);
    if (!m) return null;
    const first = Math.floor(parseInt(m[1] ?? '0', 16) / PAGE_SIZE);
    const last = Math.floor(parseInt(m[2] ?? '0', 16) / PAGE_SIZE);
    // Without root iomem shows zeros: nothing to scan.
    if (first === 0 || last < first || last - first > 1 << 20) return null;
    const fd = fs.openSync('/proc/kpageflags', 'r');
    try {
      const flags = readKpageflags(fd, first, last - first + 1);
      for (let i = 0; i < flags.length; i++) {
        if (((flags[i] ?? 0n) >> KPF_ZERO_PAGE) & 1n) {
          smallZeroPfn = first + i;
          knownZeroPfns.add(smallZeroPfn);
          break;
        }
      }
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    // not root, or no kpageflags: PM_ZERO is then only found through the fallback
  }
  return smallZeroPfn;
}

/** Looks up KPF_ZERO_PAGE for PFNs not known yet, coalescing nearby PFNs into one read. */
function lookupZeroPfns(pfns: number[]): void {
  if (pfns.length === 0) return;
  let fd: number;
  try {
    fd = fs.openSync('/proc/kpageflags', 'r');
  } catch {
    return;
  }
  try {
    pfns.sort((a, b) => a - b);
    let i = 0;
    while (i < pfns.length) {
      const first = pfns[i] ?? 0;
      let j = i;
      while (j + 1 < pfns.length && (pfns[j + 1] ?? 0) - first < 512) j++;
      const last = pfns[j] ?? first;
      const flags = readKpageflags(fd, first, last - first + 1);
      for (let k = i; k <= j; k++) {
        const pfn = pfns[k] ?? 0;
        if (((flags[pfn - first] ?? 0n) >> KPF_ZERO_PAGE) & 1n) knownZeroPfns.add(pfn);
      }
      i = j + 1;
    }
  } finally {
    fs.closeSync(fd);
  }
}

const DEFAULT_CHUNK_PAGES = 1 << 18;

/**
 * Scratch buffers shared by every reader (reads are synchronous, so never used twice at
 * once), kept across reads: allocating and faulting in megabytes per VMA cost more than
 * reading most VMAs' pagemap.
 */
let scratchBuf: { pages: number; u32: Uint32Array; bytes: Uint8Array; pageFlags: Uint8Array; unknownIdx: Uint32Array } | undefined;
function scratch(pages: number): NonNullable<typeof scratchBuf> {
  if (!scratchBuf || scratchBuf.pages < pages) {
    const ab = new ArrayBuffer(pages * 8);
    scratchBuf = { pages, u32: new Uint32Array(ab), bytes: new Uint8Array(ab), pageFlags: new Uint8Array(pages), unknownIdx: new Uint32Array(pages) };
  }
  return scratchBuf;
}

/**
 * Our flags for the first n entries of a pagemap buffer into pageFlags; pages that may be the
 * zero page but are not known yet go to unknownIdx/unknown (their PFNs).
 * Tight loops over typed arrays: a 1 GiB VMA is 262144 entries (see warmPagemapDecoder).
 */
function decodeFlags(u32: Uint32Array, n: number, detectZero: boolean, pageFlags: Uint8Array, unknownIdx: Uint32Array, unknown: number[]): void {
  const zeroPfn = smallZeroPfn ?? -1;
  for (let i = 0; i < n; i++) {
    const hi = u32[2 * i + 1]!;
    const f = FLAGS_OF_HI[hi >>> 23]!;
    pageFlags[i] = f;
    // The zero page is never "normal": no file bit, no exclusive bit.
    if (detectZero && (f & (PM_PRESENT | PM_FILE | PM_EXCLUSIVE | PM_SWAPPED)) === PM_PRESENT) {
      const pfn = u32[2 * i]! + (hi & PFN_HI_MASK) * 0x100000000;
      if (pfn === zeroPfn || knownZeroPfns.has(pfn)) pageFlags[i] = f | PM_ZERO;
      else if (pfn !== 0) {
        unknownIdx[unknown.length] = i;
        unknown.push(pfn);
      }
    }
  }
}

/** Appends the runs of pageFlags[0, n) (page 0 at chunkStart) to the run columns; returns the last run's flags. */
function appendRuns(pageFlags: Uint8Array, n: number, chunkStart: number, curFlags: number, runStarts: number[], runPages: number[], runFlags: number[]): number {
  for (let i = 0; i < n; ) {
    const f = pageFlags[i]!;
    let j = i + 1;
    while (j < n && pageFlags[j] === f) j++;
    if (f === curFlags) {
      runPages[runPages.length - 1]! += j - i;
    } else {
      runStarts.push(chunkStart + i * PAGE_SIZE);
      runPages.push(j - i);
      runFlags.push(f);
      curFlags = f;
    }
    i = j;
  }
  return curFlags;
}

/**
 * Runs the decoding loops once over a synthetic buffer, so that the JIT has compiled them
 * before a dump needs them on a frozen process (run cold, 1 GiB of pagemap costs tens of ms
 * more). Touches no process and no file. Cheap to call again.
 */
let warmed = false;
export function warmPagemapDecoder(): void {
  if (warmed) return;
  warmed = true;
  const n = 1 << 16;
  scratch(DEFAULT_CHUNK_PAGES);
  // Also allocates (and faults in) the shared scratch buffers a reader will use.
  const { u32, pageFlags, unknownIdx } = scratch(n);
  // present + exclusive pages (the common case), with a few flag changes so every branch runs
  for (let i = 0; i < n; i++) {
    u32[2 * i] = 0;
    u32[2 * i + 1] = i % 4096 === 0 ? 0 : 0x81000000;
  }
  for (let k = 0; k < 3; k++) {
    decodeFlags(u32, n, true, pageFlags, unknownIdx, []);
    appendRuns(pageFlags, n, 0, -1, [], [], []);
  }
}

/** Reads /proc/PID/pagemap for many ranges through one open fd. Close it when done. */
export class PagemapReader {
  private fd: number | undefined;
  private readonly file: string;
  private readonly chunkPages: number;
  private readonly detectZero: boolean;

  constructor(
    readonly pid: number,
    opts: PagemapOptions = {},
  ) {
    this.file = `${procDir(pid)}/pagemap`;
    this.chunkPages = Math.max(1, Math.min(opts.chunkPages ?? DEFAULT_CHUNK_PAGES, 1 << 22));
    this.detectZero = opts.detectZero ?? true;
    try {
      this.fd = fs.openSync(this.file, 'r');
    } catch (e) {
      throw wrapFsError(pid, this.file, e);
    }
    if (this.detectZero) findSmallZeroPfn();
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private checkRange(start: number, end: number): number {
    const { pid, file } = this;
    if (this.fd === undefined) throw new ProcError(`pid ${pid}: ${file}: reader is closed`, 'EINVAL', pid, file);
    if (start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0 || end < start || end > USER_ADDR_LIMIT) {
      throw new ProcError(`pid ${pid}: ${file}: bad range 0x${start.toString(16)}-0x${end.toString(16)}`, 'EINVAL', pid, file);
    }
    return this.fd;
  }

  /** Flags of every page in [start, end), as runs. start and end must be page aligned. */
  read(start: number, end: number): PageRuns {
    const { pid, file } = this;
    const fd = this.checkRange(start, end);
    const runs = new RunsBuilder(this.detectZero);
    const { u32, bytes } = scratch(Math.min(this.chunkPages, (end - start) / PAGE_SIZE));
    for (let chunkStart = start; chunkStart < end; ) {
      const n = Math.min(this.chunkPages, (end - chunkStart) / PAGE_SIZE);
      const want = n * 8;
      let got = 0;
      try {
        while (got < want) {
          const r = fs.readSync(fd, bytes, got, want - got, (chunkStart / PAGE_SIZE) * 8 + got);
          if (r <= 0) break;
          got += r;
        }
      } catch (e) {
        throw wrapFsError(pid, file, e);
      }
      if (got !== want) throw parseError(pid, file, `short read at 0x${chunkStart.toString(16)} (${got} of ${want} bytes)`);
      runs.add(chunkStart, u32, n);
      chunkStart += n * PAGE_SIZE;
    }
    return runs.finish();
  }

  /**
   * `read` with the reads (one pread per chunk, all submitted at once) done on the thread
   * pool, so the kernel's page-table walk runs while this thread does something else; the
   * flags are decoded here once they are in. Holds (end - start) / 512 bytes meanwhile.
   * Keep the reader open until it settles.
   */
  readAsync(start: number, end: number): Promise<PageRuns> {
    const { pid, file } = this;
    let fd: number;
    try {
      fd = this.checkRange(start, end);
    } catch (e) {
      return Promise.reject(e);
    }
    const chunks: Array<Promise<{ chunkStart: number; u32: Uint32Array; n: number }>> = [];
    for (let chunkStart = start; chunkStart < end; ) {
      const n = Math.min(this.chunkPages, (end - chunkStart) / PAGE_SIZE);
      const cs = chunkStart;
      const ab = new ArrayBuffer(n * 8);
      chunks.push(
        new Promise((resolve, reject) => {
          // A pagemap read returns everything asked for (or fails): no short reads to resume.
          fs.read(fd, new Uint8Array(ab), 0, n * 8, (cs / PAGE_SIZE) * 8, (err, got) => {
            if (err) reject(wrapFsError(pid, file, err));
            else if (got !== n * 8) reject(parseError(pid, file, `short read at 0x${cs.toString(16)} (${got} of ${n * 8} bytes)`));
            else resolve({ chunkStart: cs, u32: new Uint32Array(ab), n });
          });
        }),
      );
      chunkStart += n * PAGE_SIZE;
    }
    return Promise.all(chunks).then((done) => {
      const runs = new RunsBuilder(this.detectZero);
      for (const c of done) runs.add(c.chunkStart, c.u32, c.n);
      return runs.finish();
    });
  }
}

/** Decodes consecutive chunks of pagemap entries into runs. */
class RunsBuilder {
  private readonly starts: number[] = [];
  private readonly pages: number[] = [];
  private readonly flags: number[] = [];
  private cur = -1;

  constructor(private readonly detectZero: boolean) {}

  /** The n entries in u32 (two words each) describe the pages from chunkStart on. */
  add(chunkStart: number, u32: Uint32Array, n: number): void {
    const { pageFlags, unknownIdx } = scratch(n);
    const unknown: number[] = [];
    decodeFlags(u32, n, this.detectZero, pageFlags, unknownIdx, unknown);
    if (unknown.length > 0) {
      // Shared COW pages after fork look the same as zero pages until kpageflags says.
      lookupZeroPfns(unknown.slice());
      for (let k = 0; k < unknown.length; k++) {
        if (knownZeroPfns.has(unknown[k]!)) {
          const i = unknownIdx[k]!;
          pageFlags[i] = pageFlags[i]! | PM_ZERO;
        }
      }
    }
    this.cur = appendRuns(pageFlags, n, chunkStart, this.cur, this.starts, this.pages, this.flags);
  }

  finish(): PageRuns {
    return new PageRuns(Float64Array.from(this.starts), Uint32Array.from(this.pages), Uint8Array.from(this.flags));
  }
}

/** Flags of the pages of [start, end) in process pid, as runs of equal flags. */
export function readPagemap(pid: number, start: number, end: number, opts: PagemapOptions = {}): PageRuns {
  const r = new PagemapReader(pid, opts);
  try {
    return r.read(start, end);
  } finally {
    r.close();
  }
}

export function describePageFlags(flags: number): string {
  const names: string[] = [];
  if (flags & PM_PRESENT) names.push('present');
  if (flags & PM_SWAPPED) names.push('swapped');
  if (flags & PM_FILE) names.push('file');
  if (flags & PM_EXCLUSIVE) names.push('exclusive');
  if (flags & PM_SOFT_DIRTY) names.push('soft-dirty');
  if (flags & PM_UFFD_WP) names.push('uffd-wp');
  if (flags & PM_ZERO) names.push('zero');
  return names.length ? names.join('|') : 'none';
}
