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
  /** Scratch memory in the target for syscall arguments: `scratchBytes` (at least 64) at `scratch`. */
  scratch: number;
  scratchBytes: number;
  write(address: number, data: Uint8Array): void;
  read(address: number, length: number): Buffer;
  /**
   * Runs up to `maxCalls` syscalls in one trip, if the target can (restore's runner): the raw
   * return values of those that ran, which stop after the first failure. Pointers in their
   * arguments point into `scratch`, which this must leave alone.
   */
  syscalls?(calls: ReadonlyArray<{ nr: number; args: Array<number | bigint> }>): bigint[];
  maxCalls?: number;
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

/** remote.syscalls without a runner: one call at a time, stopping after a failure like it. */
function oneByOne(remote: RemoteProcess, calls: ReadonlyArray<{ nr: number; args: Array<number | bigint> }>): bigint[] {
  const out: bigint[] = [];
  for (const c of calls) {
    const r = remote.syscall(c.nr, c.args);
    out.push(r);
    if (r < 0n && r > -4096n) break;
  }
  return out;
}

/** uffdio_api and uffdio_register are both 32 bytes. */
export const UFFDIO_STRUCT_BYTES = 32;
const STRUCT = UFFDIO_STRUCT_BYTES;

/**
 * Creates and registers the target's userfaultfd; returns an fd to it in this process
 * (the caller hands it to the daemon and closes it). The registrations go in trips of as
 * many as the target's scratch and runner take: a process may have thousands of lazy VMAs.
 */
export function attachUserfaultfd(remote: RemoteProcess, vmas: ReadonlyArray<{ start: number; end: number }>): number {
  const { pid } = remote;
  const perTrip = Math.min(Math.floor((remote.scratchBytes - STRUCT) / STRUCT), (remote.maxCalls ?? Infinity) - 2);
  if (!(perTrip >= 1)) throw new AttachError(`pid ${pid}: no room to register a userfaultfd (${remote.scratchBytes} bytes of scratch, ${remote.maxCalls} calls a trip)`);
  const tfd = Number(ok(pid, 'userfaultfd', remote.syscall(SYS_userfaultfd, [O_CLOEXEC | O_NONBLOCK])));
  let ours = -1;
  let closed = false;
  try {
    // Ours first: the handshake and registrations below act on the same uffd through the
    // target's fd, so they can go in trips with the target's close at the end of the last.
    const pidfd = pidfdOpen(pid);
    try {
      ours = pidfdGetfd(pidfd, tfd);
    } finally {
      closeFd(pidfd);
    }
    // The structs, back to back in the scratch: the API one, then one per registration of the trip.
    const api = Buffer.alloc(STRUCT);
    api.writeBigUInt64LE(UFFD_API, 0);
    api.writeBigUInt64LE(UFFD_EVENTS.fork | UFFD_EVENTS.remap | UFFD_EVENTS.remove | UFFD_EVENTS.unmap | UFFD_EVENTS.threadId, 8);
    remote.write(remote.scratch, api);
    for (let from = 0; from === 0 || from < vmas.length; from += perTrip) {
      const trip = vmas.slice(from, from + perTrip);
      const last = from + perTrip >= vmas.length;
      const structs = Buffer.alloc(trip.length * STRUCT);
      trip.forEach((v, i) => {
        structs.writeBigUInt64LE(BigInt(v.start), i * STRUCT);
        structs.writeBigUInt64LE(BigInt(v.end - v.start), i * STRUCT + 8);
        structs.writeBigUInt64LE(UFFDIO_REGISTER_MODE_MISSING, i * STRUCT + 16);
      });
      remote.write(remote.scratch + STRUCT, structs);
      const calls = [
        ...(from === 0 ? [{ nr: SYS_ioctl, args: [tfd, UFFDIO_API, remote.scratch], what: 'UFFDIO_API' }] : []),
        ...trip.map((v, i) => ({ nr: SYS_ioctl, args: [tfd, UFFDIO_REGISTER, remote.scratch + STRUCT + i * STRUCT], what: `UFFDIO_REGISTER 0x${v.start.toString(16)}-0x${v.end.toString(16)}` })),
        ...(last ? [{ nr: SYS_close, args: [tfd], what: 'close' }] : []),
      ];
      const results = remote.syscalls ? remote.syscalls(calls) : oneByOne(remote, calls);
      results.forEach((r, i) => ok(pid, calls[i]!.what, r));
      if (results.length !== calls.length) throw new AttachError(`pid ${pid}: ${calls[results.length]!.what} did not run`);
      closed = last;
    }
    const fd = ours;
    ours = -1;
    return fd;
  } finally {
    if (ours >= 0) closeFd(ours);
    if (!closed) remote.syscall(SYS_close, [tfd]);
  }
}
