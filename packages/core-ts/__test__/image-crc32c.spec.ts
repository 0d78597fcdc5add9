import test from 'ava';
import { randomBytes } from 'node:crypto';
import { crc32c, crc32cCombine, crc32cUpdate } from '../src/image/index.js';

/** Bit-at-a-time reference implementation, to check the slice-by-8 tables against. */
function reference(data: Uint8Array): number {
  let c = 0xffffffff;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

test('crc32c matches the published check value and RFC 3720 vectors', (t) => {
  t.is(crc32c(Buffer.from('123456789')), 0xe3069283);
  t.is(crc32c(Buffer.alloc(0)), 0);
  t.is(crc32c(Buffer.alloc(32, 0x00)), 0x8a9136aa);
  t.is(crc32c(Buffer.alloc(32, 0xff)), 0x62a8ab43);
  t.is(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i))), 0x46dd794e);
  t.is(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i))), 0x113fdb5c);
  t.is(crc32c(Buffer.from('The quick brown fox jumps over the lazy dog')), 0x22620404);
});

test('slice-by-8 agrees with the bitwise reference for every length 0..80 and odd offsets', (t) => {
  const data = randomBytes(200);
  for (let len = 0; len <= 80; len++) {
    for (const off of [0, 1, 3, 7]) {
      const slice = data.subarray(off, off + len);
      t.is(crc32c(slice), reference(slice), `len ${len} offset ${off}`);
    }
  }
});

test('update continues a checksum and combine joins two', (t) => {
  for (let i = 0; i < 50; i++) {
    const a = randomBytes(Math.floor(Math.random() * 5000));
    const b = randomBytes(Math.floor(Math.random() * 5000));
    const whole = crc32c(Buffer.concat([a, b]));
    t.is(crc32cUpdate(crc32c(a), b), whole);
    t.is(crc32cCombine(crc32c(a), crc32c(b), b.length), whole);
  }
  t.is(crc32cCombine(crc32c(Buffer.from('1234')), crc32c(Buffer.from('56789')), 5), 0xe3069283);
  t.is(crc32cCombine(0x12345678, crc32c(Buffer.alloc(0)), 0), 0x12345678);
});
