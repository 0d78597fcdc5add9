import test from 'ava';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { awaitImages, ImageError, sampleImageSet, writeImages } from '../src/index.js';

async function sampleDir(t: { teardown(f: () => Promise<void>): void }): Promise<{ base: string; src: string; files: string[] }> {
  const base = await mkdtemp(join(tmpdir(), 'lazymig-arrival-'));
  t.teardown(() => rm(base, { recursive: true, force: true }));
  const s = sampleImageSet();
  const src = join(base, 'src');
  await writeImages(src, s.images, { pages: s.pages });
  return { base, src, files: (await readdir(src)).sort() };
}

/** Settles within `ms`? (without waiting longer) */
async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let done = false;
  p.then(() => (done = true), () => (done = true));
  await new Promise((r) => setTimeout(r, ms));
  return done;
}

test('images copied in file by file, one of them half-written for a while, are read once all of them check out', async (t) => {
  const { base, src, files } = await sampleDir(t);
  const dst = join(base, 'dst'); // does not exist yet, as before an scp -r
  const arriving = awaitImages(dst, { timeoutMs: 20_000 });
  t.false(await settledWithin(arriving, 100), 'no dir yet');

  await mkdir(dst);
  const [first, ...rest] = files;
  // The first file arrives cut short, as a copy in progress leaves it.
  const whole = await readFile(join(src, first!));
  await writeFile(join(dst, first!), whole.subarray(0, Math.floor(whole.length / 2)));
  for (const f of rest) await copyFile(join(src, f), join(dst, f));
  t.false(await settledWithin(arriving, 150), `${first} is still half there`);

  await writeFile(join(dst, first!), whole);
  const images = await arriving;
  t.is(images.dir, dst);
  t.deepEqual(images.processes.map((p) => p.pid), [1000, 1001]);
});

test('images that never check out: the wait ends at the timeout with the file and what is wrong with it', async (t) => {
  const { base, src, files } = await sampleDir(t);
  const dst = join(base, 'dst');
  await mkdir(dst);
  for (const f of files) await copyFile(join(src, f), join(dst, f));
  const core = files.find((f) => f.startsWith('core-'))!;
  await truncate(join(dst, core), 10);
  const err = await t.throwsAsync(awaitImages(dst, { timeoutMs: 300 }), { instanceOf: ImageError });
  t.is(err!.file, join(dst, core));
});

test('complete images are read at once, without waiting or warming up', async (t) => {
  const { src } = await sampleDir(t);
  let waited = false;
  const images = await awaitImages(src, { timeoutMs: 5_000, onWaiting: () => (waited = true) });
  t.false(waited);
  t.is(images.inventory.rootPid, 1000);
});
