/**
 * Images that are still arriving. `scp -r` writes each file in place, in no set order, so a
 * destination command started before the copy finishes sees missing, short or half-written
 * files. Every image file carries its length and a CRC32C, and the inventory names every
 * other file, so "all of it checks out" is the same as "the copy is complete": a partly
 * written file fails its checks until its last byte lands.
 *
 * Waiting here lets `restore` and `lazy-pages` start up (Node, the CLI, the stub process)
 * before the dump, so none of that is part of the downtime.
 */
import { watch, type FSWatcher } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { niced } from '../host/priority.js';
import { readImages, writeImages, type LoadedImages } from './dir.js';
import { sampleImageSet } from './sample.js';
import type { PagesVerify } from './pages.js';

/**
 * A check between directory events can miss a change made while it ran (inotify is only
 * watched once the dir exists; an event can come before the check that would see it):
 * re-check at least this often.
 */
const RECHECK_MS = 25;

export interface ArrivalOptions {
  /** give up after this long, throwing the last reason the files did not check out */
  timeoutMs: number;
  /** called once, with the reason, if the first attempt finds the files incomplete (after warmUp) */
  onWaiting?: (reason: string) => void;
  /**
   * Run once the waiting has begun: the first pass over code that has never run is several
   * times slower than the next (compilation), and this is time nobody is waiting on.
   */
  warmUp?: () => void | Promise<void>;
}

/**
 * Calls `attempt` whenever something changes in `dir` (or its parent, until `dir` exists)
 * until it resolves, and returns what it resolved with. Every rejection is taken to mean
 * "not all there yet" until `timeoutMs` has passed.
 */
export async function whenComplete<T>(dir: string, attempt: () => Promise<T>, opts: ArrivalOptions): Promise<T> {
  const deadline = performance.now() + opts.timeoutMs;
  let watcher: FSWatcher | null = null;
  let watched: string | null = null;
  let wake: (() => void) | null = null;
  let changed = false;
  const onChange = (): void => {
    changed = true;
    wake?.();
  };
  // The dir itself once it exists; its parent (to see it appear) until then. True when it
  // starts watching another dir: what happened there before is not seen, so look again.
  const watchDir = (): boolean => {
    for (const d of [dir, dirname(dir)]) {
      if (d === watched) return false;
      try {
        const w = watch(d, onChange);
        w.on('error', () => undefined);
        watcher?.close();
        watcher = w;
        watched = d;
        return true;
      } catch {
        /* not there (yet): try the parent, or rely on the periodic re-check */
      }
    }
    return false;
  };
  try {
    let told = false;
    for (;;) {
      changed = watchDir();
      try {
        return await attempt();
      } catch (err) {
        const reason = (err as Error).message;
        const left = deadline - performance.now();
        if (left <= 0) throw err;
        if (!told) {
          told = true;
          try {
            if (opts.warmUp) await niced(opts.warmUp);
          } catch {
            /* only ever a head start */
          }
          opts.onWaiting?.(reason);
          continue;
        }
        if (!changed) {
          await new Promise<void>((resolve) => {
            const t = setTimeout(resolve, Math.min(RECHECK_MS, left));
            wake = () => {
              clearTimeout(t);
              resolve();
            };
          });
          wake = null;
        }
      }
    }
  } finally {
    (watcher as FSWatcher | null)?.close();
  }
}

/** `readImages`, waiting up to `timeoutMs` for images still being copied into `dir`. */
export function awaitImages(dir: string, opts: ArrivalOptions & { verifyPages?: PagesVerify }): Promise<LoadedImages> {
  const read = opts.verifyPages === undefined ? {} : { verifyPages: opts.verifyPages };
  return whenComplete(dir, () => readImages(dir, read), {
    ...opts,
    warmUp: async () => {
      await warmImageReading();
      await opts.warmUp?.();
    },
  });
}

/** Writes and reads back a sample images dir: every decoder and check of the read path runs once. */
export async function warmImageReading(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-warm-'));
  try {
    const s = sampleImageSet();
    const images = join(dir, 'images');
    await writeImages(images, s.images, { pages: s.pages });
    await readImages(images);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
