import * as fs from 'node:fs';

/** Error codes a /proc reader can report; 'EPARSE' means the kernel said something we do not understand. */
export type ProcErrorCode = 'ESRCH' | 'ENOENT' | 'EACCES' | 'EPARSE' | 'EINVAL' | string;

/** One-line error naming the pid and the /proc file, e.g. `pid 1234: no such process`. */
export class ProcError extends Error {
  override readonly name = 'ProcError';
  constructor(
    message: string,
    readonly code: ProcErrorCode,
    readonly pid: number,
    readonly file?: string,
  ) {
    super(message);
  }
}

export function procDir(pid: number, tid?: number): string {
  checkPid(pid);
  if (tid === undefined) return `/proc/${pid}`;
  checkPid(tid);
  return `/proc/${pid}/task/${tid}`;
}

export function checkPid(pid: number): void {
  if (!Number.isSafeInteger(pid) || pid <= 0 || pid > 0x3fffff) {
    throw new ProcError(`invalid pid ${String(pid)}`, 'EINVAL', Number.isFinite(pid) ? pid : -1);
  }
}

export function parseError(pid: number, file: string, what: string): ProcError {
  return new ProcError(`pid ${pid}: ${file}: ${what}`, 'EPARSE', pid, file);
}

/**
 * Turns a failed fs call on a /proc path into a ProcError. ENOENT on a file of a pid
 * whose /proc directory is gone (and ESRCH, which reads of an exiting task return)
 * become `pid N: no such process`; ENOENT while the pid still exists stays ENOENT
 * (e.g. an fd closed between readdir and readlink).
 */
export function wrapFsError(pid: number, file: string, err: unknown): ProcError {
  if (err instanceof ProcError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === 'string' ? e.code : 'EIO';
  if (code === 'ESRCH' || (code === 'ENOENT' && !fs.existsSync(`/proc/${pid}`))) {
    return new ProcError(`pid ${pid}: no such process`, 'ESRCH', pid, file);
  }
  const what =
    code === 'ENOENT' ? 'no such file' : code === 'EACCES' || code === 'EPERM' ? 'permission denied' : (e?.message ?? String(err));
  return new ProcError(`pid ${pid}: ${file}: ${what}`, code, pid, file);
}

export function readText(pid: number, file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw wrapFsError(pid, file, e);
  }
}

/**
 * Like readText, but the read (where the kernel does the work of a /proc file such as smaps)
 * runs on the thread pool: the file is opened now and its first read queued at once, so it
 * proceeds while this thread goes on with synchronous work.
 */
export async function readTextOffThread(pid: number, file: string): Promise<string> {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    throw wrapFsError(pid, file, e);
  }
  const chunks: Buffer[] = [];
  try {
    for (;;) {
      const buf = Buffer.allocUnsafe(256 << 10);
      const n = await new Promise<number>((resolve, reject) => fs.read(fd, buf, 0, buf.length, null, (err, got) => (err ? reject(err) : resolve(got))));
      if (n === 0) break;
      chunks.push(buf.subarray(0, n));
    }
  } catch (e) {
    throw wrapFsError(pid, file, e);
  } finally {
    fs.closeSync(fd);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export function readBinary(pid: number, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw wrapFsError(pid, file, e);
  }
}

export function readLink(pid: number, file: string): string {
  try {
    return fs.readlinkSync(file);
  } catch (e) {
    throw wrapFsError(pid, file, e);
  }
}

/** Parses a non-negative decimal or hex integer that must fit a JS number exactly. */
export function safeInt(pid: number, file: string, text: string, radix: 10 | 16 | 8, what: string): number {
  const re = radix === 16 ? /^[0-9a-fA-F]+$/ : radix === 8 ? /^[0-7]+$/ : /^-?\d+$/;
  if (!re.test(text)) throw parseError(pid, file, `bad ${what} ${JSON.stringify(text)}`);
  const n = radix === 10 ? Number(text) : parseInt(text, radix);
  if (!Number.isSafeInteger(n)) throw parseError(pid, file, `${what} ${text} does not fit a JS number`);
  return n;
}
