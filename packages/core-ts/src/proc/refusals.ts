import type { ProcFdEntry } from './fds.js';
import { readFds } from './fds.js';
import type { ProcVma } from './maps.js';
import { readMaps } from './maps.js';
import type { FlaggedVma } from './smaps.js';

/** Something in a process that a dump cannot carry; `message` names the pid and the object. */
export interface Refusal {
  pid: number;
  what: 'vma' | 'fd' | 'process';
  /** The VMA range + path, the fd number + target, or the pid + comm. */
  object: string;
  reason: string;
  message: string;
}

export function isPosixShmPath(path: string): boolean {
  return path.startsWith('/dev/shm/');
}

/** True for memory another process may share: SysV/POSIX shm, memfd, shared anonymous. */
export function isSharedMemoryVma(v: Pick<ProcVma, 'kind' | 'shmem' | 'path'>): boolean {
  return v.kind === 'shmem' || isPosixShmPath(v.path);
}

function hex(n: number): string {
  return n.toString(16);
}

/** Why a VMA cannot be dumped, or undefined. With smaps VmFlags, also hugetlb and pfn/io mappings. */
export function vmaRefusalReason(v: ProcVma | FlaggedVma): string | undefined {
  if (v.kind === 'shmem') {
    switch (v.shmem) {
      case 'anon_shared':
        return 'shared anonymous memory is not supported';
      case 'sysv':
        return 'SysV shared memory segment is not supported';
      case 'memfd':
        return 'memfd mapping is not supported';
      case 'posix_shm':
        return 'POSIX shared memory (/dev/shm) is not supported';
      default:
        return 'shared memory is not supported';
    }
  }
  if (v.kind === 'special') return `special mapping ${v.path} is not supported`;
  if ('vmFlags' in v) {
    if (v.vmFlags.hugetlb) return 'hugetlb mapping is not supported';
    if (v.vmFlags.pfnMap || v.vmFlags.io || v.vmFlags.mixedMap) return 'device (pfn/io) mapping is not supported';
  }
  return undefined;
}

/** Why an fd cannot be dumped, or undefined. */
export function fdRefusalReason(f: ProcFdEntry): string | undefined {
  switch (f.kind) {
    case 'socket':
      return 'sockets are not supported';
    case 'memfd':
      return 'memfd is not supported';
    case 'anon_inode':
      if (f.anonType === 'io_uring') return 'io_uring is not supported';
      if (f.anonType === 'userfaultfd') return "the process's own userfaultfd is not supported";
      return undefined;
    default:
      if (f.path !== undefined && isPosixShmPath(f.path)) return 'POSIX shared memory (/dev/shm) is not supported';
      return undefined;
  }
}

/**
 * Everything in pid that the dump must refuse before touching anything. Pass already-read
 * maps/fds to avoid reading them twice.
 */
export function findRefusals(pid: number, have: { maps?: ReadonlyArray<ProcVma | FlaggedVma>; fds?: readonly ProcFdEntry[] } = {}): Refusal[] {
  const out: Refusal[] = [];
  for (const v of have.maps ?? readMaps(pid)) {
    const reason = vmaRefusalReason(v);
    if (!reason) continue;
    const object = `${hex(v.start)}-${hex(v.end)} ${v.permsText} ${v.path || '[anon]'}${v.deleted ? ' (deleted)' : ''}`;
    out.push({ pid, what: 'vma', object, reason, message: `pid ${pid}: mapping ${object}: ${reason}` });
  }
  for (const f of have.fds ?? readFds(pid)) {
    const reason = fdRefusalReason(f);
    if (!reason) continue;
    const object = `${f.fd} -> ${f.target}`;
    out.push({ pid, what: 'fd', object, reason, message: `pid ${pid}: fd ${object}: ${reason}` });
  }
  return out;
}
