import test from 'ava';
import { PAGE_SIZE, pageOffset } from '@lazymig/uffd-rs';
import { pageAlignedBuffer } from '../src/index.js';

test('a page-aligned buffer starts a page at the byte asked for', (t) => {
  for (const [len, lead] of [[8 * PAGE_SIZE, 0], [31 + 4 * PAGE_SIZE, 31], [PAGE_SIZE + 5000, 5000], [0, 0]] as const) {
    const b = pageAlignedBuffer(len, lead);
    t.is(b.length, len);
    if (len > 0) t.is(pageOffset(b.subarray(lead)), 0, `len ${len}, lead ${lead}`);
  }
  // malloc's own placement (16 bytes into a page) is what this avoids.
  t.not(pageOffset(Buffer.allocUnsafeSlow(8 * PAGE_SIZE)), 0);
});

test('a page-aligned buffer refuses a lead past its end', (t) => {
  t.throws(() => pageAlignedBuffer(100, 101), { instanceOf: RangeError });
  t.throws(() => pageAlignedBuffer(-1), { instanceOf: RangeError });
});
