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

function inLazyVma(vmas: readonly Vma[], e: PagemapEntry, pageSize: number): boolean {
  const end = e.start + e.pages * pageSize;
  return vmas.some((v) => lazyCapable(v) && v.start <= e.start && end <= v.end);
}

export function lazyRanges(inv: Inventory, p: ProcessImage): LazyPlanRange[] {
  const P = inv.pageSize;
  const out: LazyPlanRange[] = [];
  for (const e of p.pagemap.entries) {
    if (e.kind === 'lazy') out.push({ start: e.start, pages: e.pages, from: 'source' });
    else if (e.kind === 'present' && !inv.lazy && inLazyVma(p.core.vmas, e, P)) out.push({ start: e.start, pages: e.pages, from: 'images' });
  }
  return out;
}

/** The VMAs to register with the process's userfaultfd: every lazy-capable VMA holding a lazy range. */
export function vmasToRegister(inv: Inventory, p: ProcessImage): Vma[] {
  const ranges = lazyRanges(inv, p);
  return p.core.vmas.filter(
    (v) => lazyCapable(v) && ranges.some((r) => r.start < v.end && r.start + r.pages * inv.pageSize > v.start),
  );
}

/**
 * The pagemap as a lazy restore must treat it: pages the daemon serves from the images
 * become 'lazy' (restore leaves them empty and registers them), the rest is unchanged.
 */
export function entriesForLazyRestore(inv: Inventory, p: ProcessImage): PagemapEntry[] {
  if (inv.lazy) return p.pagemap.entries;
  return p.pagemap.entries.map((e) =>
    e.kind === 'present' && inLazyVma(p.core.vmas, e, inv.pageSize) ? { start: e.start, pages: e.pages, kind: 'lazy' as const } : e,
  );
}
