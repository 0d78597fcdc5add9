/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78).
 * `crc32c(data)` is the standard checksum (crc32c("123456789") === 0xE3069283).
 * `crc32cUpdate(crc, data)` continues a running checksum: crc32cUpdate(crc32c(a), b) === crc32c(a ++ b).
 * `crc32cCombine(crcA, crcB, lenB)` === crc32c(a ++ b) without touching the bytes again.
 * `crc32cPages(data, pageSize, out, outOffset, seed)`: every page's CRC in one call.
 *
 * The bytes are checksummed by @lazymig/uffd-rs (SSE4.2, ~10-20 GB/s) when it is loaded;
 * the table-driven slice-by-8 code below (~0.5 GB/s) is the reference the tests check it
 * against (`crc32cUpdateRef`) and the fallback when the native module lacks it.
 */
import * as native from '@lazymig/uffd-rs';

const POLY = 0x82f63b78;

const TABLE = new Uint32Array(8 * 256);
for (let i = 0; i < 256; i++) {
  let c = i;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  TABLE[i] = c >>> 0;
}
for (let i = 0; i < 256; i++) {
  for (let t = 1; t < 8; t++) {
    const prev = TABLE[(t - 1) * 256 + i]!;
    TABLE[t * 256 + i] = ((prev >>> 8) ^ TABLE[prev & 0xff]!) >>> 0;
  }
}

/** The TypeScript implementation: reference and fallback. */
export function crc32cUpdateRef(crc: number, data: Uint8Array): number {
  const T = TABLE;
  let c = ~crc >>> 0;
  let i = 0;
  const n = data.length;
  const end8 = n - (n % 8);
  while (i < end8) {
    const a = (c ^ (data[i]! | (data[i + 1]! << 8) | (data[i + 2]! << 16) | (data[i + 3]! << 24))) >>> 0;
    const b = (data[i + 4]! | (data[i + 5]! << 8) | (data[i + 6]! << 16) | (data[i + 7]! << 24)) >>> 0;
    c =
      T[1792 + (a & 0xff)]! ^
      T[1536 + ((a >>> 8) & 0xff)]! ^
      T[1280 + ((a >>> 16) & 0xff)]! ^
      T[1024 + (a >>> 24)]! ^
      T[768 + (b & 0xff)]! ^
      T[512 + ((b >>> 8) & 0xff)]! ^
      T[256 + ((b >>> 16) & 0xff)]! ^
      T[b >>> 24]!;
    i += 8;
  }
  while (i < n) c = (c >>> 8) ^ T[(c ^ data[i++]!) & 0xff]!;
  return ~c >>> 0;
}

type NativeCrc = { crc32c(data: Uint8Array, seed?: number): number; crc32cPages(data: Uint8Array, pageSize: number, out: Uint32Array, outOffset?: number, seed?: number): number };
const nat: NativeCrc | undefined = typeof (native as Partial<NativeCrc>).crc32c === 'function' && typeof (native as Partial<NativeCrc>).crc32cPages === 'function' ? (native as NativeCrc) : undefined;

/** Whether the native (uffd-rs) implementation is in use. */
export const crc32cNative = nat !== undefined;

/** Below this many bytes the N-API call costs more than the TypeScript loop. */
const NATIVE_MIN = 64;

export function crc32cUpdate(crc: number, data: Uint8Array): number {
  if (nat && data.length >= NATIVE_MIN) return nat.crc32c(data, crc >>> 0);
  return crc32cUpdateRef(crc, data);
}

export function crc32c(data: Uint8Array): number {
  return crc32cUpdate(0, data);
}

/**
 * The CRC32C of each `pageSize`-byte page of `data` into out[outOffset ..]; returns
 * crc32cUpdate(seed, data) (the running checksum over the pages, from the page CRCs).
 */
export function crc32cPages(data: Uint8Array, pageSize: number, out: Uint32Array, outOffset = 0, seed = 0): number {
  if (data.length % pageSize !== 0) throw new RangeError(`${data.length} bytes is not a whole number of ${pageSize}-byte pages`);
  const n = data.length / pageSize;
  if (outOffset + n > out.length) throw new RangeError(`out has ${out.length} entries, ${n} pages from index ${outOffset} do not fit`);
  if (nat) return nat.crc32cPages(data, pageSize, out, outOffset, seed >>> 0);
  let crc = seed >>> 0;
  const shift = crc32cShift(pageSize);
  for (let i = 0; i < n; i++) {
    const c = crc32cUpdateRef(0, data.subarray(i * pageSize, (i + 1) * pageSize));
    out[outOffset + i] = c;
    crc = crc32cCombineWithShift(crc, c, shift);
  }
  return crc;
}

/* --- combine (zlib's method: multiply by x^(8*len) modulo the polynomial) --- */

function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** X2N[k] = x^(2^k) mod p */
const X2N = new Uint32Array(32);
{
  let p = 0x40000000; // x^1
  X2N[0] = p;
  for (let k = 1; k < 32; k++) X2N[k] = p = multModP(p, p);
}

/** x^(n * 2^k) mod p */
function x2nModP(n: number, k: number): number {
  let p = 0x80000000; // x^0
  while (n > 0) {
    if (n % 2 === 1) p = multModP(X2N[k & 31]!, p);
    n = Math.floor(n / 2);
    k++;
  }
  return p;
}

/** Precompute the operator for appending `len` bytes, for crc32cCombineWithShift (saves work when len is fixed, e.g. one page). */
export function crc32cShift(len: number): number {
  return x2nModP(len, 3);
}

export function crc32cCombineWithShift(crcA: number, crcB: number, shift: number): number {
  return (multModP(shift, crcA) ^ crcB) >>> 0;
}

export function crc32cCombine(crcA: number, crcB: number, lenB: number): number {
  return crc32cCombineWithShift(crcA, crcB, crc32cShift(lenB));
}
