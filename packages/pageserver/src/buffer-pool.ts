import { pageAlignedBuffer } from '@lazymig/core-ts';
import { PAGES_HEADER_SIZE } from './protocol/messages.js';

/**
 * Reused buffers for page frames.
 *
 * A fresh multi-megabyte Buffer is a fresh mmap from malloc: every one of its pages is
 * faulted in (and zeroed by the kernel) when the frame is first written, and unmapped again
 * when it is collected. On this kind of VM that costs 1.5–3 µs a page, more than copying
 * the page. Frames are therefore taken from, and given back to, a pool of buffers of the
 * exact sizes in use (a background chunk and the few fault-window sizes).
 *
 * Every buffer is placed so that a `pages` frame's data, after its PAGES_HEADER_SIZE header,
 * starts a page: the kernel then copies it at full speed (process_vm_readv into it, send
 * and recv, UFFDIO_COPY out of it; see pageAlignedBuffer).
 */
export class BufferPool {
  readonly #free = new Map<number, Buffer[]>();
  /** Pooled buffer by its ArrayBuffer: a view of it (e.g. the page data) finds its way back. */
  readonly #owner = new WeakMap<ArrayBufferLike, Buffer>();
  /** Buffers now in #free: a second release of the same buffer is ignored. */
  readonly #isFree = new WeakSet<Buffer>();
  #pooledBytes = 0;

  /** @param maxPooledBytes free bytes kept for reuse; above that, released buffers are dropped. */
  constructor(readonly maxPooledBytes = 128 << 20) {}

  /** A buffer of exactly len bytes (contents undefined). */
  acquire(len: number): Buffer {
    const list = this.#free.get(len);
    const b = list?.pop();
    if (b) {
      this.#isFree.delete(b);
      this.#pooledBytes -= len;
      return b;
    }
    return this.#fresh(len);
  }

  /**
   * Gives back a buffer from acquire(), or any view into one. The caller must not touch it
   * (or any view of it) afterwards. Views of buffers not from this pool are ignored.
   */
  release(view: Uint8Array): void {
    const b = this.#owner.get(view.buffer);
    if (!b || this.#isFree.has(b)) return;
    if (this.#pooledBytes + b.length > this.maxPooledBytes) {
      this.#owner.delete(b.buffer);
      return;
    }
    let list = this.#free.get(b.length);
    if (!list) this.#free.set(b.length, (list = []));
    list.push(b);
    this.#isFree.add(b);
    this.#pooledBytes += b.length;
  }

  /**
   * Puts `count` buffers of `len` bytes in the pool, every page of them already written:
   * the first frames of a transfer then land in memory the kernel has already given us
   * (on this kind of VM a fresh page can cost 15-25 µs, ~10 ms for a 2 MiB frame, on the
   * thread that also serves faults).
   */
  prefill(len: number, count: number): void {
    const fresh: Buffer[] = [];
    for (let i = 0; i < count && this.#pooledBytes + (i + 1) * len <= this.maxPooledBytes; i++) {
      const b = this.#fresh(len);
      b.fill(0);
      fresh.push(b);
    }
    for (const b of fresh) this.release(b);
  }

  /** A new buffer on its own ArrayBuffer (not a slice of Node's shared pool), so release() can find it. */
  #fresh(len: number): Buffer {
    const b = pageAlignedBuffer(len, Math.min(PAGES_HEADER_SIZE, len));
    this.#owner.set(b.buffer, b);
    return b;
  }

  get pooledBytes(): number {
    return this.#pooledBytes;
  }
}
