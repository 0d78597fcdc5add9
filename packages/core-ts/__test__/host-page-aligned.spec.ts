import test from 'ava';
import { PAGE_SIZE, pageOffset } from '@lazymig/uffd-rs';
import { pageAlignedBuffer } from '../src/index.js';

test('a page-aligned buffer starts a page at the byte asked for', (t) => {
  for (const [len, lead] of [[8 * PAGE_SIZE, 0], [31 + 4 * PAGE_SIZE, 31], [PAGE_SIZE + 5000, 5000], [0, 0]] as const) {
    const b = pageAlignedBuffer(len, lead);
    t.is(b.length, len);
    if (len > 0) t.is(pageOffset(b.subarray(lead)), 0, `len ${len}, lead ${lead}`);
  }
  // malloc's own placement (16 bytes into a page) is what this avoids. One buffer of its
  // may start a page by chance (it did, once in a CI run): of eight, not all do.
  const plain = Array.from({ length: 8 }, () => Buffer.allocUnsafeSlow(8 * PAGE_SIZE));
  t.true(plain.some((b) => pageOffset(b) !== 0), 'malloc does not place buffers at a page start');
});

test('a page-aligned buffer refuses a lead past its end', (t) => {
  t.throws(() => pageAlignedBuffer(100, 101), { instanceOf: RangeError });
  t.throws(() => pageAlignedBuffer(-1), { instanceOf: RangeError });
});
