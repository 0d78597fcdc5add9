/**
 * Which pages of a process are populated (present or swapped), as runs with our PM_* flags,
 * through the PAGEMAP_SCAN ioctl (Linux 6.7+): the kernel reports one region per run of
 * pages with equal categories, where reading /proc/PID/pagemap costs 8 bytes and a decode
 * per page (a 1 GiB VMA: ~4 ms instead of ~16 ms, measured on a frozen memhog).
 *
 * Only what a dump needs is asked for. PAGE_IS_FILE makes the kernel look at every present
 * page's struct page (3x the cost of the walk alone), and it only tells anything in private
 * file mappings (the copied-on-write pages are the anonymous ones there): it is asked only
 * for the ranges marked `file`. PAGE_IS_PFNZERO (the shared zero page, also the huge one)
 * needs no privilege, unlike the PFNs of a pagemap read.
 */
import { PAGE_IS, pagemapScanPid } from '@lazymig/uffd-rs';
import { PAGE_SIZE } from './maps.js';
import { PM_FILE, PM_PRESENT, PM_SWAPPED, PM_ZERO, PageRuns } from './pagemap.js';

export interface ScanRange {
  start: number;
  end: number;
  /** A private file mapping: tell page-cache pages (PM_FILE) from copied-on-write ones. */
  file: boolean;
}

const POPULATED = PAGE_IS.PRESENT | PAGE_IS.SWAPPED;

function scan(pid: number, ranges: readonly ScanRange[], report: number): Float64Array {
  if (ranges.length === 0) return new Float64Array(0);
  const flat = new Float64Array(ranges.length * 2);
  ranges.forEach((r, i) => {
    flat[2 * i] = r.start;
    flat[2 * i + 1] = r.end;
  });
  return pagemapScanPid(pid, flat, POPULATED, report);
}

function pmFlags(categories: number): number {
  let f = 0;
  if (categories & PAGE_IS.PRESENT) f |= PM_PRESENT;
  if (categories & PAGE_IS.SWAPPED) f |= PM_SWAPPED;
  if (categories & PAGE_IS.FILE) f |= PM_FILE;
  if (categories & PAGE_IS.PFNZERO) f |= PM_ZERO;
  return f;
}

/**
 * The populated pages of `ranges` (sorted, non-overlapping, page aligned; one per VMA) of
 * process `pid`, in address order. Pages not in any run were never touched (or are the
 * file's, for a file range's unpopulated pages). No run spans two ranges.
 */
export function scanPopulated(pid: number, ranges: readonly ScanRange[]): PageRuns {
  const anon = scan(pid, ranges.filter((r) => !r.file), POPULATED | PAGE_IS.PFNZERO);
  const file = scan(pid, ranges.filter((r) => r.file), POPULATED | PAGE_IS.PFNZERO | PAGE_IS.FILE);
  const n = (anon.length + file.length) / 3;
  const starts = new Float64Array(n);
  const pages = new Uint32Array(n);
  const flags = new Uint8Array(n);
  // Merge the two address-ordered lists.
  let a = 0;
  let f = 0;
  for (let i = 0; i < n; i++) {
    const takeAnon = f >= file.length || (a < anon.length && anon[a]! < file[f]!);
    const src = takeAnon ? anon : file;
    const k = takeAnon ? a : f;
    starts[i] = src[k]!;
    pages[i] = (src[k + 1]! - src[k]!) / PAGE_SIZE;
    flags[i] = pmFlags(src[k + 2]!);
    if (takeAnon) a += 3;
    else f += 3;
  }
  return new PageRuns(starts, pages, flags);
}
