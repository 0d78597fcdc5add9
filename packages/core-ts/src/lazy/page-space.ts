/**
 * Which lazy pages of one restored process are still to come.
 *
 * Each range keeps one state byte per page. A range knows both where its pages live now
 * (dst, in the restored process) and where they came from (src, in the dumped process):
 * the two differ once the process mremap()s a lazy range.
 */
export const MISSING = 0;
export const REQUESTED = 1;
/** Installed, or dropped (unmapped / MADV_DONTNEED'd / moved away): never to be installed. */
export const DONE = 2;

export interface LazyRange {
  dst: number;
  src: number;
  pages: number;
  state: Uint8Array;
  /** First page that may still be MISSING (everything before it is not). */
  scan: number;
}

export interface Run {
  range: LazyRange;
  first: number;
  count: number;
}

export class PageSpace {
  readonly ranges: LazyRange[] = [];
  /** Pages not yet DONE. */
  remaining = 0;
  /** Where nextMissing last found pages, and from which hint (see there). */
  #resume: { hint: number; range: LazyRange } | null = null;

  constructor(readonly pageSize: number) {}

  add(dst: number, src: number, pages: number, state?: Uint8Array): LazyRange {
    const r: LazyRange = { dst, src, pages, state: state ?? new Uint8Array(pages), scan: 0 };
    // Ranges never overlap: whatever was at these addresses before (unmapped by the mremap
    // that moves pages here) gives way.
    this.#carve(dst, dst + pages * this.pageSize);
    // A fresh range is all MISSING: counting it page by page cost 5-10 ms for 1 GiB in a
    // daemon's first (unoptimized) run, between a hand-over and its acknowledgement.
    if (!state) this.remaining += pages;
    else for (let i = 0; i < pages; i++) if (r.state[i] !== DONE) this.remaining++;
    this.ranges.splice(this.#firstEndingAfter(dst), 0, r);
    return r;
  }

  #end(r: LazyRange): number {
    return r.dst + r.pages * this.pageSize;
  }

  /**
   * Index of the first range that ends after `address` (ranges.length if none). The ranges
   * are sorted and never overlap, so their ends are sorted too: every lookup by address is
   * a binary search. A process may have tens of thousands of lazy VMAs, and linear walks
   * made adding them (before the hand-over's acknowledgement) and each background request
   * cost time in proportion.
   */
  #firstEndingAfter(address: number): number {
    const ranges = this.ranges;
    const P = this.pageSize;
    let lo = 0;
    let hi = ranges.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const r = ranges[mid]!;
      // Inline, not #end(): this runs for every fault, in a daemon without TurboFan.
      if (r.dst + r.pages * P <= address) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Removes [start, end) from every range, splitting those that straddle it. */
  #carve(start: number, end: number): void {
    const P = this.pageSize;
    const from = this.#firstEndingAfter(start);
    let to = from;
    while (to < this.ranges.length && this.ranges[to]!.dst < end) to++;
    for (let k = to - 1; k >= from; k--) {
      const r = this.ranges[k]!;
      const a = Math.max(0, Math.floor((start - r.dst) / P));
      const b = Math.min(r.pages, Math.ceil((end - r.dst) / P));
      for (let i = a; i < b; i++) if (r.state[i] !== DONE) this.remaining--;
      const parts: LazyRange[] = [];
      if (a > 0) parts.push({ dst: r.dst, src: r.src, pages: a, state: r.state.slice(0, a), scan: Math.min(r.scan, a) });
      if (b < r.pages)
        parts.push({ dst: r.dst + b * P, src: r.src + b * P, pages: r.pages - b, state: r.state.slice(b), scan: Math.max(0, r.scan - b) });
      this.ranges.splice(k, 1, ...parts);
    }
  }

  /** The ranges that overlap [start, end), in address order. */
  #overlapping(start: number, end: number): LazyRange[] {
    const out: LazyRange[] = [];
    for (let k = this.#firstEndingAfter(start); k < this.ranges.length && this.ranges[k]!.dst < end; k++) out.push(this.ranges[k]!);
    return out;
  }

  /** The range holding address, or undefined. */
  find(address: number): LazyRange | undefined {
    const r = this.ranges[this.#firstEndingAfter(address)];
    return r !== undefined && r.dst <= address ? r : undefined;
  }

  /**
   * Claims up to max pages from page `first` on, while they are MISSING (or REQUESTED, when
   * a fault must not wait for a background reply), marking them REQUESTED.
   */
  claim(range: LazyRange, first: number, max: number, overtake: boolean): Run | null {
    // Native scans and fill, not a loop in JS (see nextMissing): a background claim spans
    // up to a whole chunk.
    const window = range.state.subarray(first, Math.min(range.pages, first + max));
    let n = window.indexOf(DONE);
    if (n < 0) n = window.length;
    if (!overtake) {
      const requested = window.indexOf(REQUESTED);
      if (requested >= 0 && requested < n) n = requested;
    }
    if (n <= 0) return null;
    window.fill(REQUESTED, 0, n);
    return { range, first, count: n };
  }

  /**
   * Next MISSING run at or after `hint` (wrapping around), up to max pages.
   *
   * The searches are TypedArray.indexOf, not loops in JS: near the end of a transfer the
   * pages ahead of the latest fault are all in or in flight, and each search crosses them.
   * A JS loop did that at ~50 ns a page in a daemon without V8's optimizing compiler
   * (bin/lazymig runs with --max-opt=1): ~5 ms a search at 1 GiB, hundreds of searches
   * per transfer on the thread that serves faults. indexOf runs natively: ~0.2 ms at most.
   */
  nextMissing(hint: number, max: number): Run | null {
    const n = this.ranges.length;
    if (n === 0 || this.remaining === 0) return null;
    let start = this.#firstEndingAfter(hint);
    if (start >= n) start = 0;
    // Asked again from the same hint: go on from the range the last search ended in. The
    // ranges between hint and there had nothing MISSING then; one that has again (a request
    // given back) is found when the search wraps around. Without this, background requests
    // from one hint each crossed every range already done: quadratic in the ranges.
    const resume = this.#resume;
    if (resume && resume.hint === hint) {
      const i = this.#firstEndingAfter(resume.range.dst);
      if (this.ranges[i] === resume.range) start = i;
    }
    for (let k = 0; k < n; k++) {
      const r = this.ranges[(start + k) % n]!;
      const first = r.state.indexOf(MISSING, r.scan);
      if (first < 0) {
        r.scan = r.pages;
        continue;
      }
      r.scan = first;
      this.#resume = { hint, range: r };
      // In the range that holds the hint, the first missing page at or after the hint; else
      // (and in the ranges after it) the first one.
      const at = hint > r.dst && hint < this.#end(r) ? Math.floor((hint - r.dst) / this.pageSize) : 0;
      const ahead = at > first ? r.state.indexOf(MISSING, at) : first;
      return this.claim(r, ahead >= 0 ? ahead : first, max, false);
    }
    return null;
  }

  /** Marks pages DONE; returns how many were not DONE before. */
  finish(range: LazyRange, first: number, count: number): number {
    // The usual run (a whole reply, none of it DONE yet) natively, as in nextMissing: the
    // loop below was the daemon's busiest JS function in a 1 GiB transfer (perf).
    const run = range.state.subarray(first, first + count);
    if (run.indexOf(DONE) < 0) {
      run.fill(DONE);
      this.remaining -= run.length;
      return run.length;
    }
    let n = 0;
    for (let i = first; i < first + count; i++) {
      if (range.state[i] !== DONE) {
        range.state[i] = DONE;
        n++;
      }
    }
    this.remaining -= n;
    return n;
  }

  /** A REQUESTED run that could not be installed goes back to MISSING. */
  release(range: LazyRange, first: number, count: number): void {
    for (let i = first; i < first + count; i++) if (range.state[i] === REQUESTED) range.state[i] = MISSING;
    range.scan = Math.min(range.scan, first);
  }

  /** Everything in [start, end) is gone from the process: nothing may be installed there. */
  drop(start: number, end: number): number {
    let n = 0;
    for (const r of this.#overlapping(start, end)) {
      const a = Math.max(0, Math.floor((start - r.dst) / this.pageSize));
      const b = Math.min(r.pages, Math.ceil((end - r.dst) / this.pageSize));
      n += this.finish(r, a, b - a);
    }
    return n;
  }

  /** The process moved [from, from+len) to `to`: pages still to come move with it. */
  remap(from: number, to: number, len: number): void {
    const end = from + len;
    const moved: Array<{ dst: number; src: number; state: Uint8Array }> = [];
    for (const r of this.#overlapping(from, end)) {
      const a = Math.max(0, Math.floor((from - r.dst) / this.pageSize));
      const b = Math.min(r.pages, Math.ceil((end - r.dst) / this.pageSize));
      const state = r.state.slice(a, b);
      // In-flight requests of the old place are not installed at the new one: fetch again.
      for (let i = 0; i < state.length; i++) if (state[i] === REQUESTED) state[i] = MISSING;
      moved.push({ dst: to + (r.dst + a * this.pageSize - from), src: r.src + a * this.pageSize, state });
      this.finish(r, a, b - a);
    }
    for (const m of moved) this.add(m.dst, m.src, m.state.length, m.state);
  }

  /** A copy for a forked child: what the parent still misses, the child misses too. */
  fork(): PageSpace {
    const child = new PageSpace(this.pageSize);
    for (const r of this.ranges) {
      const state = r.state.slice();
      for (let i = 0; i < state.length; i++) if (state[i] === REQUESTED) state[i] = MISSING;
      child.add(r.dst, r.src, r.pages, state);
    }
    return child;
  }
}
