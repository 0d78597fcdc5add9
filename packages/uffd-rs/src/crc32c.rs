//! CRC32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of lazymig's images.
//! Same definition as core-ts's image/crc32c.ts (the reference the tests compare with):
//! `update(0, b"123456789") == 0xE3069283`, and `update(update(0, a), b) == update(0, a ++ b)`.
//!
//! With SSE4.2 (checked at run time) the `crc32` instruction does 8 bytes at a time; its
//! latency is 3 cycles and its throughput 1 a cycle, so long inputs run three independent
//! streams and join them with `combine` (multiplication by x^(8·len) modulo the polynomial).
//! Without SSE4.2, slice-by-8 tables. Nothing here knows about JS.

const POLY: u32 = 0x82f6_3b78;

/// Slice-by-8 tables: TABLES[t][b] is the CRC of byte b followed by t zero bytes.
static TABLES: [[u32; 256]; 8] = make_tables();

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// The raw (pre/post-inverted) CRC register over `data`, table driven.
fn raw_table(mut c: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let a = c ^ u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        let b = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = TABLES[7][(a & 0xff) as usize]
            ^ TABLES[6][((a >> 8) & 0xff) as usize]
            ^ TABLES[5][((a >> 16) & 0xff) as usize]
            ^ TABLES[4][(a >> 24) as usize]
            ^ TABLES[3][(b & 0xff) as usize]
            ^ TABLES[2][((b >> 8) & 0xff) as usize]
            ^ TABLES[1][((b >> 16) & 0xff) as usize]
            ^ TABLES[0][(b >> 24) as usize];
    }
    for &byte in chunks.remainder() {
        c = (c >> 8) ^ TABLES[0][((c ^ byte as u32) & 0xff) as usize];
    }
    c
}

#[cfg(target_arch = "x86_64")]
mod hw {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};

    pub fn available() -> bool {
        std::arch::is_x86_feature_detected!("sse4.2")
    }

    /// The raw CRC register over `data`, 8 bytes per instruction.
    ///
    /// # Safety
    /// The CPU must support SSE4.2 (`available()` returned true).
    #[target_feature(enable = "sse4.2")]
    pub unsafe fn raw(c: u32, data: &[u8]) -> u32 {
        let mut c64 = c as u64;
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            // SAFETY (the intrinsic): SSE4.2 is enabled for this function and the caller
            // guarantees the CPU has it; the operand is a plain u64 read from the slice.
            c64 = _mm_crc32_u64(c64, u64::from_le_bytes(ch.try_into().unwrap()));
        }
        let mut c = c64 as u32;
        for &b in chunks.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }

    /// Three independent streams over a, b, c (each a multiple of 8 bytes and of equal
    /// length), so the instruction's 3-cycle latency is hidden. Returns the three raw
    /// registers, a's continuing `ca`, b's and c's continuing `cb`, `cc`.
    ///
    /// # Safety
    /// The CPU must support SSE4.2; `a`, `b`, `c` have the same length, a multiple of 8.
    #[target_feature(enable = "sse4.2")]
    pub unsafe fn raw3(ca: u32, a: &[u8], cb: u32, b: &[u8], cc: u32, c: &[u8]) -> (u32, u32, u32) {
        debug_assert!(a.len() == b.len() && b.len() == c.len() && a.len().is_multiple_of(8));
        let (mut x, mut y, mut z) = (ca as u64, cb as u64, cc as u64);
        for ((qa, qb), qc) in a.chunks_exact(8).zip(b.chunks_exact(8)).zip(c.chunks_exact(8)) {
            x = _mm_crc32_u64(x, u64::from_le_bytes(qa.try_into().unwrap()));
            y = _mm_crc32_u64(y, u64::from_le_bytes(qb.try_into().unwrap()));
            z = _mm_crc32_u64(z, u64::from_le_bytes(qc.try_into().unwrap()));
        }
        (x as u32, y as u32, z as u32)
    }
}

/* --- combine: zlib's method, multiplication modulo the (reflected) polynomial --- */

/// a·b mod p (bit-reflected: bit 31 is x^0).
fn mult_mod_p(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    p
}

/// x^(8·len) mod p: the operator that appends `len` bytes.
pub fn shift(len: u64) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let mut sq: u32 = 1 << 30; // x^1, squared below up to x^(2^k)
    // x^8 first: the exponent is 8·len = len << 3.
    for _ in 0..3 {
        sq = mult_mod_p(sq, sq);
    }
    let mut n = len;
    while n > 0 {
        if n & 1 != 0 {
            p = mult_mod_p(sq, p);
        }
        n >>= 1;
        if n > 0 {
            sq = mult_mod_p(sq, sq);
        }
    }
    p
}

/// crc(A ‖ B) from crc(A), crc(B) and the operator `shift(len(B))`.
pub fn combine_with_shift(crc_a: u32, crc_b: u32, sh: u32) -> u32 {
    mult_mod_p(sh, crc_a) ^ crc_b
}

/// Multiplication by one fixed operator, as four byte tables (the map is linear over GF(2)):
/// for the per-page running checksum, where the same shift is applied once a page.
struct ShiftTable([[u32; 256]; 4]);

impl ShiftTable {
    fn new(sh: u32) -> Box<ShiftTable> {
        let mut t = Box::new(ShiftTable([[0; 256]; 4]));
        for (k, row) in t.0.iter_mut().enumerate() {
            for (b, e) in row.iter_mut().enumerate() {
                *e = mult_mod_p(sh, (b as u32) << (8 * k));
            }
        }
        t
    }
    fn apply(&self, x: u32) -> u32 {
        self.0[0][(x & 0xff) as usize] ^ self.0[1][((x >> 8) & 0xff) as usize] ^ self.0[2][((x >> 16) & 0xff) as usize] ^ self.0[3][(x >> 24) as usize]
    }
}

/* --- the checksum --- */

/// Below this, one stream (the combine costs more than it saves).
const SPLIT_MIN: usize = 3 * 1024;

/// Continue `crc` (a finished CRC32C, 0 for a new one) over `data`.
pub fn update(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if hw::available() {
        if data.len() < SPLIT_MIN {
            // SAFETY: SSE4.2 was detected on this CPU just above.
            return !unsafe { hw::raw(!crc, data) };
        }
        let third = (data.len() / 3) & !7;
        let (a, rest) = data.split_at(third);
        let (b, rest) = rest.split_at(third);
        let (c, tail) = rest.split_at(third);
        // SAFETY: SSE4.2 detected; a, b, c have length `third`, a multiple of 8.
        let (ra, rb, rc) = unsafe { hw::raw3(!crc, a, !0, b, !0, c) };
        let sh = shift(third as u64);
        let abc = combine_with_shift(combine_with_shift(!ra, !rb, sh), !rc, sh);
        // SAFETY: SSE4.2 detected.
        return !unsafe { hw::raw(!abc, tail) };
    }
    !raw_table(!crc, data)
}

/// CRC32C of each `page_size`-byte page of `data` into `out` (one entry a page), and the
/// CRC32C of `seed`'s data followed by all of `data` as the result (what `update(seed, data)`
/// returns, from the page CRCs without reading the bytes again).
/// `data.len()` must be a multiple of `page_size` and `out` hold `data.len() / page_size`.
pub fn pages(data: &[u8], page_size: usize, out: &mut [u32], seed: u32) -> u32 {
    assert!(page_size > 0 && data.len().is_multiple_of(page_size) && out.len() == data.len() / page_size);
    let n = out.len();
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if hw::available() && page_size.is_multiple_of(8) {
        // Three pages at a time, one stream each.
        while done + 3 <= n {
            let p = &data[done * page_size..(done + 3) * page_size];
            let (a, rest) = p.split_at(page_size);
            let (b, c) = rest.split_at(page_size);
            // SAFETY: SSE4.2 detected; a, b, c are pages of one length, a multiple of 8.
            let (ra, rb, rc) = unsafe { hw::raw3(!0, a, !0, b, !0, c) };
            out[done] = !ra;
            out[done + 1] = !rb;
            out[done + 2] = !rc;
            done += 3;
        }
    }
    for i in done..n {
        out[i] = update(0, &data[i * page_size..(i + 1) * page_size]);
    }
    if n == 0 {
        return seed;
    }
    let t = ShiftTable::new(shift(page_size as u64));
    out.iter().fold(seed, |acc, &c| t.apply(acc) ^ c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn vectors_and_agreement() {
        assert_eq!(update(0, b"123456789"), 0xe306_9283);
        assert_eq!(!raw_table(!0, b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in [0, 1, 7, 8, 9, 100, 3071, 3072, 3073, 5000, 12_345, 40_000] {
            for off in [0, 1, 5] {
                let s = &data[off..off + len.min(data.len() - off)];
                assert_eq!(update(0, s), bitwise(s), "len {len} off {off}");
                assert_eq!(update(0x1234_5678, s), !raw_table(!0x1234_5678, s));
            }
        }
        let mut out = vec![0u32; 9];
        let whole = pages(&data[..9 * 4096], 4096, &mut out, 0xdead_beef);
        assert_eq!(whole, update(0xdead_beef, &data[..9 * 4096]));
        for (i, &c) in out.iter().enumerate() {
            assert_eq!(c, bitwise(&data[i * 4096..(i + 1) * 4096]));
        }
    }
}
