/**
 * The only memory a page server may hand out: the lazy ranges recorded at dump time.
 * Every request is checked here before anything is read, so a peer that lies about an
 * address or a length learns nothing else of the frozen process's memory.
 */
export interface LazyRange {
  pid: number;
  /** Page-aligned start address. */
  start: number;
  pages: number;
}

export class LazyRanges {
  readonly #byPid = new Map<number, { starts: number[]; ends: number[] }>();
  readonly #pageSize: number;

  constructor(ranges: Iterable<LazyRange>, pageSize: number) {
    this.#pageSize = pageSize;
    const grouped = new Map<number, LazyRange[]>();
    for (const r of ranges) {
      if (r.pages <= 0 || r.start % pageSize !== 0) throw new RangeError(`bad lazy range pid ${r.pid} at 0x${r.start.toString(16)}`);
      let list = grouped.get(r.pid);
      if (!list) grouped.set(r.pid, (list = []));
      list.push(r);
    }
    for (const [pid, list] of grouped) {
      list.sort((a, b) => a.start - b.start);
      const starts: number[] = [];
      const ends: number[] = [];
      for (const r of list) {
        const end = r.start + r.pages * pageSize;
        // Adjacent ranges merge, so a request may span what the dump wrote as two.
        if (ends.length > 0 && r.start <= ends[ends.length - 1]!) {
          if (r.start < ends[ends.length - 1]!) throw new RangeError(`overlapping lazy ranges in pid ${pid} at 0x${r.start.toString(16)}`);
          ends[ends.length - 1] = end;
        } else {
          starts.push(r.start);
          ends.push(end);
        }
      }
      this.#byPid.set(pid, { starts, ends });
    }
  }

  /** True when [address, address + pages) lies wholly inside one lazy range of pid. */
  contains(pid: number, address: number, pages: number): boolean {
    const r = this.#byPid.get(pid);
    if (!r || pages <= 0 || address % this.#pageSize !== 0) return false;
    const end = address + pages * this.#pageSize;
    // Last range starting at or before address.
    let lo = 0;
    let hi = r.starts.length - 1;
    let found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (r.starts[mid]! <= address) {
        found = mid;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found >= 0 && end <= r.ends[found]!;
  }

  /** Every merged range as flat [pid, start, end, ...] (what a native PageStream checks against). */
  flat(): Float64Array {
    const out: number[] = [];
    for (const [pid, r] of this.#byPid) r.starts.forEach((start, i) => out.push(pid, start, r.ends[i]!));
    return Float64Array.from(out);
  }

  get pids(): number[] {
    return [...this.#byPid.keys()];
  }
}
