/**
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven slice-by-8.
 * `crc32c(data)` is the standard checksum (crc32c("123456789") === 0xE3069283).
 * `crc32cUpdate(crc, data)` continues a running checksum: crc32cUpdate(crc32c(a), b) === crc32c(a ++ b).
 * `crc32cCombine(crcA, crcB, lenB)` === crc32c(a ++ b) without touching the bytes again.
 */
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

export function crc32cUpdate(crc: number, data: Uint8Array): number {
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

export function crc32c(data: Uint8Array): number {
  return crc32cUpdate(0, data);
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
