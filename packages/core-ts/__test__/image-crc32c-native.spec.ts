import test from 'ava';
import { randomBytes } from 'node:crypto';
import { crc32c, crc32cCombine, crc32cNative, crc32cPages, crc32cUpdate, crc32cUpdateRef } from '../src/image/crc32c.js';

test('the native CRC32C is in use and agrees with the TypeScript reference (lengths, offsets, seeds)', (t) => {
  t.true(crc32cNative, 'uffd-rs exports crc32c/crc32cPages (rebuild it: cd packages/uffd-rs && npm run build)');
  const data = randomBytes(70_000);
  for (const len of [0, 1, 7, 8, 63, 64, 65, 100, 3071, 3072, 3073, 4096, 12_289, 65_536]) {
    for (const off of [0, 1, 5]) {
      const s = data.subarray(off, off + len);
      for (const seed of [0, 1, 0xe3069283, 0xffffffff]) t.is(crc32cUpdate(seed, s), crc32cUpdateRef(seed, s), `len ${len} off ${off} seed ${seed}`);
    }
  }
  t.is(crc32c(Buffer.alloc(4096, 0xff)), crc32cUpdateRef(0, Buffer.alloc(4096, 0xff)));
});

test('crc32cPages: every page CRC into the table at an offset, and the running CRC of all', (t) => {
  const P = 4096;
  for (const pages of [0, 1, 2, 3, 4, 7, 64]) {
    const data = randomBytes(pages * P);
    const out = new Uint32Array(pages + 5).fill(0xdeadbeef);
    const seed = 0x12345678;
    const running = crc32cPages(data, P, out, 3, seed);
    t.is(running, crc32cUpdateRef(seed, data), `${pages} pages`);
    for (let i = 0; i < pages; i++) t.is(out[3 + i], crc32cUpdateRef(0, data.subarray(i * P, (i + 1) * P)));
    t.is(out[0], 0xdeadbeef);
    if (pages + 3 < out.length) t.is(out[pages + 3], 0xdeadbeef);
    // the running CRC is the combine of the page CRCs
    let c = seed;
    for (let i = 0; i < pages; i++) c = crc32cCombine(c, out[3 + i]!, P);
    t.is(c, running);
  }
  t.throws(() => crc32cPages(Buffer.alloc(P + 1), P, new Uint32Array(2)), { instanceOf: RangeError });
  t.throws(() => crc32cPages(Buffer.alloc(2 * P), P, new Uint32Array(2), 1), { instanceOf: RangeError });
});
