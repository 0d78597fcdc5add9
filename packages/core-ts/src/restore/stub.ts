/**
 * The stub process (stub/stub.c): started by us, it forks; the child is seized and turned
 * into the restored root (the first gadget is the `syscall` of its pause loop), the parent
 * stays behind as the root's parent and reports its pid and, later, how it ended, on a pipe.
 *
 * The binary is built by the package's `build` script into dist/lazymig-stub. When it is
 * missing (tests run from the sources) it is compiled once into a cache dir keyed by a hash
 * of the source; LAZYMIG_STUB overrides both.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Readable } from 'node:stream';
import { RestoreError } from './errors.js';

const PKG_DIR = fileURLToPath(new URL('../../', import.meta.url));
export const STUB_SOURCE = join(PKG_DIR, 'stub', 'stub.c');
export const STUB_CFLAGS = ['-static', '-nostdlib', '-ffreestanding', '-fno-stack-protector', '-fno-pie', '-no-pie', '-O2', '-Wall', '-Wextra'];

let memo: string | undefined;

/** Path of the stub binary, building it if needed. */
export function stubBinary(): string {
  if (memo) return memo;
  const env = process.env['LAZYMIG_STUB'];
  if (env) return (memo = env);
  const dist = join(PKG_DIR, 'dist', 'lazymig-stub');
  const haveSource = existsSync(STUB_SOURCE);
  if (existsSync(dist) && (!haveSource || statSync(dist).mtimeMs >= statSync(STUB_SOURCE).mtimeMs)) return (memo = dist);
  if (!haveSource) throw new RestoreError(`no restore stub: neither ${dist} nor its source ${STUB_SOURCE}`, 'unsupported');
  const h = createHash('sha256').update(STUB_CFLAGS.join(' ')).update(readFileSync(STUB_SOURCE)).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), `lazymig-stub-${h}`);
  const out = join(dir, 'lazymig-stub');
  if (!existsSync(out)) {
    mkdirSync(dir, { recursive: true });
    const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    try {
      execFileSync('gcc', [...STUB_CFLAGS, '-o', tmp, STUB_SOURCE], { timeout: 60_000, stdio: ['ignore', 'ignore', 'pipe'] });
      renameSync(tmp, out);
    } catch (err) {
      throw new RestoreError(`cannot build the restore stub (${STUB_SOURCE}): ${(err as Error).message}`, 'unsupported', { cause: err });
    } finally {
      rmSync(tmp, { force: true });
    }
  }
  return (memo = out);
}

export interface StubExit {
  /** exit status, or null when killed by a signal */
  code: number | null;
  signal: number | null;
}

export interface StartedStub {
  /** the future restored root, waiting in pause() */
  readonly pid: number;
  /** its parent, which reports how it ended */
  readonly reaperPid: number;
  /** resolves when the root has ended (or the reaper died: code and signal null) */
  readonly exited: Promise<StubExit>;
  /** lets the root live on without its reaper (it is reparented): for --restore-detached */
  release(): void;
  /** SIGKILLs the reaper (the root dies with its tracer / is killed by the restore). */
  kill(): void;
}

/** Starts a stub and waits (at most timeoutMs) until it reported its child's pid. */
export function startStub(timeoutMs = 5_000): Promise<StartedStub> {
  const bin = stubBinary();
  const child: ChildProcess = spawn(bin, ['3'], { stdio: ['inherit', 'inherit', 'inherit', 'pipe'] });
  const pipe = child.stdio[3] as Readable;
  let buf = '';
  let released = false;
  let reaperGone = false;
  let resolveExit!: (e: StubExit) => void;
  const exited = new Promise<StubExit>((r) => (resolveExit = r));
  return new Promise<StartedStub>((resolve, reject) => {
    let pid = 0;
    const timer = setTimeout(() => {
      if (!pid) {
        child.kill('SIGKILL');
        reject(new RestoreError(`the restore stub ${bin} did not report within ${timeoutMs} ms`, 'process'));
      }
    }, timeoutMs);
    const onLine = (line: string): void => {
      let m = /^pid (\d+)$/.exec(line);
      if (m) {
        pid = Number(m[1]);
        clearTimeout(timer);
        resolve({
          pid,
          reaperPid: child.pid!,
          exited,
          release() {
            released = true;
            child.unref();
            pipe.destroy();
            if (!reaperGone) child.kill('SIGKILL');
          },
          kill() {
            if (!reaperGone) child.kill('SIGKILL');
          },
        });
        return;
      }
      m = /^exit code=(-?\d+) signal=(\d+)$/.exec(line);
      if (m) {
        const code = Number(m[1]);
        const sig = Number(m[2]);
        resolveExit({ code: code >= 0 && sig === 0 ? code : null, signal: sig || null });
        return;
      }
      m = /^error fork=(\d+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        reject(new RestoreError(`the restore stub could not fork (errno ${m[1]})`, 'process'));
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
      clearTimeout(timer);
      if (!pid) reject(new RestoreError(`the restore stub ${bin} exited before it forked`, 'process'));
    });
    // After the pipe is drained: the exit line (if any) has been seen; a killed reaper reports nothing.
    child.on('close', () => {
      reaperGone = true;
      if (!released) resolveExit({ code: null, signal: null });
    });
  });
}
