/**
 * Which pages of a restored process the lazy-pages daemon serves, decided in one place so
 * restore (which registers them and leaves them empty) and the daemon (which fills them)
 * cannot disagree.
 *
 * A lazy dump's 'lazy' entries come from the page server. An eager dump restored with
 * --lazy-pages serves its anonymous present pages from the local images instead, so the
 * process resumes before they are all written.
 */
import type { Inventory, PagemapEntry, ProcessImage, Vma } from '../image/index.js';

export interface LazyPlanRange {
  start: number;
  pages: number;
  /** Where the bytes are: the page server, or the pages file at `offset`. */
  from: 'source' | 'images';
}

/** VMAs whose pages may be served lazily: private anonymous memory. */
export function lazyCapable(v: Vma): boolean {
  return (v.kind === 'anon' || v.kind === 'stack' || v.kind === 'heap') && (v.flags & 0x02) !== 0; // MAP_PRIVATE
}

interface Span {
  start: number;
  end: number;
}

function byStart(a: Span, b: Span): number {
  return a.start - b.start;
}

/**
 * Whether [start, end) lies inside one of the lazy-capable VMAs, which `sorted` holds by
 * address: a binary search. (Every lookup here is by address, never a search of every VMA
 * for every entry: a process may have tens of thousands of both.)
 */
function inLazyVma(sorted: readonly Vma[], start: number, end: number): boolean {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]!.end <= start) lo = mid + 1;
    else hi = mid;
  }
  const v = sorted[lo];
  return v !== undefined && v.start <= start && end <= v.end;
}

function lazyCapableByAddress(vmas: readonly Vma[]): Vma[] {
  return vmas.filter(lazyCapable).sort(byStart);
}

export function lazyRanges(inv: Inventory, p: ProcessImage): LazyPlanRange[] {
  const P = inv.pageSize;
  const out: LazyPlanRange[] = [];
  const capable = inv.lazy ? [] : lazyCapableByAddress(p.core.vmas);
  for (const e of p.pagemap.entries) {
    if (e.kind === 'lazy') out.push({ start: e.start, pages: e.pages, from: 'source' });
    else if (e.kind === 'present' && !inv.lazy && inLazyVma(capable, e.start, e.start + e.pages * P)) out.push({ start: e.start, pages: e.pages, from: 'images' });
  }
  return out;
}

/**
 * The VMAs of `vmas` that overlap one of `ranges` (which do not overlap each other), in the
 * order of `vmas`: one sweep over both sorted by address. Searching every range for each
 * VMA took a restore ~10 s at 20,000 VMAs, before the process could resume.
 */
export function vmasOverlapping<V extends Span>(vmas: readonly V[], ranges: readonly Span[]): V[] {
  const rs = [...ranges].sort(byStart);
  const hit = new Set<V>();
  let j = 0;
  for (const v of [...vmas].sort(byStart)) {
    while (j < rs.length && rs[j]!.end <= v.start) j++;
    if (j < rs.length && rs[j]!.start < v.end) hit.add(v);
  }
  return vmas.filter((v) => hit.has(v));
}

/** The VMAs to register with the process's userfaultfd: every lazy-capable VMA holding a lazy range. */
export function vmasToRegister(inv: Inventory, p: ProcessImage): Vma[] {
  const ranges = lazyRanges(inv, p).map((r) => ({ start: r.start, end: r.start + r.pages * inv.pageSize }));
  return vmasOverlapping(p.core.vmas.filter(lazyCapable), ranges);
}

/**
 * The pagemap as a lazy restore must treat it: pages the daemon serves from the images
 * become 'lazy' (restore leaves them empty and registers them), the rest is unchanged.
 */
export function entriesForLazyRestore(inv: Inventory, p: ProcessImage): PagemapEntry[] {
  if (inv.lazy) return p.pagemap.entries;
  const capable = lazyCapableByAddress(p.core.vmas);
  return p.pagemap.entries.map((e) =>
    e.kind === 'present' && inLazyVma(capable, e.start, e.start + e.pages * inv.pageSize) ? { start: e.start, pages: e.pages, kind: 'lazy' as const } : e,
  );
}
