// Shared fixtures: a registered anonymous region with its uffd (and optionally a loop),
// torn down in the one order that cannot hang: stop the loop, close the uffd (which
// releases any thread still blocked on a missing page), then unmap.
import type { ExecutionContext } from 'ava'
import { FaultLoop, PAGE_SIZE, Userfaultfd, pagemapScan, testing, type FaultBatch, type FaultLoopOptions, type RegisterMode, type UffdFeature } from '../index.js'

export const PS = PAGE_SIZE

/**
 * Rejects if `p` has not settled after `ms`: a guard that turns a deadlock into a failed
 * test with a reason, not a performance assertion (the limit is generous on purpose).
 */
export async function settles<T>(p: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms (hang)`)), ms)
  })
  try {
    return await Promise.race([p, guard])
  } finally {
    clearTimeout(timer)
  }
}

/** A page whose first 8 bytes hold `addr` and whose other bytes repeat a per-page byte. */
export function stampedPage(addr: number): Buffer {
  const b = Buffer.alloc(PS, (addr / PS) & 0xff)
  b.writeBigUInt64LE(BigInt(addr), 0)
  return b
}

export interface RegionOptions {
  pages: number
  features?: UffdFeature[]
  mode?: RegisterMode
}

export class Region {
  readonly uffd: Userfaultfd
  readonly start: number
  readonly len: number
  loop: FaultLoop | undefined
  readonly batches: FaultBatch[] = []
  /** Pages of the mapping this region still owns (tests may unmap or move parts). */
  #owned: boolean[]

  private constructor(opts: RegionOptions) {
    this.len = opts.pages * PS
    this.#owned = Array(opts.pages).fill(true)
    this.start = testing.mapAnonymous(this.len)
    this.uffd = Userfaultfd.open()
    this.uffd.handshake(opts.features ?? ['threadId'])
    this.uffd.register(this.start, this.len, opts.mode ?? { missing: true })
  }

  static create(t: ExecutionContext, opts: RegionOptions): Region {
    const r = new Region(opts)
    t.teardown(() => r.cleanup())
    return r
  }

  page(i: number): number {
    return this.start + i * PS
  }

  /** Starts a loop on this uffd; every batch is recorded, then given to `handler`. */
  serve(handler: (batch: FaultBatch) => void, opts?: FaultLoopOptions): FaultLoop {
    this.loop = new FaultLoop((batch) => {
      this.batches.push(batch)
      handler(batch)
    }, opts)
    this.loop.add(this.uffd)
    return this.loop
  }

  /** Resolves with the first batch satisfying `pred` (already seen ones included). */
  async waitFor(pred: (b: FaultBatch) => boolean, what: string): Promise<FaultBatch> {
    const find = async () => {
      for (;;) {
        const b = this.batches.find(pred)
        if (b) return b
        await new Promise((r) => setTimeout(r, 2))
      }
    }
    return settles(find(), what)
  }

  get faults() {
    return this.batches.flatMap((b) => b.faults)
  }

  get events() {
    return this.batches.flatMap((b) => b.events)
  }

  /** Pages present in the region (via PAGEMAP_SCAN, without touching anything). */
  presentPages(): number[] {
    const out: number[] = []
    for (const r of pagemapScanPresent(this.start, this.len)) {
      for (let a = r.start; a < r.end; a += PS) out.push((a - this.start) / PS)
    }
    return out
  }

  async cleanup(): Promise<void> {
    if (this.loop) await settles(this.loop.stop(), 'loop.stop()')
    this.uffd.close()
    // Only what is still ours: a hole unmapped by the test may belong to someone else now.
    for (let i = 0; i < this.#owned.length; ) {
      if (!this.#owned[i]) {
        i++
        continue
      }
      let j = i
      while (j < this.#owned.length && this.#owned[j]) j++
      testing.unmap(this.page(i), (j - i) * PS)
      this.#owned.fill(false, i, j)
      i = j
    }
  }

  /** munmap of pages [first, first+count) of the region, remembered for cleanup. */
  unmapPages(first: number, count: number): void {
    testing.unmap(this.page(first), count * PS)
    this.#owned.fill(false, first, first + count)
  }

  /** Pages [first, first+count) were unmapped by the test itself: not ours to unmap any more. */
  forgetPages(first: number, count: number): void {
    this.#owned.fill(false, first, first + count)
  }

  /** For tests that move the whole mapping elsewhere (and own the new one). */
  forgetMapping(): void {
    this.#owned.fill(false)
  }
}

function pagemapScanPresent(start: number, len: number) {
  return pagemapScan(start, len, { present: true })
}
