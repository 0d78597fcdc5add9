/**
 * The guard of a lazy restore (guard/guard.c): a detached process holding a copy of each
 * restored process's userfaultfd, which kills the processes if the lazy-pages daemon goes
 * away before every page is in. Closing the last copy of a uffd early would turn the
 * missing pages into zero pages silently.
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { setPriority } from 'node:os';
import { cProgram, type CProgram } from '../host/c-program.js';

export const GUARD: CProgram = { name: 'lazymig-guard', source: 'guard/guard.c', cflags: ['-O2', '-Wall', '-Wextra'], env: 'LAZYMIG_GUARD' };

/** Where the guard reports (it outlives the restore and has no terminal of its own). */
export const GUARD_LOG = 'lazy-guard.log';

/** Its nice value: it must not slow the transfer it starts next to. */
const GUARD_NICE = 10;

/** Path of the guard binary, building it if needed. */
export function guardBinary(): string {
  return cProgram(GUARD);
}

/**
 * Starts a guard for `pids`, handing it a pidfd of each (what it kills through) and `uffds`
 * (our copies: the caller may close all these fds once this returns). It watches the
 * daemon whose control socket is in `workDir`.
 */
export function startGuard(workDir: string, pids: readonly number[], pidfds: readonly number[], uffds: readonly number[]): void {
  if (pidfds.length !== pids.length) throw new Error(`lazy guard: ${pids.length} pids but ${pidfds.length} pidfds`);
  const bin = guardBinary();
  // Not our stdout/stderr: a guard holding them would keep `restore | tee` waiting until the
  // transfer ends. It reports to a log file in the work dir instead.
  const log = openSync(join(workDir, GUARD_LOG), 'a', 0o600);
  try {
    const guard = spawn(bin, [workDir, pids.join(',')], { detached: true, stdio: ['ignore', 'ignore', log, ...pidfds, ...uffds] });
    try {
      if (guard.pid !== undefined) setPriority(guard.pid, GUARD_NICE);
    } catch {
      /* a guard at our priority works the same */
    }
    guard.unref();
  } finally {
    closeSync(log);
  }
}
