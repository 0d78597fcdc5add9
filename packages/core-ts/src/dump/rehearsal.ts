/**
 * A whole lazy dump of a throwaway process of our own, run by a lazy dump before it freezes
 * the real tree. In a fresh process the dump's code runs several times slower the first time
 * than the next (parsing and compiling each function, inline caches, regexps): measured at
 * 1 GiB, about three quarters of a lazy dump's frozen time was that first run (17-20 ms
 * frozen before, 8-13 ms after).
 *
 * The throwaway process is the restore stub waiting in pause() with /dev/null for stdio
 * (and dying with us, should we be killed meanwhile);
 * it goes through everything the real dump does (seize, layout, pages, injected questions,
 * /proc, the commit) into a temporary dir, and is killed. Everything it made is gone when
 * this returns, also on failure (which only costs the head start: the caller ignores it).
 */
import { withThrowawayStub } from '../restore/stub.js';
import type { DumpOptions, DumpResult } from './dump.js';

export function rehearseLazyDump(
  dump: (opts: DumpOptions) => Promise<DumpResult>,
  pageServer: { address: string; port: number },
): Promise<void> {
  return withThrowawayStub('lazymig-dump-rehearsal-', async (pid, imagesDir) => {
    const r = await dump({ pid, imagesDir, mode: 'lazy', pageServer, rehearse: false });
    r.frozen?.kill();
  });
}
