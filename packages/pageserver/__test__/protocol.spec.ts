import test from 'ava';
import {
  decodeClient,
  decodeServer,
  encodeClient,
  encodeServer,
  allocPagesFrame,
  BufferPool,
  PAGES_HEADER_SIZE,
  LazyRanges,
  ProtocolError,
  PROTOCOL_VERSION,
  type ClientMessage,
} from '../src/index.js';
import { Packr } from 'msgpackr';
import { PAGE_SIZE, pageOffset } from '@lazymig/uffd-rs';

const raw = new Packr({ useRecords: false });

test('client messages survive the wire unchanged', (t) => {
  const msgs: ClientMessage[] = [
    { type: 'hello', version: PROTOCOL_VERSION, token: 'a'.repeat(64) },
    { type: 'request', id: 7, pid: 4242, address: 0x7f12_3456_7000, pages: 16, priority: 'fault' },
    { type: 'request', id: 2 ** 40, pid: 1, address: 0x1000, pages: 512, priority: 'background' },
    { type: 'complete' },
  ];
  for (const m of msgs) t.deepEqual(decodeClient(encodeClient(m)), m);
});

test('page data decodes as the bytes that were sent', (t) => {
  const data = Buffer.alloc(3 * 4096);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  const back = decodeServer(encodeServer({ type: 'pages', id: 1, pid: 2, address: 0x10000, pages: 3, data }));
  t.is(back.type, 'pages');
  if (back.type === 'pages') t.true(Buffer.from(back.data).equals(data));
});

test('malformed frames are refused with a reason, never a crash', (t) => {
  const bad: Array<[Uint8Array, RegExp]> = [
    [Buffer.from([0x93, 0x02, 0x01]), /undecodable/],
    [raw.pack({ a: 1 }), /not a message array/],
    [raw.pack([99]), /unknown client message tag 99/],
    [raw.pack([2, 1, 2, -4096, 1, 0]), /address must be a non-negative integer/],
    [raw.pack([2, 1, 2, 4096, 1.5, 0]), /pages must be/],
    [raw.pack([2, 1, 2, 4096, 1, 7]), /unknown priority 7/],
    [raw.pack([2, 1, 2, 4096]), /request message has 3 fields, expected 5/],
    [raw.pack([1, 1, 'x'.repeat(300)]), /token must be a string of at most 256/],
  ];
  for (const [frame, re] of bad) {
    const err = t.throws(() => decodeClient(frame), { instanceOf: ProtocolError });
    t.regex(err.message, re);
  }
  t.throws(() => decodeServer(raw.pack([18, 1, 2, 4096, 1, 'not bytes'])), { message: /pages data must be binary/ });
});

test('lazy ranges admit exactly the dumped pages', (t) => {
  const P = 4096;
  const r = new LazyRanges(
    [
      { pid: 10, start: 0x10000, pages: 4 },
      { pid: 10, start: 0x14000, pages: 2 }, // adjacent: merges with the first
      { pid: 10, start: 0x40000, pages: 1 },
      { pid: 11, start: 0x10000, pages: 1 },
    ],
    P,
  );
  t.true(r.contains(10, 0x10000, 6));
  t.true(r.contains(10, 0x15000, 1));
  t.false(r.contains(10, 0x15000, 2), 'runs past the end');
  t.false(r.contains(10, 0xf000, 1), 'before the first range');
  t.false(r.contains(10, 0x16000, 1), 'in the gap');
  t.false(r.contains(10, 0x10800, 1), 'unaligned');
  t.false(r.contains(10, 0x40000, 0), 'empty');
  t.false(r.contains(12, 0x10000, 1), 'another process');
  t.true(r.contains(11, 0x10000, 1));
  t.throws(() => new LazyRanges([{ pid: 1, start: 0x1000, pages: 2 }, { pid: 1, start: 0x2000, pages: 1 }], P), {
    message: /overlapping/,
  });
});

test('a pages frame filled in place decodes like an encoded one', (t) => {
  const { frame, data } = allocPagesFrame(2 ** 31, 4_000_000, 0x7ffd_1234_5000, 2, 8192);
  t.is(frame.length, PAGES_HEADER_SIZE + 8192);
  data.fill(0xab);
  const m = decodeServer(frame);
  t.like(m, { type: 'pages', id: 2 ** 31, pid: 4_000_000, address: 0x7ffd_1234_5000, pages: 2 });
  if (m.type === 'pages') {
    t.is(m.data.length, 8192);
    t.true(m.data.every((b) => b === 0xab));
    t.is(m.data.buffer, frame.buffer, 'the data is a view into the frame, not a copy');
  }
});

test('a prefilled pool hands out its buffers before it allocates, and stays under its cap', (t) => {
  const len = PAGES_HEADER_SIZE + 512 * 4096;
  const pool = new BufferPool(3 * len + 100);
  pool.prefill(len, 5);
  t.is(pool.pooledBytes, 3 * len, 'only as many as the cap allows');
  const got = [pool.acquire(len), pool.acquire(len), pool.acquire(len)];
  t.is(pool.pooledBytes, 0);
  t.is(new Set(got).size, 3);
  for (const b of got) pool.release(b);
  t.is(pool.pooledBytes, 3 * len, 'they go back to the pool');
  t.true(got.includes(pool.acquire(len)), 'and come out again');
});

test("a pool's frames hold their pages at page boundaries, and a view of one goes back to it", (t) => {
  const pool = new BufferPool();
  for (const pages of [1, 16, 512]) {
    const len = PAGES_HEADER_SIZE + pages * PAGE_SIZE;
    const fresh = pool.acquire(len);
    t.is(fresh.length, len);
    t.is(pageOffset(fresh.subarray(PAGES_HEADER_SIZE)), 0, `${pages} pages: data starts a page`);
    pool.release(fresh.subarray(PAGES_HEADER_SIZE));
    t.is(pool.acquire(len), fresh, `${pages} pages: released through its data view`);
  }
  pool.prefill(PAGES_HEADER_SIZE + 4 * PAGE_SIZE, 2);
  t.is(pageOffset(pool.acquire(PAGES_HEADER_SIZE + 4 * PAGE_SIZE).subarray(PAGES_HEADER_SIZE)), 0, 'prefilled ones too');
});
