/**
 * Syscalls by name inside a stopped thread, through the native injector: `remote.mmap(...)`
 * instead of `injector.call(9, [...])`, and a failure throws an error that names the pid,
 * the call with its arguments, and the errno by name.
 *
 * A process being rebuilt has a control area (see stub.ts): a `syscall` gadget plus scratch
 * memory where arguments that are pointers (paths, structs) are written first.
 */
import { SyscallInjector, processVmRead, processVmWrite } from '@lazymig/uffd-rs';
import { RestoreError, errnoText, hex } from './errors.js';

/** x86-64 syscall numbers used by restore. */
export const SYS = {
  read: 0, write: 1, open: 2, close: 3, lseek: 8, mmap: 9, mprotect: 10, munmap: 11, brk: 12,
  rt_sigaction: 13, rt_sigprocmask: 14, ioctl: 16, mremap: 25, madvise: 28, dup2: 33, pause: 34,
  getpid: 39, clone: 56, fork: 57, fcntl: 72, chdir: 80, umask: 95, getppid: 110, setsid: 112,
  setresuid: 117, setresgid: 119, setgroups: 116, personality: 135, prctl: 157, gettid: 186,
  sched_setaffinity: 203, set_tid_address: 218, exit_group: 231, set_robust_list: 273, dup3: 292,
  prlimit64: 302, rseq: 334, close_range: 436, pidfd_open: 434, userfaultfd: 323, clone3: 435,
} as const;

export const PROT = { READ: 1, WRITE: 2, EXEC: 4 } as const;
export const MAP = {
  SHARED: 0x01, PRIVATE: 0x02, FIXED: 0x10, ANONYMOUS: 0x20, GROWSDOWN: 0x100, NORESERVE: 0x4000,
  FIXED_NOREPLACE: 0x100000,
} as const;
export const MREMAP = { MAYMOVE: 1, FIXED: 2, DONTUNMAP: 4 } as const;
export const O = { RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200, NOCTTY: 0o400, TRUNC: 0o1000, CLOEXEC: 0o2000000 } as const;
export const PR = { SET_NAME: 15, SET_MM: 35, SET_MM_MAP: 14, SET_MM_MAP_SIZE: 15 } as const;

export class RemoteSyscallError extends RestoreError {
  constructor(
    readonly pid: number,
    readonly tid: number,
    readonly syscall: string,
    readonly errno: number,
    detail?: string,
    /** The failing call's index in a CallList. */
    readonly listIndex?: number,
  ) {
    super(`pid ${pid}${tid !== pid ? ` (tid ${tid})` : ''}: ${syscall} failed: ${errnoText(errno)}${detail ? `: ${detail}` : ''}`, 'syscall');
  }
}

function fmtArg(a: bigint | number): string {
  const n = typeof a === 'bigint' ? a : BigInt(a);
  return n > 4096n || n < -4096n ? hex(n < 0n ? n + (1n << 64n) : n) : n.toString();
}

/**
 * Scratch memory inside the target for pointer arguments. Writes go through
 * process_vm_writev; `reset()` starts over (arguments only live for one call).
 */
export class Scratch {
  private used = 0;
  constructor(
    readonly pid: number,
    readonly addr: number,
    readonly size: number,
  ) {}

  reset(): void {
    this.used = 0;
  }

  /** Copies `data` in (8-byte aligned) and returns its address in the target. */
  put(data: Uint8Array): number {
    const at = this.addr + this.used;
    if (this.used + data.length > this.size) throw new RestoreError(`pid ${this.pid}: scratch area overflow (${data.length} bytes)`, 'process');
    if (data.length > 0) processVmWrite(this.pid, new Float64Array([at, data.length]), data);
    this.used += (data.length + 7) & ~7;
    return at;
  }

  putString(s: string): number {
    return this.put(Buffer.from(s + '\0', 'utf8'));
  }

  /** Room for the kernel to write into; returns its address. */
  reserve(len: number): number {
    const at = this.addr + this.used;
    if (this.used + len > this.size) throw new RestoreError(`pid ${this.pid}: scratch area overflow (${len} bytes)`, 'process');
    this.used += (len + 7) & ~7;
    return at;
  }

  read(addr: number, len: number): Buffer {
    const b = Buffer.alloc(len);
    processVmRead(this.pid, new Float64Array([addr, len]), b);
    return b;
  }
}

/** Bytes of one entry of the syscall runner's list (8 words), and of its end mark. */
export const LIST_ENTRY = 64;
/** Entries a CallList runs in one trip, in the scratch area with the end mark. */
const LIST_TRIP = 64;

interface Listed {
  name: string;
  nr: number;
  args: Array<bigint | number>;
  detail: string | undefined;
  goOn: boolean;
}

/**
 * Syscalls queued and run in one ptrace trip through the control area's syscall runner
 * (SyscallInjector.runList) instead of two stops each: on a busy machine every stop waits
 * for the CPU, and a rebuild makes dozens of calls. Calls run in order and stop at the
 * first failure, which throws like Remote.call (unless added with goOn). Pointer arguments
 * go in with put()/putString() first; the list takes the scratch after them.
 * Without a control area (the bare stub) the calls are injected one by one.
 */
export class CallList {
  readonly #remote: Remote;
  readonly #calls: Listed[] = [];

  constructor(remote: Remote) {
    this.#remote = remote;
    remote.scratch?.reset();
  }

  /** Queues a call; returns its index (results and errors refer to it). */
  add(name: string, nr: number, args: Array<bigint | number>, opts: { detail?: string; goOn?: boolean } = {}): number {
    this.#calls.push({ name, nr, args, detail: opts.detail, goOn: opts.goOn ?? false });
    return this.#calls.length - 1;
  }

  put(data: Uint8Array): number {
    return this.#remote.scratchOrThrow().put(data);
  }

  putString(s: string): number {
    return this.#remote.scratchOrThrow().putString(s);
  }

  /** Runs every queued call; returns their raw results (negative errno for goOn calls that failed). */
  run(): bigint[] {
    const out: bigint[] = [];
    const calls = this.#calls.splice(0);
    const remote = this.#remote;
    const list = remote.runner !== null && remote.scratch ? remote.scratch.reserve((Math.min(calls.length, LIST_TRIP) + 1) * LIST_ENTRY) : null;
    for (let at = 0; at < calls.length; ) {
      const trip = list === null ? calls.slice(at, at + 1) : calls.slice(at, at + LIST_TRIP);
      const results = list === null ? [remote.raw(trip[0]!.nr, trip[0]!.args)] : remote.rawList(list, trip);
      for (let i = 0; i < results.length; i++) {
        const r = results[i]!;
        const c = trip[i]!;
        if (r < 0n && r > -4096n && !c.goOn) throw new RemoteSyscallError(remote.pid, remote.tid, `${c.name}(${c.args.map(fmtArg).join(', ')})`, Number(-r), c.detail, at + i);
        out.push(r);
      }
      at += trip.length;
    }
    return out;
  }
}

/**
 * Counts every injected syscall of a restore, and the ptrace trips they took (one per single
 * call or list): the summary reports both.
 */
export const injectionStats = { calls: 0, trips: 0 };

export class Remote {
  private inj: SyscallInjector;
  private done = 0;
  /** Where the control area's syscall runner is (CallList runs through it), once there is one. */
  runner: number | null = null;

  constructor(
    readonly pid: number,
    readonly tid: number,
    gadget: number,
    public scratch: Scratch | null = null,
    runner: number | null = null,
  ) {
    this.inj = new SyscallInjector(tid, gadget, { timeoutMs: 10_000 });
    this.runner = runner;
  }

  /** Go on with another gadget (the stub's own `syscall` is unmapped at some point). */
  useGadget(gadget: number): void {
    this.done += this.inj.count;
    this.inj = new SyscallInjector(this.tid, gadget, { timeoutMs: 10_000 });
  }

  get count(): number {
    return this.done + this.inj.count;
  }

  get pendingSignals(): number[] {
    return this.inj.pendingSignals;
  }

  /** The raw return value: a negative errno is returned. */
  raw(nr: number, args: Array<bigint | number> = []): bigint {
    injectionStats.calls++;
    injectionStats.trips++;
    try {
      return this.inj.call(nr, args);
    } catch (err) {
      const e = err as Error & { code?: string };
      throw new RestoreError(`pid ${this.pid}${this.tid !== this.pid ? ` (tid ${this.tid})` : ''}: injecting syscall ${nr}: ${e.message}`, 'process', { cause: err });
    }
  }

  /** Runs `calls` in one trip through the runner (see CallList), with the list at `list`. */
  rawList(list: number, calls: ReadonlyArray<{ nr: number; args: Array<bigint | number>; goOn?: boolean }>): bigint[] {
    const words = new BigUint64Array(calls.length * 8);
    calls.forEach((c, i) => {
      words[i * 8] = BigInt(c.nr);
      c.args.forEach((a, j) => (words[i * 8 + 1 + j] = BigInt.asUintN(64, BigInt(a))));
      words[i * 8 + 7] = c.goOn ? 1n : 0n;
    });
    try {
      const results = this.inj.runList(this.runner!, list, words);
      injectionStats.calls += results.length;
      injectionStats.trips++;
      return [...results];
    } catch (err) {
      const e = err as Error;
      throw new RestoreError(`pid ${this.pid}${this.tid !== this.pid ? ` (tid ${this.tid})` : ''}: running ${calls.length} syscalls (${[...new Set(calls.map((c) => c.nr))].join(', ')}): ${e.message}`, 'process', { cause: err });
    }
  }

  /** Syscalls to run in one trip. */
  list(): CallList {
    return new CallList(this);
  }

  scratchOrThrow(): Scratch {
    if (!this.scratch) throw new RestoreError(`pid ${this.pid}: no scratch area yet`, 'process');
    return this.scratch;
  }

  /** Runs `nr` and throws a RemoteSyscallError naming `name(args)` on failure. */
  call(name: string, nr: number, args: Array<bigint | number> = [], detail?: string): bigint {
    const r = this.raw(nr, args);
    if (r < 0n && r > -4096n) throw new RemoteSyscallError(this.pid, this.tid, `${name}(${args.map(fmtArg).join(', ')})`, Number(-r), detail);
    return r;
  }

  private need(): Scratch {
    const s = this.scratchOrThrow();
    s.reset();
    return s;
  }

  mmap(addr: number, len: number, prot: number, flags: number, fd = -1, off = 0, detail?: string): number {
    return Number(this.call('mmap', SYS.mmap, [addr, len, prot, flags, fd, off], detail));
  }
  munmap(addr: number, len: number): void {
    this.call('munmap', SYS.munmap, [addr, len]);
  }
  open(path: string, flags: number, mode = 0): number {
    const p = this.need().putString(path);
    return Number(this.call('open', SYS.open, [p, flags, mode], path));
  }
  close(fd: number): void {
    this.call('close', SYS.close, [fd]);
  }
  fcntl(fd: number, cmd: number, arg: number): number {
    return Number(this.call('fcntl', SYS.fcntl, [fd, cmd, arg]));
  }
  setsid(): void {
    this.call('setsid', SYS.setsid, []);
  }
  fork(): number {
    return Number(this.call('fork', SYS.fork, []));
  }
  /**
   * clone3 with set_tid (struct clone_args, CLONE_ARGS_SIZE_VER2 = 88 bytes): `setTid` lists
   * the pid wanted at each namespace level, innermost first (only as many levels as given
   * are chosen). The child's stack pointer is stack + stackSize (or the caller's when 0).
   * Returns the new pid/tid as the calling process sees it (inside its namespace).
   */
  clone3(a: { flags: number; exitSignal: number; stack?: number; stackSize?: number; setTid: readonly number[] }, detail?: string): number {
    const sc = this.need();
    const tids = Buffer.alloc(Math.max(4, a.setTid.length * 4));
    a.setTid.forEach((t, i) => tids.writeInt32LE(t, i * 4));
    const tidsAt = sc.put(tids);
    const b = Buffer.alloc(88);
    b.writeBigUInt64LE(BigInt(a.flags), 0);
    b.writeBigUInt64LE(BigInt(a.exitSignal), 32);
    b.writeBigUInt64LE(BigInt(a.stack ?? 0), 40);
    b.writeBigUInt64LE(BigInt(a.stackSize ?? 0), 48);
    b.writeBigUInt64LE(BigInt(a.setTid.length ? tidsAt : 0), 64);
    b.writeBigUInt64LE(BigInt(a.setTid.length), 72);
    const at = sc.put(b);
    return Number(this.call('clone3', SYS.clone3, [at, b.length], detail));
  }
  /** clone(flags, stack, parent_tid, child_tid, tls): returns the new tid. */
  clone(flags: number, stack: number): number {
    return Number(this.call('clone', SYS.clone, [flags, stack, 0, 0, 0]));
  }
}
