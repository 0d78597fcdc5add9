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
import { closeFd } from '@lazymig/uffd-rs';
import { dump } from '../dump/dump.js';
import { attachUserfaultfd } from '../lazy/attach.js';
import type { RestoreOptions, RestoreResult } from './restore.js';
import { withThrowawayStub } from './stub.js';

export function rehearseRestore(restore: (opts: RestoreOptions) => Promise<RestoreResult>): Promise<void> {
  return withThrowawayStub('lazymig-rehearsal-', async (pid, imagesDir) => {
    await dump({ pid, imagesDir, mode: 'kill' });
    const restored = await restore({
      imagesDir,
      pin: false,
      lazy: (t) => closeFd(attachUserfaultfd(t.process, t.vmas)),
    });
    try {
      process.kill(restored.rootPid, 'SIGKILL');
    } catch {
      /* gone */
    }
    await restored.exited;
  });
}
