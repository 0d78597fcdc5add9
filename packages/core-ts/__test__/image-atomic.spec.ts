import test, { type ExecutionContext } from 'ava';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageError, ImagesDirWriter, readImages, sampleImageSet, samplePage, writeImages } from '../src/image/index.js';

const made: string[] = [];
test.after.always(async () => {
  for (const d of made) await rm(d, { recursive: true, force: true });
});

async function parent(): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'lazymig-atomic-'));
  made.push(d);
  return d;
}

/** Nothing at the target, and no temporary dir left behind beside it. */
async function nothingLeft(t: ExecutionContext, par: string, keep: string[] = []): Promise<void> {
  t.deepEqual((await readdir(par)).sort(), keep.sort(), `left in ${par}`);
}

test('a failure while pages stream in leaves no images dir and no temporary dir', async (t) => {
  const s = sampleImageSet({ lazy: false });
  const par = await parent();
  const dir = join(par, 'images');
  async function* failing(): AsyncGenerator<Uint8Array> {
    yield samplePage(1000, 0x403000);
    yield samplePage(1000, 0x1000000);
    throw new Error('process_vm_readv: ESRCH (simulated)');
  }
  const err = await t.throwsAsync(writeImages(dir, s.images, { pages: new Map([[1000, failing()]]) }), { instanceOf: ImageError });
  t.regex(err!.message, /images: .*process_vm_readv: ESRCH \(simulated\)/);
  await nothingLeft(t, par);
  await t.throwsAsync(readImages(dir), { instanceOf: ImageError });
});

test('a failure at commit (images inconsistent with the pages written) leaves nothing behind', async (t) => {
  const s = sampleImageSet({ lazy: false });
  const par = await parent();
  const dir = join(par, 'images');
  // pid 1001's pages are missing their last 3 pages: its pagemap points past the end of its pages file
  const short = new Map(s.pages);
  short.set(1001, s.pages.get(1001)!.subarray(0, s.pages.get(1001)!.length - 3 * 4096));
  const err = await t.throwsAsync(writeImages(dir, s.images, { pages: short }), { instanceOf: ImageError });
  t.is(err?.code, 'layout');
  t.regex(err!.message, /pagemap-1001\.img: .*past the end of the pages file/);
  t.false(err!.file.includes('lazymig-tmp'), 'the error names the final path, not the temporary one');
  await nothingLeft(t, par);
});

test('invalid images are refused before anything is written', async (t) => {
  const s = sampleImageSet();
  const par = await parent();
  const dir = join(par, 'images');
  const core = s.images.processes[1]!.core;
  core.vmas[3] = { ...core.vmas[3]!, end: core.vmas[4]!.start + 4096 }; // heap overlaps the next VMA
  const err = await t.throwsAsync(writeImages(dir, s.images, { pages: s.pages }), { instanceOf: ImageError });
  t.is(err?.code, 'layout');
  t.regex(err!.message, /core-1001\.img: vmas\[4\]: .* overlaps the previous VMA/);
  await nothingLeft(t, par);
});

test('an interrupted dump (never committed) leaves only a hidden temporary dir that is not a valid images dir', async (t) => {
  const par = await parent();
  const dir = join(par, 'images');
  const w = await ImagesDirWriter.create(dir);
  const pw = await w.pages(1000, 4096);
  await pw.write(samplePage(1000, 0x403000));
  // the dumping process dies here: no commit, no abort
  const left = await readdir(par);
  t.is(left.length, 1);
  t.regex(left[0]!, /^\.images\.lazymig-tmp-/);
  await t.throwsAsync(readImages(dir), { instanceOf: ImageError, message: /images: missing/ });
  const err = await t.throwsAsync(readImages(join(par, left[0]!)), { instanceOf: ImageError });
  t.is(err?.code, 'missing');
  t.regex(err!.message, /inventory\.img: missing/);
  await w.abort();
  await nothingLeft(t, par);
});

test('an existing non-empty dir is not replaced; an empty one is; overwrite replaces old images', async (t) => {
  const s = sampleImageSet();
  const par = await parent();
  const dir = join(par, 'images');

  await mkdir(dir);
  await writeFile(join(dir, 'notes.txt'), 'mine');
  const err = await t.throwsAsync(writeImages(dir, s.images, { pages: s.pages }), { instanceOf: ImageError });
  t.is(err?.code, 'exists');
  t.is(await readFile(join(dir, 'notes.txt'), 'utf8'), 'mine');
  await nothingLeft(t, par, ['images']);

  const empty = join(par, 'empty');
  await mkdir(empty);
  await writeImages(empty, s.images, { pages: s.pages });
  t.is((await readImages(empty)).processes.length, 2);

  const again = await t.throwsAsync(writeImages(empty, s.images, { pages: s.pages }), { instanceOf: ImageError });
  t.is(again?.code, 'exists');
  t.regex(again!.message, /an images dir already exists here/);

  const eager = sampleImageSet({ lazy: false });
  await writeImages(empty, eager.images, { pages: eager.pages, overwrite: true });
  const back = await readImages(empty, { verifyPages: 'full' });
  t.false(back.inventory.lazy);
  await nothingLeft(t, par, ['images', 'empty']);
});

test('a target created while the dump runs is not clobbered', async (t) => {
  const s = sampleImageSet();
  const par = await parent();
  const dir = join(par, 'images');
  const w = await ImagesDirWriter.create(dir);
  for (const [pid, data] of s.pages) await (await w.pages(pid, 4096)).write(data);
  await mkdir(dir);
  await writeFile(join(dir, 'someone-else'), 'x');
  const err = await t.throwsAsync(w.commit(s.images), { instanceOf: ImageError });
  t.is(err?.code, 'exists');
  t.is(await readFile(join(dir, 'someone-else'), 'utf8'), 'x');
  await nothingLeft(t, par, ['images']);
});
