/**
 * Open files as the image records them, and which ones a restore can rebuild today.
 * What cannot be rebuilt is refused by the dump, before anything is changed: a dump that
 * succeeds must restore.
 */
import type { FdEntry, FdKind } from '../image/index.js';
import { findRefusals, type FlaggedVma, type ProcFdEntry, type Refusal } from '../proc/index.js';

function imageFdKind(f: ProcFdEntry): FdKind {
  switch (f.kind) {
    case 'file':
    case 'dir':
    case 'pipe':
    case 'fifo':
    case 'socket':
    case 'memfd':
      return f.kind;
    case 'dev_null':
      return 'devnull';
    case 'tty':
    case 'pty':
      return 'tty';
    case 'chr':
      return 'chardev';
    case 'anon_inode':
      switch (f.anonType) {
        case 'eventfd':
          return 'eventfd';
        case 'eventpoll':
          return 'epoll';
        case 'signalfd':
          return 'signalfd';
        case 'timerfd':
          return 'timerfd';
        case 'inotify':
          return 'inotify';
        default:
          return 'other';
      }
    default:
      return 'other';
  }
}

/** Kinds restore rebuilds (a tty only with --shell-job, which restore checks). */
const RESTORABLE = new Set<FdKind>(['file', 'dir', 'devnull', 'tty', 'chardev']);

export function toImageFd(f: ProcFdEntry): FdEntry {
  const id =
    f.stat && ['file', 'dir', 'chardev', 'tty', 'fifo', 'devnull'].includes(imageFdKind(f))
      ? { dev: f.stat.dev, ino: f.stat.ino, size: Number(f.stat.size), mtimeNs: f.stat.mtimeNs }
      : null;
  return { fd: f.fd, kind: imageFdKind(f), path: f.target, flags: f.info.flags, offset: BigInt(f.info.pos), id };
}

/** Everything in pid that the dump must turn away, each naming the pid and the fd or mapping. */
export function dumpRefusals(pid: number, maps: readonly FlaggedVma[], fds: readonly ProcFdEntry[]): Refusal[] {
  // The kernel's own mappings ([vvar], [vvar_vclock] are VM_PFNMAP) are rebuilt by restore, not dumped.
  const special = new Set(['vdso', 'vvar', 'vvar_vclock', 'vsyscall']);
  const out = findRefusals(pid, { maps: maps.filter((v) => !special.has(v.kind)), fds });
  const refusedFds = new Set(out.filter((r) => r.what === 'fd').map((r) => r.object));
  for (const f of fds) {
    const kind = imageFdKind(f);
    const object = `${f.fd} -> ${f.target}`;
    if (RESTORABLE.has(kind) || refusedFds.has(object)) continue;
    if (kind === 'file' && f.deleted) continue; // handled below
    const reason = `${kind === 'other' ? f.target : kind} fds cannot be restored yet`;
    out.push({ pid, what: 'fd', object, reason, message: `pid ${pid}: fd ${object}: ${reason}` });
  }
  for (const v of maps) {
    if (v.kind === 'file' && v.deleted) {
      const object = `${v.start.toString(16)}-${v.end.toString(16)} ${v.permsText} ${v.path} (deleted)`;
      const reason = 'the mapped file was deleted; it cannot be mapped again';
      out.push({ pid, what: 'vma', object, reason, message: `pid ${pid}: mapping ${object}: ${reason}` });
    }
  }
  for (const f of fds) {
    if (f.deleted && (f.kind === 'file' || f.kind === 'dir')) {
      const object = `${f.fd} -> ${f.target}`;
      const reason = 'the file was deleted; its contents cannot be restored';
      out.push({ pid, what: 'fd', object, reason, message: `pid ${pid}: fd ${object}: ${reason}` });
    }
  }
  return out;
}
