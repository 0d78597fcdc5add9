import test, { type ExecutionContext } from 'ava';
import { copyFile, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Packr } from 'msgpackr';
import {
  crc32c, decodeCoreFile, decodeInventoryFile, decodePagemapFile, FORMAT_VERSION, ImageError, PagesReader, readImageFile, readImages, readPagesInfo, sampleImageSet, writeImages,
  type ImageErrorCode, type ImageSet,
} from '../src/image/index.js';
import { frame } from '../src/image/codec.js';
import { pagemapToWire } from '../src/image/validate.js';

const packr = new Packr({ useRecords: false });

const made: string[] = [];
test.after.always(async () => {
  for (const d of made) await rm(d, { recursive: true, force: true });
});

async function freshImages(lazy = true): Promise<{ dir: string; images: ImageSet; pages: Map<number, Buffer> }> {
  const s = sampleImageSet({ lazy });
  const par = await mkdtemp(join(tmpdir(), 'lazymig-bad-'));
  made.push(par);
  const dir = join(par, 'images');
  await writeImages(dir, s.images, { pages: s.pages });
  return { dir, ...s };
}

/** Await `p`, require an ImageError naming `file`, and return it. */
async function imageError(t: ExecutionContext, p: Promise<unknown>, file: string, code?: ImageErrorCode | ImageErrorCode[]): Promise<ImageError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  if (!(err instanceof ImageError)) {
    t.fail(`expected an ImageError about ${file}, got ${err === undefined ? 'success' : String(err)}`);
    throw new Error('stop');
  }
  t.true(err.file.endsWith(file), `error names ${err.file}, expected ${file}`);
  t.true(err.message.startsWith(err.file + ': '), 'the message starts with the file');
  if (code !== undefined) {
    const codes = Array.isArray(code) ? code : [code];
    t.true(codes.includes(err.code), `code ${err.code} (${err.reason}), expected ${codes.join(' or ')}`);
  }
  return err;
}

/** Re-frame a payload with a valid header and checksum (what an attacker or a buggy writer could produce). */
function reframe(kind: 'inventory' | 'core' | 'pagemap', payload: unknown): Buffer {
  return frame(kind, payload);
}

function withCrc(buf: Buffer): Buffer {
  const out = Buffer.from(buf);
  out.writeUInt32LE(crc32c(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

/* ------------------------------------------------------------------ framing */

const decoders = {
  inventory: decodeInventoryFile,
  pagemap: decodePagemapFile,
  core: decodeCoreFile,
} as const;

/** Run a decoder synchronously on a buffer and require an ImageError naming `file`. */
function decodeError(t: ExecutionContext, kind: keyof typeof decoders, file: string, buf: Buffer, code: ImageErrorCode[], what: string): ImageError | undefined {
  try {
    decoders[kind](file, buf);
  } catch (e) {
    if (!(e instanceof ImageError)) {
      t.fail(`${what}: ${String(e)}`);
      return undefined;
    }
    if (e.file !== file || !code.includes(e.code)) t.fail(`${what}: ${e.code} ${e.message}`);
    return e;
  }
  t.fail(`${what}: decoded successfully`);
  return undefined;
}

test('truncation of a msgpack image at every offset is a clear error naming the file', async (t) => {
  const { dir } = await freshImages();
  for (const [kind, name] of [['inventory', 'inventory.img'], ['pagemap', 'pagemap-1000.img'], ['core', 'core-1001.img']] as const) {
    const path = join(dir, name);
    const good = await readFile(path);
    for (let len = 0; len < good.length; len++) {
      const err = decodeError(t, kind, path, good.subarray(0, len), ['truncated', 'checksum'], `${name} cut at ${len}`);
      if (err && len >= 20 && !/truncated/.test(err.reason)) t.fail(`${name} cut at ${len}: ${err.reason}`);
    }
    // and through the file API, at a few offsets
    for (const len of [0, 3, 15, 19, 20, Math.floor(good.length / 2), good.length - 1]) {
      await writeFile(join(dir, 'cut.img'), good.subarray(0, len));
      await imageError(t, readImageFile(join(dir, 'cut.img')), 'cut.img', ['truncated', 'checksum']);
    }
  }
  t.pass();
});

test('every single-bit flip in a small image file is detected, never a crash', async (t) => {
  const { dir } = await freshImages();
  for (const [kind, name] of [['inventory', 'inventory.img'], ['pagemap', 'pagemap-1001.img']] as const) {
    const path = join(dir, name);
    const good = await readFile(path);
    for (let i = 0; i < good.length; i++) {
      for (let bit = 1; bit < 256; bit <<= 1) {
        const b = Buffer.from(good);
        b[i]! ^= bit;
        // a flip in the magic reads as "not an image"; in the payload length as truncation; anywhere else as a checksum error
        const expected: ImageErrorCode[] = i < 4 ? ['bad-magic'] : i >= 12 && i < 16 ? ['truncated', 'checksum'] : ['checksum'];
        decodeError(t, kind, path, b, expected, `${name} byte ${i} bit ${bit}`);
      }
    }
  }
  t.pass();
});

test('bit flips in every byte of a core file are checksum errors', async (t) => {
  const { dir } = await freshImages();
  const path = join(dir, 'core-1000.img');
  const good = await readFile(path);
  for (let i = 16; i < good.length; i++) {
    const b = Buffer.from(good);
    b[i]! ^= 1 << (i % 8);
    const err = decodeError(t, 'core', path, b, ['checksum'], `core byte ${i}`);
    if (err && !/checksum mismatch/.test(err.reason)) t.fail(err.reason);
  }
  t.pass();
});

test('wrong magic, wrong kind, newer version are each named', async (t) => {
  const { dir } = await freshImages();
  const good = await readFile(join(dir, 'core-1000.img'));
  const p = join(dir, 'x.img');

  await writeFile(p, Buffer.from('#!/bin/sh\necho this is not an image\n'));
  let err = await imageError(t, readImageFile(p), 'x.img', 'bad-magic');
  t.regex(err.reason, /not a lazymig image: bad magic "#!\/b"/);

  const b = Buffer.from(good);
  b.write('CRIU', 0, 'latin1');
  await writeFile(p, withCrc(b));
  await imageError(t, readImageFile(p), 'x.img', 'bad-magic');

  const newer = Buffer.from(good);
  newer.writeUInt16LE(FORMAT_VERSION + 1, 8);
  await writeFile(p, withCrc(newer));
  err = await imageError(t, readImageFile(p), 'x.img', 'newer-version');
  t.regex(err.reason, new RegExp(`newer lazymig: format version ${FORMAT_VERSION + 1}, this lazymig reads up to ${FORMAT_VERSION}`));

  // a core where the inventory should be
  await copyFile(join(dir, 'core-1000.img'), join(dir, 'inventory.img'));
  err = await imageError(t, readImages(dir), 'inventory.img', 'wrong-kind');
  t.regex(err.reason, /expected inventory \(INVT\), found core \(CORE\)/);
});

test('lying lengths: header length and msgpack lengths that point past the end', async (t) => {
  const { dir } = await freshImages();
  const good = await readFile(join(dir, 'pagemap-1000.img'));
  const p = join(dir, 'lie.img');

  // header says the payload is 4 GiB
  const big = Buffer.from(good);
  big.writeUInt32LE(0xffffffff, 12);
  await writeFile(p, withCrc(big));
  let err = await imageError(t, readImageFile(p), 'lie.img', 'truncated');
  t.regex(err.reason, /declares a 4294967295-byte payload/);

  // header says the payload is shorter than it is (checksum recomputed to match)
  const small = Buffer.from(good);
  small.writeUInt32LE(10, 12);
  await writeFile(p, withCrc(small));
  err = await imageError(t, readImageFile(p), 'lie.img', 'malformed');

  // msgpack array32 / str32 / bin32 / map32 claiming 2^32-1 elements, inside a correctly checksummed frame
  for (const hex of ['dd ffffffff 01', 'db ffffffff 61', 'c6 ffffffff 00', 'df ffffffff a1 61 01', 'c7 ff 72 00']) {
    const payload = Buffer.from(hex.replace(/ /g, ''), 'hex');
    const f = Buffer.alloc(16 + payload.length + 4);
    f.write('LZMGPMAP', 0, 'latin1');
    f.writeUInt16LE(FORMAT_VERSION, 8);
    f.writeUInt32LE(payload.length, 12);
    payload.copy(f, 16);
    await writeFile(p, withCrc(f));
    err = await imageError(t, readImageFile(p), 'lie.img', 'malformed');
    t.regex(err.reason, /not valid msgpack/, hex);
  }

  // 100 000 nested arrays: no stack overflow escapes
  const deep = Buffer.concat([Buffer.alloc(100_000, 0x91), Buffer.from([0x01])]);
  const f = Buffer.alloc(16 + deep.length + 4);
  f.write('LZMGCORE', 0, 'latin1');
  f.writeUInt16LE(FORMAT_VERSION, 8);
  f.writeUInt32LE(deep.length, 12);
  deep.copy(f, 16);
  await writeFile(p, withCrc(f));
  await imageError(t, readImageFile(p), 'lie.img', ['malformed', 'schema']);

  // two msgpack values where one is expected
  const two = Buffer.concat([packr.pack(1), packr.pack(2)]);
  const g = Buffer.alloc(16 + two.length + 4);
  g.write('LZMGINVT', 0, 'latin1');
  g.writeUInt16LE(FORMAT_VERSION, 8);
  g.writeUInt32LE(two.length, 12);
  two.copy(g, 16);
  await writeFile(p, withCrc(g));
  err = await imageError(t, readImageFile(p), 'lie.img', 'malformed');
  t.regex(err.reason, /2 msgpack values, expected 1/);
});

test('random garbage and random mutations never escape as anything but ImageError', async (t) => {
  const { dir } = await freshImages();
  const good = await readFile(join(dir, 'core-1001.img'));
  const p = join(dir, 'fuzz.img');
  let seed = 12345;
  const rnd = (n: number): number => {
    seed = (seed * 1103515245 + 12345) >>> 0;
    return seed % n;
  };
  for (let i = 0; i < 300; i++) {
    const b = Buffer.from(good.subarray(0, 16 + rnd(good.length - 16)));
    for (let k = 0; k < 1 + rnd(8); k++) b[16 + rnd(Math.max(1, b.length - 16))] = rnd(256);
    b.writeUInt32LE(Math.max(0, b.length - 20), 12);
    await writeFile(p, b.length >= 20 ? withCrc(b) : b); // checksum made valid: the decoder itself must cope
    try {
      await readImageFile(p);
    } catch (e) {
      if (!(e instanceof ImageError)) t.fail(`mutation ${i}: ${String(e)}`);
    }
  }
  t.pass();
});

/* ------------------------------------------------------------------ schema */

test('wrong types and missing or unknown fields are schema errors naming the field', async (t) => {
  const { dir, images } = await freshImages();
  const p = join(dir, 'schema.img');
  const inv = images.inventory as unknown as Record<string, unknown>;

  const cases: Array<[string, unknown, RegExp]> = [
    ['inventory', { ...inv, pageSize: '4096' }, /pageSize: expected an integer, got string "4096"/],
    ['inventory', { ...inv, arch: 'aarch64' }, /arch: expected one of "x86_64"/],
    ['inventory', (({ tree: _t, ...rest }) => rest)(inv), /tree: missing field/],
    ['inventory', { ...inv, extra: 1 }, /extra: unknown field/],
    ['inventory', { ...inv, pageSize: 3000 }, /page size 3000 is not a power of two/],
    ['inventory', { ...inv, lazy: true, pageServer: null }, /a lazy dump needs the page server address/],
    ['inventory', [1, 2, 3], /expected a map, got array\(3\)/],
  ];
  const core = images.processes[0]!.core;
  const th = core.threads[0]!;
  cases.push(
    ['core', { ...core, threads: [{ ...th, regs: { ...th.regs, rip: 'oops' } }] }, /threads\[0\]\.regs\.rip: expected an unsigned 64-bit integer, got string "oops"/],
    ['core', { ...core, threads: [{ ...th, regs: (({ fs_base: _f, ...r }) => r)(th.regs) }] }, /threads\[0\]\.regs\.fs_base: missing field/],
    ['core', { ...core, threads: [{ ...th, xstate: 'AAAA' }] }, /threads\[0\]\.xstate: expected bytes/],
    ['core', { ...core, sigactions: core.sigactions.slice(1) }, /sigactions: expected exactly 64 entries, got 63/],
    ['core', { ...core, rlimits: core.rlimits.slice(0, 15) }, /rlimits: expected exactly 16 entries, got 15/],
    ['core', { ...core, rlimits: core.rlimits.map((r, i) => (i === 2 ? { soft: 'infinite', hard: 'unlimited' } : r)) }, /rlimits\[2\]\.soft/],
    ['core', { ...core, fds: [{ ...core.fds[0]!, kind: 'socketpair' }] }, /fds\[0\]\.kind: expected one of/],
    ['core', { ...core, vmas: [{ ...core.vmas[0]!, start: 0x400001 }] }, /vmas\[0\]\.start: expected a page-aligned address/],
    ['core', { ...core, mm: { ...core.mm, brk: 2 ** 48 } }, /mm\.brk: expected an integer in 0\.\./],
    ['core', { ...core, threads: [] }, /threads: expected at least 1 entries, got 0/],
  );
  for (const [kind, payload, re] of cases) {
    await writeFile(p, reframe(kind as 'inventory' | 'core', payload));
    const err = await imageError(t, readImageFile(p), 'schema.img', ['schema', 'layout']);
    t.regex(err.reason, re);
  }
});

/* ------------------------------------------------------------------ layout */

test('overlapping or unordered VMAs are refused', async (t) => {
  const { dir, images } = await freshImages();
  const core = structuredClone(images.processes[0]!.core);
  core.vmas[4] = { ...core.vmas[4]!, start: 0x1020000 }; // anon region now starts inside the heap
  await writeFile(join(dir, 'core-1000.img'), reframe('core', core));
  const err = await imageError(t, readImages(dir), 'core-1000.img', 'layout');
  t.regex(err.reason, /vmas\[4\]: 0x1020000-0x7f0000040000 overlaps the previous VMA \(ending at 0x1021000\)/);

  const c2 = structuredClone(images.processes[0]!.core);
  c2.vmas[6] = { ...c2.vmas[6]!, end: 0x800000000000 };
  await writeFile(join(dir, 'core-1000.img'), reframe('core', c2));
  const err2 = await imageError(t, readImages(dir), 'core-1000.img', 'layout');
  t.regex(err2.reason, /ends above the user address limit/);
});

test('a pagemap range outside every VMA is refused', async (t) => {
  const { dir, images } = await freshImages();
  const pm = structuredClone(images.processes[1]!.pagemap);
  pm.entries.splice(4, 0, { start: 0x7f0000200000, pages: 2, kind: 'zero' }); // after the anon VMA, in no VMA
  await writeFile(join(dir, 'pagemap-1001.img'), reframe('pagemap', pagemapToWire(pm)));
  const err = await imageError(t, readImages(dir), 'pagemap-1001.img', 'layout');
  t.regex(err.reason, /entries\[4\]: range 0x7f0000200000-0x7f0000202000 \(zero\) is not inside the VMAs: nothing is mapped at 0x7f0000200000/);

  // a range that starts in a VMA and runs past its end
  const pm2 = structuredClone(images.processes[1]!.pagemap);
  pm2.entries[2] = { start: 0x1004000, pages: 0x1e, kind: 'zero' };
  await writeFile(join(dir, 'pagemap-1001.img'), reframe('pagemap', pagemapToWire(pm2)));
  const err2 = await imageError(t, readImages(dir), 'pagemap-1001.img', 'layout');
  t.regex(err2.reason, /range 0x1004000-0x1022000 \(zero\) is not inside the VMAs: nothing is mapped at 0x1021000/);

  // a range that continues across two adjacent VMAs is fine (the data, text and rodata of the exe)
  const pm3 = structuredClone(images.processes[1]!.pagemap);
  pm3.entries[0] = { start: 0x400000, pages: 2, kind: 'zero' };
  await writeFile(join(dir, 'pagemap-1001.img'), reframe('pagemap', pagemapToWire(pm3)));
  await t.notThrowsAsync(readImages(dir));
});

test('a pagemap range past the end of the pages file is refused', async (t) => {
  const { dir, images } = await freshImages();
  const pm = structuredClone(images.processes[0]!.pagemap);
  const last = pm.entries.at(-1)!;
  if (last.kind !== 'present') throw new Error('fixture changed');
  last.pages = 4; // the stack range (3 pages) now claims a 4th page that the file does not hold
  pm.entries[pm.entries.length - 1] = { ...last, start: 0x7ffc0000c000 };
  await writeFile(join(dir, 'pagemap-1000.img'), reframe('pagemap', pagemapToWire(pm)));
  const err = await imageError(t, readImages(dir), 'pagemap-1000.img', 'layout');
  t.regex(err.reason, /past the end of the pages file \(8 pages, data ends at 36864\)/);
});

test('pagemap entries that overlap, are unaligned or have bad flags are refused on their own', async (t) => {
  const { dir, images } = await freshImages();
  const p = join(dir, 'pm.img');
  const base = pagemapToWire(images.processes[0]!.pagemap);
  const cases: Array<[(w: typeof base) => void, RegExp]> = [
    [(w) => { w.entries[1]![0] = 0x403000; }, /entries\[1\]: range at 0x403000 overlaps the previous one/],
    [(w) => { w.entries[0]![0] = 0x403800; }, /entries\[0\]\[0\]: expected a page-aligned address, got integer 4208640/],
    [(w) => { w.entries[0]![2] = 3; }, /flags 0x3: expected exactly one of PRESENT/],
    [(w) => { w.entries[0]![3] = null; }, /a present range without a pages-file offset/],
    [(w) => { w.entries[0]![3] = 0; }, /overlaps the header page/],
    [(w) => { w.entries[1]![3] = 4096; }, /overlaps the header page or the data of an earlier range/],
    [(w) => { w.entries[2]![3] = 4096; }, /a zero range with a pages-file offset/],
    [(w) => { w.entries[0]![1] = 0; }, /an empty range/],
  ];
  for (const [mutate, re] of cases) {
    const w = structuredClone(base);
    mutate(w);
    await writeFile(p, reframe('pagemap', w));
    const err = await imageError(t, readImageFile(p), 'pm.img', ['layout', 'schema']);
    t.regex(err.reason, re);
  }
});

test('cross-file inconsistencies are refused: tids, pids, lazy ranges in an eager dump, stray files', async (t) => {
  {
    const { dir, images } = await freshImages();
    const core = structuredClone(images.processes[0]!.core);
    core.threads.pop();
    await writeFile(join(dir, 'core-1000.img'), reframe('core', core));
    const err = await imageError(t, readImages(dir), 'core-1000.img', 'layout');
    t.regex(err.reason, /threads \[1000\] differ from the inventory's tids \[1000, 1002\]/);
  }
  {
    const { dir, images } = await freshImages(false);
    const pm = structuredClone(images.processes[0]!.pagemap);
    pm.entries[2] = { start: 0x1004000, pages: 0x1d, kind: 'lazy' };
    await writeFile(join(dir, 'pagemap-1000.img'), reframe('pagemap', pagemapToWire(pm)));
    const err = await imageError(t, readImages(dir), 'pagemap-1000.img', 'layout');
    t.regex(err.reason, /lazy range at 0x1004000 in a dump that is not lazy/);
  }
  {
    const { dir } = await freshImages();
    await copyFile(join(dir, 'core-1000.img'), join(dir, 'core-4242.img'));
    const err = await imageError(t, readImages(dir), 'core-4242.img', 'layout');
    t.regex(err.reason, /pid 4242 is not in the inventory's process tree/);
  }
  {
    const { dir } = await freshImages();
    await copyFile(join(dir, 'pages-1000.img'), join(dir, 'pages-1001.img'));
    const err = await imageError(t, readImages(dir), 'pages-1001.img', 'layout');
    t.regex(err.reason, /pages file of pid 1000, expected 1001/);
  }
  {
    const { dir, images } = await freshImages();
    const inv = structuredClone(images.inventory);
    inv.tree[1]!.ppid = 77;
    await writeFile(join(dir, 'inventory.img'), reframe('inventory', inv));
    const err = await imageError(t, readImages(dir), 'inventory.img', 'layout');
    t.regex(err.reason, /tree\[0\]\.children: child 1001 has ppid 77, not 1000/);
    inv.tree[1]!.ppid = 1000;
    inv.tree[0]!.children = [];
    await writeFile(join(dir, 'inventory.img'), reframe('inventory', inv));
    const err2 = await imageError(t, readImages(dir), 'inventory.img', 'layout');
    t.regex(err2.reason, /tree\[0\]\.children: pid 1001 \(ppid 1000\) missing from its parent's children/);
  }
  {
    const dir = await mkdtemp(join(tmpdir(), 'lazymig-empty-'));
    made.push(dir);
    const err = await imageError(t, readImages(dir), 'inventory.img', 'missing');
    t.regex(err.reason, /not a complete images dir/);
  }
});

/* ------------------------------------------------------------------ pages file */

test('pages file: truncation at many offsets, and bit flips in header and footer', async (t) => {
  const { dir } = await freshImages();
  const path = join(dir, 'pages-1000.img');
  const good = await readFile(path);
  const bad = join(dir, 'bad-pages.img');
  const offsets = new Set<number>([0, 1, 3, 4, 12, 19, 20, 35, 36, 4095, 4096, 4097, good.length - 17, good.length - 16, good.length - 5, good.length - 4, good.length - 1]);
  for (let o = 0; o < good.length; o += 997) offsets.add(o);
  for (const len of offsets) {
    await writeFile(bad, good.subarray(0, len));
    await imageError(t, readPagesInfo(bad), 'bad-pages.img', ['truncated', 'bad-magic', 'checksum', 'malformed']);
  }
  // flips in the header page, the CRC table and the trailer are caught when the file is opened
  const footerStart = good.length - 16 - 8 * 4;
  const spots = [...Array.from({ length: 24 }, (_, i) => i), 100, 4095, ...Array.from({ length: 48 }, (_, i) => footerStart + i)];
  for (const i of spots) {
    const b = Buffer.from(good);
    b[i]! ^= 0x04;
    await writeFile(bad, b);
    const expected: ImageErrorCode[] =
      i < 4 ? ['bad-magic'] : (i >= 12 && i < 16) || i >= good.length - 16 ? ['truncated', 'malformed', 'checksum'] : ['checksum'];
    await imageError(t, readPagesInfo(bad, { verify: 'footer' }), 'bad-pages.img', expected);
  }
});

test('a flipped bit in page data is caught on read and by a full verify', async (t) => {
  const { dir, images } = await freshImages();
  const path = join(dir, 'pages-1000.img');
  const b = await readFile(path);
  b[4096 * 3 + 100]! ^= 0x01; // data page 2
  await writeFile(path, b);
  // the footer is intact: a footer-level check passes …
  await t.notThrowsAsync(readImages(dir));
  // … a full verify does not
  const err = await imageError(t, readImages(dir, { verifyPages: 'full' }), 'pages-1000.img', 'checksum');
  t.regex(err.reason, /page data corrupted/);
  // and reading the page reports it
  const r = await PagesReader.open(path, { pagemap: images.processes[0]!.pagemap });
  try {
    await t.notThrowsAsync(r.read(0x403000, 1)); // page 0 is fine
    const e2 = await imageError(t, r.read(0x1000000, 4), 'pages-1000.img', 'checksum');
    t.regex(e2.reason, /data page 2 \(file offset 12288\)/);
  } finally {
    await r.close();
  }
});

test('an unfinished pages file (no footer) is refused', async (t) => {
  const { dir } = await freshImages();
  const path = join(dir, 'pages-1000.img');
  await truncate(path, 4096 + 8 * 4096); // header + pages, footer never written
  const err = await imageError(t, readImages(dir), 'pages-1000.img', 'truncated');
  t.regex(err.reason, /no pages footer/);
});

test('a hostile inventory with a huge tree is decoded in linear time', (t) => {
  const n = 200_000;
  const children = Array.from({ length: n }, (_, i) => 2 + i);
  const tree = [{ pid: 1, ppid: 0, tids: [1], children }, ...children.map((pid) => ({ pid, ppid: 1, tids: [pid], children: [] }))];
  const inv = { ...sampleImageSet().images.inventory, rootPid: 1, tree };
  const started = Date.now();
  const back = decodeInventoryFile('big-inventory.img', reframe('inventory', inv));
  t.is(back.tree.length, n + 1);
  t.true(Date.now() - started < 10_000, `took ${Date.now() - started} ms`);
  // the same tree with one child missing from the root's list is refused, as quickly
  tree[0]!.children = children.slice(0, -1);
  const err = t.throws(() => decodeInventoryFile('big-inventory.img', reframe('inventory', inv)), { instanceOf: ImageError });
  t.regex(err!.message, new RegExp(`big-inventory\\.img: tree\\[0\\]\\.children: pid ${n + 1} \\(ppid 1\\) missing from its parent's children`));
});

test('a "__proto__" key in a map cannot smuggle fields in', (t) => {
  const { tree, ...rest } = sampleImageSet().images.inventory;
  const body = packr.pack(rest); // map16: de NN NN …
  t.is(body[0], 0xde);
  const extra = Buffer.concat([packr.pack('__proto__'), packr.pack({ tree })]);
  const map = Buffer.concat([body, extra]);
  map.writeUInt16BE(body.readUInt16BE(1) + 1, 1);
  const f = Buffer.alloc(16 + map.length + 4);
  f.write('LZMGINVT', 0, 'latin1');
  f.writeUInt16LE(FORMAT_VERSION, 8);
  f.writeUInt32LE(map.length, 12);
  map.copy(f, 16);
  const err = t.throws(() => decodeInventoryFile('proto.img', withCrc(f)), { instanceOf: ImageError });
  t.is(err?.code, 'schema');
  t.regex(err!.message, /^proto\.img: .*(unknown field|tree: missing field)/);
});
