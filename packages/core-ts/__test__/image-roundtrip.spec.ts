import test from 'ava';
import { mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  FILE_NAMES, ImageError, ImagesDirWriter, openPagesReader, PagesReader, readImageFile, readImages, regsFromBuffer,
  regsToBuffer, renderShowJson, renderShowSummary, sampleImageSet, samplePage, USER_REGS_SIZE, writeImages,
  type ImageSet, type PagemapEntry,
} from '../src/image/index.js';

const made: string[] = [];
test.after.always(async () => {
  for (const d of made) await rm(d, { recursive: true, force: true });
});

async function tmp(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'lazymig-img-'));
  made.push(d);
  return d;
}

/** Structural equality that also compares Buffers and bigints. */
function sameSet(t: import('ava').ExecutionContext, got: ImageSet, want: ImageSet): void {
  t.deepEqual(got.inventory, want.inventory);
  t.is(got.processes.length, want.processes.length);
  got.processes.forEach((p, i) => {
    const w = want.processes[i]!;
    t.is(p.pid, w.pid);
    t.deepEqual(p.pagemap, w.pagemap);
    const { threads, ...rest } = p.core;
    const { threads: wThreads, ...wRest } = w.core;
    t.deepEqual(rest, wRest);
    threads.forEach((th, j) => {
      const wt = wThreads[j]!;
      t.true(th.xstate.equals(wt.xstate), `xstate of tid ${th.tid}`);
      t.deepEqual({ ...th, xstate: null }, { ...wt, xstate: null });
    });
  });
}

for (const lazy of [true, false]) {
  test(`${lazy ? 'a lazy' : 'an eager'} image set round-trips through writeImages/readImages`, async (t) => {
    const s = sampleImageSet({ lazy });
    // values that do not fit in 53 bits must survive exactly
    const th = s.images.processes[0]!.core.threads[0]!;
    th.regs.r15 = 0xffffffffffffffffn;
    th.regs.r14 = 0x8000000000000000n;
    th.sigmask = 0xfffffffe7ffbfeffn;
    s.images.processes[0]!.core.sigactions[9]!.mask = 0xffffffffffffffffn;
    s.images.processes[0]!.core.rlimits[0] = { soft: 0xfffffffffffffffen, hard: 'unlimited' };
    const dir = join(await tmp(), 'images');
    await writeImages(dir, s.images, { pages: s.pages });
    t.deepEqual((await readdir(dir)).sort(), [
      'core-1000.img', 'core-1001.img', 'inventory.img', 'pagemap-1000.img', 'pagemap-1001.img', 'pages-1000.img', 'pages-1001.img',
    ]);
    const back = await readImages(dir, { verifyPages: 'full' });
    sameSet(t, back, s.images);
    t.is(back.processes[0]!.core.threads[0]!.regs.r15, 0xffffffffffffffffn);
    t.is(back.processes[0]!.core.vmas.at(-1)!.start, 0xffffffffff600000);
    // page data: what went in comes out, by address
    for (const p of back.processes) {
      const reader = await openPagesReader(back, p.pid);
      try {
        for (const e of p.pagemap.entries) {
          if (e.kind === 'present') {
            const got = await reader.read(e.start, e.pages);
            const want = Buffer.concat(Array.from({ length: e.pages }, (_, i) => samplePage(p.pid, e.start + i * 4096)));
            t.true(got.equals(want), `present range 0x${e.start.toString(16)} of pid ${p.pid}`);
          } else if (e.kind === 'zero') {
            t.true((await reader.read(e.start + 4096, 2)).equals(Buffer.alloc(8192)));
          } else {
            const err = await t.throwsAsync(reader.read(e.start, 1), { instanceOf: ImageError });
            t.is(err?.code, 'not-present');
            t.regex(err!.message, /pages-\d+\.img: page 0x7f0000000000 of pid \d+ is lazy/);
          }
        }
        // a read spanning present + zero ranges (heap head + zero tail), async and sync
        const span = await reader.read(0x1003000, 2);
        t.true(reader.readSync(0x1003000, 2).equals(span));
        t.true(span.subarray(0, 4096).equals(samplePage(p.pid, 0x1003000)));
        t.true(span.subarray(4096).equals(Buffer.alloc(4096)));
        // an unmapped address
        const err = await t.throwsAsync(reader.read(0x500000, 1), { instanceOf: ImageError });
        t.is(err?.code, 'not-present');
      } finally {
        await reader.close();
      }
    }
  });
}

test('the pages file can be pread at a pagemap offset without decoding anything', async (t) => {
  const s = sampleImageSet({ lazy: false });
  const dir = join(await tmp(), 'images');
  await writeImages(dir, s.images, { pages: s.pages });
  const raw = await readFile(join(dir, FILE_NAMES.pages(1000)));
  const stack = s.images.processes[0]!.pagemap.entries.find((e) => e.start === 0x7ffc0000d000)! as PagemapEntry & { offset: number };
  t.is(stack.offset % 4096, 0);
  t.true(raw.subarray(stack.offset, stack.offset + 4096).equals(samplePage(1000, 0x7ffc0000d000)));
  // layout: header page, data pages, 4 bytes of CRC per page, 16-byte trailer
  const n = 8 + 0x40;
  t.is(raw.length, 4096 + n * 4096 + n * 4 + 16);
  t.is(raw.subarray(0, 8).toString('latin1'), 'LZMGPAGE');
  t.is(raw.subarray(raw.length - 16, raw.length - 12).toString('latin1'), 'PEND');
  t.is(raw.readUInt32LE(raw.length - 12), n);
});

test('ImagesDirWriter streams pages and returns pagemap entries with offsets', async (t) => {
  const s = sampleImageSet({ lazy: true });
  const dir = join(await tmp(), 'images');
  const w = await ImagesDirWriter.create(dir);
  // stream pid 1000's present ranges in 1-page chunks, concurrently queued
  const proc = s.images.processes[0]!;
  const pw = await w.pages(1000, 4096);
  const entries: PagemapEntry[] = [];
  for (const e of proc.pagemap.entries) {
    if (e.kind !== 'present') {
      entries.push(e);
      continue;
    }
    const offsets = await Promise.all(Array.from({ length: e.pages }, (_, i) => pw.write(samplePage(1000, e.start + i * 4096))));
    t.deepEqual(offsets, Array.from({ length: e.pages }, (_, i) => offsets[0]! + i * 4096));
    entries.push({ start: e.start, pages: e.pages, kind: 'present', offset: offsets[0]! });
  }
  t.deepEqual(entries, proc.pagemap.entries);
  const pw2 = await w.pages(1001, 4096);
  for (const e of s.images.processes[1]!.pagemap.entries) {
    if (e.kind === 'present') {
      const got = await pw2.addRange(e.start, s.pages.get(1001)!.subarray(e.offset - 4096, e.offset - 4096 + e.pages * 4096));
      t.deepEqual(got, e);
    }
  }
  await w.writeExtraFile('auth-token', 'secret\n');
  await w.commit(s.images);
  const back = await readImages(dir, { verifyPages: 'full' });
  sameSet(t, back, s.images);
  t.is(await readFile(join(dir, 'auth-token'), 'utf8'), 'secret\n');
  t.is(((await stat(join(dir, 'auth-token'))).mode & 0o777), 0o600);
});

test('readImageFile identifies and decodes each kind of file', async (t) => {
  const s = sampleImageSet();
  const dir = join(await tmp(), 'images');
  await writeImages(dir, s.images, { pages: s.pages });
  const inv = await readImageFile(join(dir, 'inventory.img'));
  t.is(inv.kind, 'inventory');
  if (inv.kind === 'inventory') t.deepEqual(inv.inventory, s.images.inventory);
  const core = await readImageFile(join(dir, 'core-1001.img'));
  t.is(core.kind, 'core');
  if (core.kind === 'core') t.is(core.core.comm, 'memhog-child');
  const pm = await readImageFile(join(dir, 'pagemap-1001.img'));
  t.is(pm.kind, 'pagemap');
  if (pm.kind === 'pagemap') t.deepEqual(pm.pagemap, s.images.processes[1]!.pagemap);
  const pages = await readImageFile(join(dir, 'pages-1001.img'));
  t.is(pages.kind, 'pages');
  if (pages.kind === 'pages') t.is(pages.pages.pageCount, 8);
});

test('show renders JSON like crit and a summary table', async (t) => {
  const s = sampleImageSet({ lazy: true });
  const dir = join(await tmp(), 'images');
  await writeImages(dir, s.images, { pages: s.pages });
  const json = JSON.parse(await renderShowJson(dir)) as {
    inventory: { lazy: boolean; pageServer: { address: string; port: number } };
    processes: Array<{
      pid: number;
      core: { threads: Array<{ regs: Record<string, string>; xstate: { length: number; base64: string } }>; vmas: Array<{ start: string; end: string; kind: string; prot: string }>; rlimits: Record<string, { soft: string; hard: string }> };
      pagemap: { pages: { present: number; lazy: number; zero: number } };
      pages: { pageCount: number; dataBytes: number };
    }>;
  };
  t.true(json.inventory.lazy);
  t.deepEqual(json.inventory.pageServer, { address: '10.77.0.1', port: 27027 });
  const p0 = json.processes[0]!;
  t.is(p0.pid, 1000);
  t.is(p0.core.threads[0]!.regs['rip'], '0x4013e8');
  t.is(p0.core.threads[0]!.regs['orig_rax'], '0xffffffffffffffff');
  t.is(p0.core.threads[0]!.xstate.length, 2688);
  t.is(Buffer.from(p0.core.threads[0]!.xstate.base64, 'base64').length, 2688);
  t.deepEqual(p0.core.vmas.at(-1), { ...p0.core.vmas.at(-1)!, start: '0xffffffffff600000', end: '0xffffffffff601000', kind: 'vsyscall' });
  t.is(p0.core.vmas[1]!.prot, 'r-x');
  t.deepEqual(p0.core.rlimits['nofile'], { soft: '1024', hard: '1048576' });
  t.deepEqual(p0.pagemap.pages, { present: 8, lazy: 64, zero: 29 });
  t.deepEqual(p0.pages, { ...p0.pages, pageCount: 8, dataBytes: 32768 });
  const lengthOnly = JSON.parse(await renderShowJson(dir, { bytes: 'length' })) as typeof json;
  t.deepEqual(lengthOnly.processes[0]!.core.threads[0]!.xstate, { length: 2688 } as never);
  // a single file
  const one = JSON.parse(await renderShowJson(join(dir, 'pagemap-1000.img'))) as { kind: string; pagemap: { entries: Array<{ start: string; kind: string }> } };
  t.is(one.kind, 'pagemap');
  t.deepEqual(one.pagemap.entries.map((e) => e.kind), ['present', 'present', 'zero', 'lazy', 'present']);
  const pagesJson = JSON.parse(await renderShowJson(join(dir, 'pages-1000.img'))) as { pages: Record<string, unknown> };
  t.false(JSON.stringify(pagesJson).length > 1000, 'a pages file is summarised, never dumped');

  const summary = await renderShowSummary(dir);
  t.regex(summary, /lazy, leave-stopped, page server 10\.77\.0\.1:27027/);
  t.regex(summary, /^1000\s+1\s+memhog\s+2\s+10\s+4\s+8\s+64\s+29\s/m);
  t.regex(summary, /^1001\s+1000\s+memhog-child\s+1\s+10\s+4\s+8\s+64\s+29\s/m);
  t.regex(summary, /2 processes, 3 threads, 20 VMAs/);
  t.regex(summary, /present 16 \(64\.0 KiB\), lazy 128 \(512\.0 KiB\), zero 58/);
  t.regex(await renderShowSummary(join(dir, 'core-1000.img')), /core of pid 1000 \(memhog\), 2 thread\(s\), 10 VMAs, 4 fds/);
});

test('show on a broken image is an ImageError naming the file', async (t) => {
  const dir = await tmp();
  const err = await t.throwsAsync(renderShowJson(join(dir, 'nope.img')), { instanceOf: ImageError });
  t.is(err?.code, 'missing');
  t.true(err!.message.includes('nope.img'));
});

test('regs convert to and from the raw 216-byte user_regs_struct', (t) => {
  const s = sampleImageSet();
  const regs = s.images.processes[0]!.core.threads[0]!.regs;
  const buf = regsToBuffer(regs);
  t.is(buf.length, USER_REGS_SIZE);
  t.is(buf.length, 216);
  t.is(buf.readBigUInt64LE(16 * 8), regs.rip); // rip is the 17th field
  t.is(buf.readBigUInt64LE(15 * 8), 0xffffffffffffffffn); // orig_rax
  t.deepEqual(regsFromBuffer(buf), regs);
});

test('PagesReader refuses a pagemap that does not match its file', async (t) => {
  const s = sampleImageSet({ lazy: false });
  const dir = join(await tmp(), 'images');
  await writeImages(dir, s.images, { pages: s.pages });
  const path = join(dir, 'pages-1000.img');
  const pm = structuredClone(s.images.processes[0]!.pagemap);
  const err = await t.throwsAsync(PagesReader.open(path, { pagemap: pm, pid: 1001 }), { instanceOf: ImageError });
  t.regex(err!.message, /pages-1000\.img: pages file of pid 1000, expected pid 1001/);
  pm.entries.push({ start: 0x7ffc0000f000, pages: 1, kind: 'present', offset: 200 * 4096 });
  const err2 = await t.throwsAsync(PagesReader.open(path, { pagemap: pm }), { instanceOf: ImageError });
  t.regex(err2!.message, /past the end of the pages file/);
});
