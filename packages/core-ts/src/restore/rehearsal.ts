/**
 * A whole lazy restore, start to end, of a throwaway process of our own, for an armed
 * restore to run while it waits for its images. In a fresh process the rebuild's code runs
 * about twice as slowly the first time as the next (compiling, inline caches), and an
 * armed restore's first time would otherwise be the one inside the downtime.
 *
 * The throwaway process is a stub waiting in pause() with /dev/null for stdio, dumped into a
 * temporary dir and restored with a lazy hook that creates and registers its userfaultfd;
 * then it is killed. Everything it made is gone when this returns, also on failure (which
 * only costs the head start: the caller ignores it).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd } from '@lazymig/uffd-rs';
import { dump } from '../dump/dump.js';
import { attachUserfaultfd } from '../lazy/attach.js';
import type { RestoreOptions, RestoreResult } from './restore.js';
import { startStub } from './stub.js';

export async function rehearseRestore(restore: (opts: RestoreOptions) => Promise<RestoreResult>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-rehearsal-'));
  const target = await startStub({ stdio: 'ignore', throwaway: true });
  let restored: RestoreResult | undefined;
  try {
    const images = join(dir, 'images');
    await dump({ pid: target.pid, imagesDir: images, mode: 'kill' });
    restored = await restore({
      imagesDir: images,
      pin: false,
      lazy: (t) => closeFd(attachUserfaultfd(t.process, t.vmas)),
    });
  } finally {
    if (restored) {
      try {
        process.kill(restored.rootPid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await restored.exited;
    }
    // The dump killed it, unless it failed first; its reaper goes too.
    try {
      process.kill(target.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
    target.kill();
    await rm(dir, { recursive: true, force: true });
  }
}
