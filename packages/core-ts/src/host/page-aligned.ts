import { PAGE_SIZE, pageOffset } from '@lazymig/uffd-rs';

/**
 * A buffer of `len` bytes whose byte at `lead` starts a page, for page data the kernel copies
 * (process_vm_readv/writev, file and socket I/O, UFFDIO_COPY).
 *
 * malloc puts a large buffer 16 bytes into a page. On this project's CPUs a kernel copy whose
 * destination lies 1-31 bytes past its source, modulo 4 KiB, runs ~3.5x slower: each load
 * waits on the store just before it (4K aliasing). Page data that starts a page is copied at
 * full speed in both directions (docs/PERFORMANCE.md).
 */
export function pageAlignedBuffer(len: number, lead = 0): Buffer {
  if (!Number.isSafeInteger(len) || len < 0 || !Number.isSafeInteger(lead) || lead < 0 || lead > len) {
    throw new RangeError(`page-aligned buffer: bad length ${len} or lead ${lead}`);
  }
  const raw = Buffer.allocUnsafeSlow(len + PAGE_SIZE);
  const start = (PAGE_SIZE - ((pageOffset(raw) + lead) % PAGE_SIZE)) % PAGE_SIZE;
  return raw.subarray(start, start + len);
}
