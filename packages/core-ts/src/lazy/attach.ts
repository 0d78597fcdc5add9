/**
 * Gives a process being restored a userfaultfd that the lazy-pages daemon will serve.
 *
 * The uffd is created inside the target (an injected userfaultfd(2)), so its faults are the
 * target's; the lazy VMAs are registered there too, then the fd is copied out with
 * pidfd_getfd and closed in the target. Created without UFFD_USER_MODE_ONLY: a syscall of
 * the process that touches a lazy page (a read() into a lazy buffer) must wait for the page,
 * not fail with EFAULT.
 */
import { pidfdGetfd, pidfdOpen, closeFd } from '@lazymig/uffd-rs';

export interface RemoteProcess {
  pid: number;
  /** Runs a syscall in the target; the raw return value (negative errno on failure). */
  syscall(nr: number, args: Array<number | bigint>): bigint;
  /** Scratch memory in the target for syscall arguments (at least 64 bytes). */
  scratch: number;
  write(address: number, data: Uint8Array): void;
  read(address: number, length: number): Buffer;
}

const SYS_close = 3;
const SYS_ioctl = 16;
const SYS_userfaultfd = 323;
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;
const UFFD_API = 0xaan;
const UFFDIO_API = 0xc018aa3f;
const UFFDIO_REGISTER = 0xc020aa00;
const UFFDIO_REGISTER_MODE_MISSING = 1n;

export const UFFD_EVENTS = {
  fork: 1n << 1n,
  remap: 1n << 2n,
  remove: 1n << 3n,
  unmap: 1n << 6n,
  threadId: 1n << 8n,
} as const;

export class AttachError extends Error {
  override readonly name = 'AttachError';
}

function ok(pid: number, what: string, ret: bigint): bigint {
  if (ret < 0n && ret > -4096n) throw new AttachError(`pid ${pid}: ${what} failed with errno ${-ret}`);
  return ret;
}

/**
 * Creates and registers the target's userfaultfd; returns an fd to it in this process
 * (the caller hands it to the daemon and closes it).
 */
export function attachUserfaultfd(remote: RemoteProcess, vmas: ReadonlyArray<{ start: number; end: number }>): number {
  const { pid } = remote;
  const tfd = Number(ok(pid, 'userfaultfd', remote.syscall(SYS_userfaultfd, [O_CLOEXEC | O_NONBLOCK])));
  try {
    const api = Buffer.alloc(24);
    api.writeBigUInt64LE(UFFD_API, 0);
    api.writeBigUInt64LE(UFFD_EVENTS.fork | UFFD_EVENTS.remap | UFFD_EVENTS.remove | UFFD_EVENTS.unmap | UFFD_EVENTS.threadId, 8);
    remote.write(remote.scratch, api);
    ok(pid, 'UFFDIO_API', remote.syscall(SYS_ioctl, [tfd, UFFDIO_API, remote.scratch]));
    for (const v of vmas) {
      const reg = Buffer.alloc(32);
      reg.writeBigUInt64LE(BigInt(v.start), 0);
      reg.writeBigUInt64LE(BigInt(v.end - v.start), 8);
      reg.writeBigUInt64LE(UFFDIO_REGISTER_MODE_MISSING, 16);
      remote.write(remote.scratch, reg);
      ok(pid, `UFFDIO_REGISTER 0x${v.start.toString(16)}-0x${v.end.toString(16)}`, remote.syscall(SYS_ioctl, [tfd, UFFDIO_REGISTER, remote.scratch]));
    }
    const pidfd = pidfdOpen(pid);
    try {
      return pidfdGetfd(pidfd, tfd);
    } finally {
      closeFd(pidfd);
    }
  } finally {
    remote.syscall(SYS_close, [tfd]);
  }
}
