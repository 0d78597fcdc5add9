// Images that cannot be restored: a clear error that names the cause, and nothing left
// running (no stub, no half-built process).
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { buildWorkload, startWorkload } from '../../../tools/workloads/index.js';
import { dump, readImages, restore, RestoreError, sampleImageSet, writeImages, FILE_NAMES } from '../src/index.js';
import { descendants, startProgram, strayDescendants, tempDir, trackRestored } from './restore-helpers.js';

type T = Parameters<Parameters<typeof test>[1]>[0];

/** restore() that must fail; a restore that succeeds anyway is killed, not left running. */
async function refused(t: T, dir: string): Promise<Error> {
  try {
    const r = await restore({ imagesDir: dir });
    trackRestored(t, r).kill();
  } catch (err) {
    return err as Error;
  }
  throw new Error('the restore succeeded');
}

async function sleeperImages(t: Parameters<Parameters<typeof test>[1]>[0]) {
  const w = await startWorkload('sleeper', ['--sleep-ms', '100']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=1 /, 15_000);
  const dir = path.join(tempDir(t, 'refuse'), 'images');
  await dump({ pid: w.pid, imagesDir: dir, mode: 'kill' });
  return dir;
}

async function expectNothingLeft(t: Parameters<Parameters<typeof test>[1]>[0], before: number[]) {
  t.deepEqual(await strayDescendants(before), [], 'every process the restore created is gone');
}

test.serial('a corrupted page in the images: checksum error, the half-built process is killed', async (t) => {
  const dir = await sleeperImages(t);
  const images = await readImages(dir);
  const pid = images.inventory.rootPid;
  const pagesFile = path.join(dir, FILE_NAMES.pages(pid));
  const fd = fs.openSync(pagesFile, 'r+');
  try {
    // a byte in the middle of the last data page
    const n = images.pages.get(pid)!.pageCount;
    const at = n * 4096 + 2000;
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, at);
    b[0] = b[0]! ^ 0xff;
    fs.writeSync(fd, b, 0, 1, at);
  } finally {
    fs.closeSync(fd);
  }
  const before = descendants(process.pid);
  const err = await refused(t, dir);
  t.regex(err!.message, /checksum mismatch/);
  t.true(err!.message.includes(pagesFile), err!.message);
  t.true(err instanceof Error);
  await expectNothingLeft(t, before);
});

test.serial('a corrupted core image is refused before anything starts', async (t) => {
  const dir = await sleeperImages(t);
  const inv = await readImages(dir);
  const core = path.join(dir, FILE_NAMES.core(inv.inventory.rootPid));
  const buf = fs.readFileSync(core);
  buf[Math.floor(buf.length / 2)] ^= 0x55;
  fs.writeFileSync(core, buf);
  const before = descendants(process.pid);
  const err = await refused(t, dir);
  t.regex(err!.message, /core-\d+\.img/);
  await expectNothingLeft(t, before);
});

async function copiedSleeper(t: Parameters<Parameters<typeof test>[1]>[0]) {
  const dir = tempDir(t, 'moved');
  const bin = path.join(dir, 'sleeper-copy');
  fs.copyFileSync(await buildWorkload('sleeper'), bin);
  fs.chmodSync(bin, 0o755);
  const log = path.join(dir, 'log');
  const prog = await startProgram(t, [bin, '--sleep-ms', '100', '--lifetime-s', '120'], log, /^ready pid=(\d+) /);
  const images = path.join(dir, 'images');
  await dump({ pid: prog.pid, imagesDir: images, mode: 'kill' });
  return { bin, images };
}

test.serial('a mapped file that changed since the dump is refused, naming it', async (t) => {
  const { bin, images } = await copiedSleeper(t);
  fs.appendFileSync(bin, Buffer.from([0]));
  const before = descendants(process.pid);
  const err = await refused(t, images);
  t.true(err!.message.includes(bin), err!.message);
  t.regex(err!.message, /size changed|modified/);
  t.is((err as RestoreError).code, 'file-changed');
  await expectNothingLeft(t, before);
});

test.serial('a mapped file that was moved away is refused, naming it', async (t) => {
  const { bin, images } = await copiedSleeper(t);
  fs.renameSync(bin, `${bin}.moved`);
  const before = descendants(process.pid);
  const err = await refused(t, images);
  t.true(err!.message.includes(bin), err!.message);
  t.regex(err!.message, /ENOENT/);
  await expectNothingLeft(t, before);
});

test.serial('a dump with another page size is refused', async (t) => {
  const dir = path.join(tempDir(t, 'pagesize'), 'images');
  // A consistent set that says 16 KiB pages: the sample's 16K-aligned VMAs, no page data.
  const s = sampleImageSet();
  s.images.inventory.pageSize = 16384;
  for (const p of s.images.processes) {
    p.pagemap = { ...p.pagemap, pageSize: 16384, entries: [] };
    p.core.vmas = p.core.vmas.filter((v) => v.start % 16384 === 0 && v.end % 16384 === 0);
  }
  await writeImages(dir, s.images, { pages: new Map(s.images.processes.map((p) => [p.pid, Buffer.alloc(0)])) });
  const before = descendants(process.pid);
  const err = await refused(t, dir);
  t.regex(err!.message, /16384-byte pages, this host uses 4096-byte pages/);
  t.is((err as RestoreError).code, 'unsupported');
  await expectNothingLeft(t, before);
});

test.serial('a layout this host cannot map (below mmap_min_addr, at 0) is refused', async (t) => {
  const src = await sleeperImages(t);
  const images = await readImages(src);
  const p = images.processes[0]!;
  p.core.vmas.unshift({ start: 0, end: 0x1000, prot: 3, flags: 0x22, kind: 'anon', file: null, pgoff: 0, madvise: 0 });
  const raw = fs.readFileSync(path.join(src, FILE_NAMES.pages(p.pid)));
  const n = images.pages.get(p.pid)!.pageCount;
  const dir = path.join(tempDir(t, 'layout'), 'images');
  await writeImages(dir, { inventory: images.inventory, processes: images.processes }, { pages: new Map([[p.pid, raw.subarray(4096, 4096 + n * 4096)]]) });
  const before = descendants(process.pid);
  const err = await refused(t, dir);
  t.regex(err!.message, /0x0-0x1000 is outside the range this host lets a process map/);
  await expectNothingLeft(t, before);
});

test.serial('a lazy dump without a lazy hook is refused', async (t) => {
  const dir = path.join(tempDir(t, 'lazy'), 'images');
  const s = sampleImageSet({ lazy: true });
  await writeImages(dir, s.images, { pages: s.pages });
  const err = await refused(t, dir);
  t.regex(err!.message, /lazy dump.*--lazy-pages/);
});
