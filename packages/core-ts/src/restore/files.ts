/**
 * Open files, working directory, umask, resource limits: what the process sees of the
 * file system and its limits.
 *
 * Every fd the stub inherited is closed, then each dumped fd is opened by path (with its
 * flags, at its offset) and moved to its number. A terminal (--shell-job) is this restore's
 * own terminal, duplicated from what the stub inherited.
 */
import { isatty } from 'node:tty';
import { RLIMIT_NAMES, type CoreImage, type FdEntry, type Rlimit } from '../image/index.js';
import { RLIM_INFINITY, readLimits } from '../proc/index.js';
import { RestoreError } from './errors.js';
import { O, SYS, type CallList, type Remote } from './remote.js';

const F_DUPFD = 0;
const SEEK_SET = 0;
const OPEN_FLAGS_DROP = O.CREAT | O.EXCL | O.TRUNC;

/** Which of this process's fds 0..2 is a terminal (the stub inherited them); null if none. */
export function ourTerminalFd(): number | null {
  for (const fd of [0, 1, 2]) if (isatty(fd)) return fd;
  return null;
}

export function restoreFds(remote: Remote, fds: readonly FdEntry[], shellJob: boolean): void {
  const max = fds.reduce((m, f) => Math.max(m, f.fd), -1);
  let term = -1;
  if (fds.some((f) => f.kind === 'tty')) {
    const src = shellJob ? ourTerminalFd() : null;
    if (src === null)
      throw new RestoreError(`pid ${remote.pid}: it had a terminal open; restore --shell-job from a terminal to give it this one`, 'options');
    term = remote.fcntl(src, F_DUPFD, max + 1);
  }
  // close_range(0, ~0U) around the terminal we keep.
  const closing = remote.list();
  if (term < 0) closing.add('close_range', SYS.close_range, [0, 0xffffffff, 0]);
  else {
    if (term > 0) closing.add('close_range', SYS.close_range, [0, term - 1, 0]);
    closing.add('close_range', SYS.close_range, [term + 1, 0xffffffff, 0]);
  }
  closing.run();
  if (!openInPlace(remote, fds, term)) openOneByOne(remote, fds, term);
  if (term >= 0) remote.close(term);
}

/** The fd a dumped fd is reopened as: a new fd from its path, or a copy of the terminal. */
function reopen(list: CallList, f: FdEntry, term: number): number {
  return f.kind === 'tty'
    ? list.add('fcntl(F_DUPFD)', SYS.fcntl, [term, F_DUPFD, 0])
    : list.add('open', SYS.open, [list.putString(f.path), f.flags & ~OPEN_FLAGS_DROP, 0], { detail: f.path });
}

/** What a reopened fd needs once it has its number: close-on-exec for a terminal copy, its offset. */
function settle(list: CallList, f: FdEntry): void {
  if (f.kind === 'tty' && f.flags & O.CLOEXEC) list.add('fcntl(F_SETFD)', SYS.fcntl, [f.fd, 2 /* F_SETFD */, 1]);
  if (f.kind === 'file' && f.offset !== 0n) list.add('lseek', SYS.lseek, [f.fd, f.offset, SEEK_SET]);
}

/**
 * The usual case in two trips: fds dumped as 0, 1, 2, ... reopen, in order, each at its own
 * number (the lowest free one). False, with what it opened closed again, when they did not.
 */
function openInPlace(remote: Remote, fds: readonly FdEntry[], term: number): boolean {
  if (fds.length === 0) return true;
  const list = remote.list();
  for (const f of fds) reopen(list, f, term);
  const got = list.run().map(Number);
  if (got.every((fd, i) => fd === fds[i]!.fd)) {
    const after = remote.list();
    for (const f of fds) settle(after, f);
    after.run();
    return true;
  }
  const undo = remote.list();
  for (const fd of got) undo.add('close', SYS.close, [fd], { goOn: true });
  undo.run();
  return false;
}

/** Each fd reopened and moved to its number before the next is opened. */
function openOneByOne(remote: Remote, fds: readonly FdEntry[], term: number): void {
  for (const f of fds) {
    const one = remote.list();
    reopen(one, f, term);
    const [got] = one.run().map(Number);
    const rest = remote.list();
    if (got !== f.fd) {
      rest.add('dup3', SYS.dup3, [got!, f.fd, f.flags & O.CLOEXEC ? O.CLOEXEC : 0]);
      rest.add('close', SYS.close, [got!]);
      if (f.kind === 'file' && f.offset !== 0n) rest.add('lseek', SYS.lseek, [f.fd, f.offset, SEEK_SET]);
    } else settle(rest, f);
    rest.run();
  }
}

function limitValue(v: Rlimit['soft']): bigint {
  return v === 'unlimited' ? RLIM_INFINITY : v;
}

/**
 * Resource limits as dumped, within what this restore may set: without CAP_SYS_RESOURCE a
 * hard limit cannot be raised, so it stays at the current one (and the soft one under it).
 */
export function restoreLimits(list: CallList, pid: number, core: CoreImage, warn: (msg: string) => void): void {
  const now = readLimits(pid);
  core.rlimits.forEach((l, i) => {
    const cur = now.find((x) => x.index === i);
    if (!cur) return;
    let soft = limitValue(l.soft);
    let hard = limitValue(l.hard);
    if (soft === cur.soft && hard === cur.hard) return;
    if (hard > cur.hard) {
      warn(`pid ${pid}: RLIMIT_${RLIMIT_NAMES[i]!.toUpperCase()} hard limit ${hard === RLIM_INFINITY ? 'unlimited' : hard} cannot be raised here; kept at ${cur.hard === RLIM_INFINITY ? 'unlimited' : cur.hard}`);
      hard = cur.hard;
      if (soft > hard) soft = hard;
    }
    const b = Buffer.alloc(16);
    b.writeBigUInt64LE(soft, 0);
    b.writeBigUInt64LE(hard, 8);
    list.add('prlimit64', SYS.prlimit64, [0, i, list.put(b), 0], { detail: `RLIMIT_${RLIMIT_NAMES[i]!.toUpperCase()}` });
  });
}

export function restoreFsState(list: CallList, core: CoreImage): void {
  list.add('chdir', SYS.chdir, [list.putString(core.cwd)], { detail: core.cwd });
  list.add('umask', SYS.umask, [core.umask]);
}
