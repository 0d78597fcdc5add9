/**
 * The stub process (stub/stub.c): started by us, it forks; the child is seized and turned
 * into the restored root (the first gadget is the `syscall` of its pause loop), the parent
 * stays behind as the root's parent and reports its pid and, later, how it ended, on a pipe.
 *
 * With a pid namespace (`startStub({ pidNs: rootPid })`) the stub unshares one first and its
 * child is that namespace's init (pid 1 there); the init creates the root at its dumped pid
 * (clone3 + set_tid), reports how it ends, and reaps orphans until the namespace is empty.
 * Every pid here (pid, reaperPid, initPid) is as seen from our namespace.
 *
 * The binary is dist/lazymig-stub (host/c-program.ts); LAZYMIG_STUB overrides it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { RestoreError, errnoText } from './errors.js';
import { hostChildWithNsPid, startTimeOf } from './pidns.js';
import { cProgram, CProgramError, type CProgram } from '../host/c-program.js';

export const STUB: CProgram = {
  name: 'lazymig-stub',
  source: 'stub/stub.c',
  cflags: ['-static', '-nostdlib', '-ffreestanding', '-fno-stack-protector', '-fno-pie', '-no-pie', '-O2', '-Wall', '-Wextra'],
  env: 'LAZYMIG_STUB',
};

/** Path of the stub binary, building it if needed. */
export function stubBinary(): string {
  try {
    return cProgram(STUB);
  } catch (err) {
    if (err instanceof CProgramError) throw new RestoreError(`the restore stub: ${err.message}`, 'unsupported', { cause: err });
    throw err;
  }
}

export interface StubExit {
  /** exit status, or null when killed by a signal */
  code: number | null;
  signal: number | null;
}

export interface StartedStub {
  /** the future restored root, waiting in pause() */
  readonly pid: number;
  /** the process we started: the root's parent, or with a pid namespace the init's parent */
  readonly reaperPid: number;
  /** with a pid namespace: its init (pid 1 there), the root's parent, which reports how it ended */
  readonly initPid: number | null;
  /** resolves when the root has ended (or the reaper died: code and signal null) */
  readonly exited: Promise<StubExit>;
  /** lets the root live on without its reaper (it is reparented): for --restore-detached */
  release(): void;
  /**
   * SIGKILLs the reaper (the root dies with its tracer / is killed by the restore); with a
   * pid namespace also its init, which takes every process left in the namespace with it.
   */
  kill(): void;
}

export interface StubOptions {
  timeoutMs?: number;
  /** restore into a new pid namespace, the root at this pid there */
  pidNs?: number;
  /** the stub's fds 0-2: ours (default), or /dev/null */
  stdio?: 'inherit' | 'ignore';
  /**
   * A rehearsal's target, never restored into: it dies with us (PR_SET_PDEATHSIG), so a
   * lazymig killed meanwhile leaves no stub behind. Not with pidNs.
   */
  throwaway?: boolean;
}

/** Starts a stub and waits (at most timeoutMs) until it reported its child's pid. */
/**
 * Runs `fn` on a rehearsal's target: a throwaway stub (stdio /dev/null, dying with us),
 * with the path of an images dir to make in a temporary dir. The stub and the dir are gone
 * when this returns, also on failure.
 */
export async function withThrowawayStub<T>(prefix: string, fn: (pid: number, imagesDir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  let target: StartedStub | undefined;
  try {
    target = await startStub({ stdio: 'ignore', throwaway: true });
    return await fn(target.pid, join(dir, 'images'));
  } finally {
    if (target) {
      try {
        process.kill(target.pid, 'SIGKILL');
      } catch {
        /* killed by what fn did with it, or gone */
      }
      target.kill(); // its reaper
    }
    await rm(dir, { recursive: true, force: true });
  }
}

export function startStub(opts: StubOptions = {}): Promise<StartedStub> {
  const timeoutMs = opts.timeoutMs ?? 5_000;
  const bin = stubBinary();
  const nsRoot = opts.pidNs ?? 0;
  if (nsRoot && opts.throwaway) throw new RestoreError('a throwaway stub has no pid namespace', 'unsupported');
  const args = nsRoot ? ['3', '--pid-ns', String(nsRoot)] : opts.throwaway ? ['3', '--throwaway', String(process.pid)] : ['3'];
  const io = opts.stdio ?? 'inherit';
  const child: ChildProcess = spawn(bin, args, { stdio: [io, io, io, 'pipe'] });
  const pipe = child.stdio[3] as Readable;
  let buf = '';
  let released = false;
  let reaperGone = false;
  let rootEnded = false;
  // The namespace's init: its pid and start time (to kill it only while it is the same process).
  let init = 0;
  let initStart: string | undefined;
  let initGone = false;
  let rootInNs = 0;
  let resolveExit!: (e: StubExit) => void;
  const exited = new Promise<StubExit>((r) => (resolveExit = r));
  const killInit = (): void => {
    if (!init || initGone || startTimeOf(init) !== initStart) return;
    try {
      process.kill(init, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  return new Promise<StartedStub>((resolve, reject) => {
    let pid = 0;
    let failed = false;
    const fail = (err: RestoreError): void => {
      if (pid || failed) return;
      failed = true;
      clearTimeout(timer);
      killInit();
      if (!reaperGone) child.kill('SIGKILL');
      reject(err);
    };
    const timer = setTimeout(() => fail(new RestoreError(`the restore stub ${bin} did not report within ${timeoutMs} ms`, 'process')), timeoutMs);
    const ready = (rootPid: number): void => {
      pid = rootPid;
      clearTimeout(timer);
      resolve({
        pid,
        reaperPid: child.pid!,
        initPid: nsRoot ? init : null,
        exited,
        release() {
          released = true;
          child.unref();
          pipe.destroy();
          if (!reaperGone) child.kill('SIGKILL');
        },
        kill() {
          killInit();
          if (!reaperGone) child.kill('SIGKILL');
        },
      });
    };
    // With a namespace: both lines ("init" from the stub, "root" from the init) in any order.
    const nsReady = (): void => {
      if (!init || !rootInNs || pid || failed) return;
      const host = hostChildWithNsPid(init, rootInNs);
      if (host === null) fail(new RestoreError(`the restore stub's namespace init (pid ${init}) has no child at pid ${rootInNs} in its namespace`, 'process'));
      else ready(host);
    };
    const onLine = (line: string): void => {
      let m = /^pid (\d+)$/.exec(line);
      if (m) {
        ready(Number(m[1]));
        return;
      }
      m = /^init (\d+)$/.exec(line);
      if (m) {
        init = Number(m[1]);
        initStart = startTimeOf(init);
        nsReady();
        return;
      }
      m = /^root (\d+)$/.exec(line);
      if (m) {
        rootInNs = Number(m[1]);
        nsReady();
        return;
      }
      if (line === 'init-exit') {
        initGone = true;
        return;
      }
      m = /^exit code=(-?\d+) signal=(\d+)$/.exec(line);
      if (m) {
        const code = Number(m[1]);
        const sig = Number(m[2]);
        rootEnded = true;
        resolveExit({ code: code >= 0 && sig === 0 ? code : null, signal: sig || null });
        // The init stays while other restored processes live on (orphans of the root):
        // they must not keep this process from exiting.
        if (nsRoot) {
          child.unref();
          (pipe as Readable & { unref?: () => void }).unref?.();
        }
        return;
      }
      m = /^error (fork|unshare|clone3)=(\d+)$/.exec(line);
      if (m) {
        const errno = Number(m[2]);
        const what =
          m[1] === 'unshare'
            ? `could not create a pid namespace: unshare(CLONE_NEWPID): ${errnoText(errno)}`
            : m[1] === 'clone3'
              ? `could not create the root at pid ${nsRoot} in the new pid namespace: clone3(set_tid): ${errnoText(errno)}`
              : `could not fork: ${errnoText(errno)}`;
        fail(new RestoreError(`the restore stub ${what}`, m[1] === 'clone3' && errno === 17 ? 'address-taken' : 'process'));
      }
    };
    pipe.setEncoding('utf8');
    pipe.on('data', (d: string) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    pipe.on('error', () => undefined);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new RestoreError(`cannot start the restore stub ${bin}: ${err.message}`, 'process', { cause: err }));
    });
    child.on('exit', () => {
      reaperGone = true;
      // Without a namespace the child's pid line is written before the stub can exit; with
      // one the init's lines may still be on their way: 'close' (pipe drained) decides.
      if (!nsRoot) {
        clearTimeout(timer);
        if (!pid) fail(new RestoreError(`the restore stub ${bin} exited before it forked`, 'process'));
      }
    });
    // After the pipe is drained: the exit line (if any) has been seen; a killed reaper reports nothing.
    child.on('close', () => {
      reaperGone = true;
      initGone = true;
      if (!pid) fail(new RestoreError(`the restore stub ${bin} exited before it created the root`, 'process'));
      if (!released && !rootEnded) resolveExit({ code: null, signal: null });
    });
  });
}
