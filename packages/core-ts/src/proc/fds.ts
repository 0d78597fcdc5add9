import * as fs from 'node:fs';
import { parseError, procDir, readLink, readText, wrapFsError } from './errors.js';

export type ProcFdKind =
  | 'file'
  | 'dir'
  | 'dev_null'
  | 'tty'
  | 'pty'
  | 'chr'
  | 'blk'
  | 'pipe'
  | 'fifo'
  | 'socket'
  | 'anon_inode'
  | 'memfd'
  /** nsfs ('net:[...]'), pidfs ('pidfd:[...]') and anything else we cannot name. */
  | 'other';

export interface FdInfo {
  pos: number;
  /** Open flags as printed (octal in fdinfo), including O_CLOEXEC when close-on-exec is set. */
  flags: number;
  mntId: number;
  ino: bigint | undefined;
  /** The remaining lines (eventfd-count, tfd, inotify, ...) verbatim. */
  extra: Record<string, string>;
}

/** Identity of what the fd refers to: stat() through the /proc/PID/fd link, so it works for deleted files too. */
export interface FdStat {
  dev: bigint;
  ino: bigint;
  mode: number;
  rdev: bigint;
  size: bigint;
  mtimeNs: bigint;
}

export interface ProcFdEntry {
  fd: number;
  /** readlink of /proc/PID/fd/N, e.g. '/tmp/x (deleted)', 'pipe:[123]', 'anon_inode:[eventfd]'. */
  target: string;
  kind: ProcFdKind;
  /** For paths: the target without ' (deleted)'. */
  path: string | undefined;
  deleted: boolean;
  /** For anon_inode: the name in brackets (eventfd, eventpoll, userfaultfd, io_uring, signalfd, timerfd, inotify, ...). */
  anonType: string | undefined;
  /** For pipe:[N] and socket:[N]. */
  objectIno: bigint | undefined;
  stat: FdStat | undefined;
  info: FdInfo;
  /** O_* names decoded from info.flags. */
  flagNames: string[];
}

export const O = {
  WRONLY: 0o1,
  RDWR: 0o2,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  ASYNC: 0o20000,
  DIRECT: 0o40000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  NOATIME: 0o1000000,
  CLOEXEC: 0o2000000,
  SYNC: 0o4010000,
  PATH: 0o10000000,
  TMPFILE: 0o20200000,
} as const;

export function decodeOpenFlags(flags: number): string[] {
  const acc = flags & 3;
  const out = [acc === 0 ? 'O_RDONLY' : acc === 1 ? 'O_WRONLY' : acc === 2 ? 'O_RDWR' : 'O_ACCMODE3'];
  for (const [name, bit] of Object.entries(O)) {
    if (bit <= 2) continue;
    // SYNC and TMPFILE contain other bits (DSYNC, DIRECTORY): require all of them.
    if ((flags & bit) === bit) out.push(`O_${name}`);
  }
  if (out.includes('O_SYNC')) out.splice(out.indexOf('O_DSYNC'), 1);
  if (out.includes('O_TMPFILE')) out.splice(out.indexOf('O_DIRECTORY'), 1);
  return out;
}

export function parseFdinfo(pid: number, text: string, file: string): FdInfo {
  const kv: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    kv[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  const pos = kv['pos'];
  const flags = kv['flags'];
  const mnt = kv['mnt_id'];
  if (pos === undefined || flags === undefined || mnt === undefined) throw parseError(pid, file, 'missing pos/flags/mnt_id');
  if (!/^\d+$/.test(pos) || !Number.isSafeInteger(Number(pos))) throw parseError(pid, file, `bad pos ${pos}`);
  if (!/^[0-7]+$/.test(flags)) throw parseError(pid, file, `bad flags ${flags}`);
  const extra: Record<string, string> = {};
  for (const [k, v] of Object.entries(kv)) if (!['pos', 'flags', 'mnt_id', 'ino'].includes(k)) extra[k] = v;
  const ino = kv['ino'];
  return {
    pos: Number(pos),
    flags: parseInt(flags, 8),
    mntId: Number(mnt),
    ino: ino !== undefined && /^\d+$/.test(ino) ? BigInt(ino) : undefined,
    extra,
  };
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;

function major(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}
function minor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

export function classifyFd(target: string, st: FdStat | undefined): Pick<ProcFdEntry, 'kind' | 'path' | 'deleted' | 'anonType' | 'objectIno'> {
  const none = { path: undefined, deleted: false, anonType: undefined, objectIno: undefined };
  let m = /^(pipe|socket):\[(\d+)\]$/.exec(target);
  if (m) return { ...none, kind: m[1] === 'pipe' ? 'pipe' : 'socket', objectIno: BigInt(m[2] ?? '0') };
  m = /^anon_inode:\[?([^\]]*)\]?$/.exec(target);
  if (m) return { ...none, kind: 'anon_inode', anonType: m[1] ?? '' };
  if (!target.startsWith('/')) return { ...none, kind: 'other' };
  const deleted = target.endsWith(' (deleted)');
  const path = deleted ? target.slice(0, -' (deleted)'.length) : target;
  const base = { ...none, path, deleted };
  if (path.startsWith('/memfd:')) return { ...base, kind: 'memfd' };
  const fmt = st ? st.mode & S_IFMT : 0;
  switch (fmt) {
    case S_IFDIR:
      return { ...base, kind: 'dir' };
    case S_IFBLK:
      return { ...base, kind: 'blk' };
    case S_IFIFO:
      return { ...base, kind: 'fifo' };
    case S_IFSOCK:
      return { ...base, kind: 'socket' };
    case S_IFCHR: {
      const rdev = st?.rdev ?? 0n;
      const maj = major(rdev);
      const min = minor(rdev);
      if (maj === 1 && min === 3) return { ...base, kind: 'dev_null' };
      // 136-143: /dev/pts/N; 5:2 /dev/ptmx
      if ((maj >= 136 && maj <= 143) || (maj === 5 && min === 2)) return { ...base, kind: 'pty' };
      // 4: virtual consoles and serial, 5:0 /dev/tty, 5:1 /dev/console
      if (maj === 4 || (maj === 5 && min <= 1)) return { ...base, kind: 'tty' };
      return { ...base, kind: 'chr' };
    }
    case S_IFREG:
      return { ...base, kind: 'file' };
    default:
      return { ...base, kind: st ? 'other' : 'file' };
  }
}

function statFd(link: string): FdStat | undefined {
  try {
    const s = fs.statSync(link, { bigint: true });
    return { dev: s.dev, ino: s.ino, mode: Number(s.mode), rdev: s.rdev, size: s.size, mtimeNs: s.mtimeNs };
  } catch {
    return undefined;
  }
}

/** One fd of a process. Throws ProcError ENOENT if the fd is not open. */
export function readFd(pid: number, fd: number): ProcFdEntry {
  const dir = procDir(pid);
  const link = `${dir}/fd/${fd}`;
  const target = readLink(pid, link);
  const st = statFd(link);
  const infoFile = `${dir}/fdinfo/${fd}`;
  const info = parseFdinfo(pid, readText(pid, infoFile), infoFile);
  return { fd, target, ...classifyFd(target, st), stat: st, info, flagNames: decodeOpenFlags(info.flags) };
}

/** Every open fd, sorted by number. An fd closed while we look is skipped. */
export function readFds(pid: number): ProcFdEntry[] {
  const dir = `${procDir(pid)}/fd`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw wrapFsError(pid, dir, e);
  }
  const out: ProcFdEntry[] = [];
  for (const n of names.map(Number).sort((a, b) => a - b)) {
    try {
      out.push(readFd(pid, n));
    } catch (e) {
      if ((e as { code?: string }).code === 'ENOENT') continue;
      throw e;
    }
  }
  return out;
}
