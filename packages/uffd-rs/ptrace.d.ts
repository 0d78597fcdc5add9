// ptrace, syscall injection, process memory I/O, pidfd and unix-socket fd passing.
//
// Errors: a kernel failure throws an Error shaped like Node's system errors: `code` (errno
// name, e.g. 'ESRCH'), `errno`, `syscall` (e.g. 'PTRACE_SEIZE', 'process_vm_readv'),
// `address` when one is involved, and `tid` / `pid` / `fd` / `path` naming whom it was
// about; the message reads e.g. `PTRACE_SEIZE tid 1234: ESRCH (No such process)`.
// Bad arguments throw TypeError / RangeError. See PtraceSystemError below.
//
// Every ptrace call (including SyscallInjector) must come from the JS main thread: the
// kernel ties a tracee to the tracer thread that seized it.

/** What every kernel failure of this module throws: index.d.ts SystemError plus whom it was about. */
export interface PtraceSystemError extends Error {
  code: string
  errno: number
  syscall: string
  address?: number
  tid?: number
  pid?: number
  fd?: number
  path?: string
}

/** x86-64 struct user_regs_struct, field for field, in kernel order. */
export interface Regs {
  r15: bigint
  r14: bigint
  r13: bigint
  r12: bigint
  rbp: bigint
  rbx: bigint
  r11: bigint
  r10: bigint
  r9: bigint
  r8: bigint
  rax: bigint
  rcx: bigint
  rdx: bigint
  rsi: bigint
  rdi: bigint
  orig_rax: bigint
  rip: bigint
  cs: bigint
  eflags: bigint
  rsp: bigint
  ss: bigint
  fs_base: bigint
  gs_base: bigint
  ds: bigint
  es: bigint
  fs: bigint
  gs: bigint
}

export type StopState =
  /** Signal-delivery stop (event 0), a PTRACE_EVENT_* stop (event = its number; PTRACE_INTERRUPT gives STOP = 128 with SIGTRAP), or a group-stop (event 128, the stopping signal, groupStop true). */
  | { kind: 'stopped'; signal: number; event: number; groupStop: boolean }
  /** Syscall-enter or -exit stop (PTRACE_O_TRACESYSGOOD); signal is SIGTRAP (5). */
  | { kind: 'syscall'; signal: number }
  | { kind: 'exited'; code: number }
  | { kind: 'killed'; signal: number }

export interface RseqConfig {
  ptr: bigint
  len: number
  sig: number
  flags: number
}

/** PTRACE_EVENT_* values as reported in StopState.event. */
export declare const PTRACE_EVENT: Readonly<{ FORK: 1; VFORK: 2; CLONE: 3; EXEC: 4; VFORK_DONE: 5; EXIT: 6; SECCOMP: 7; STOP: 128 }>

export declare const ptrace: Readonly<{
  /** PTRACE_SEIZE; options TRACESYSGOOD always. exitKill adds PTRACE_O_EXITKILL (restore only: never for dump). traceClone adds TRACECLONE|TRACEFORK. */
  seize(tid: number, opts?: { exitKill?: boolean; traceClone?: boolean }): void
  /** PTRACE_INTERRUPT: the thread reports a { kind: 'stopped', event: 128 } stop (waitStop). */
  interrupt(tid: number): void
  /**
   * waitpid(tid, __WALL) bounded: throws code 'ETIMEDOUT' naming the tid after timeoutMs
   * (ECHILD when tid is neither a child nor a tracee of this thread). Polls with WNOHANG:
   * yields the CPU for the first 0.3 ms, then sleeps 50 us .. 2 ms (exponential backoff).
   */
  waitStop(tid: number, timeoutMs: number): StopState
  getRegs(tid: number): Regs
  /** Every field required; numbers are accepted too, and negative bigints/numbers are two's-complemented (orig_rax: -1n). */
  setRegs(tid: number, regs: Regs): void
  /** PTRACE_GETREGSET NT_X86_XSTATE, exact size the kernel returns. */
  getXstate(tid: number): Buffer
  setXstate(tid: number, xstate: Uint8Array): void
  getSigmask(tid: number): bigint
  setSigmask(tid: number, mask: bigint): void
  /** PTRACE_GET_RSEQ_CONFIGURATION (0x420f); null when no rseq is registered. */
  getRseqConfig(tid: number): RseqConfig | null
  cont(tid: number, signal?: number): void
  /** PTRACE_SYSCALL */
  syscall(tid: number, signal?: number): void
  /** The signal is delivered only from a signal-delivery or syscall stop (the kernel ignores it at PTRACE_EVENT stops: use tgkill after detaching then). */
  detach(tid: number, signal?: number): void
}>

export interface SyscallInjectorOptions {
  /** Bound for one call (entry + exit, signals re-runs included); default 5000. On timeout the
   * syscall is interrupted (PTRACE_INTERRUPT), the call throws ETIMEDOUT and the injector stays usable. */
  timeoutMs?: number
}

/**
 * Runs syscalls inside a ptrace-stopped thread. Construction saves its registers; each call
 * sets rip = gadget (address of a `syscall` instruction, bytes 0f 05, in an executable mapping
 * of the target), rax = nr, rdi rsi rdx r10 r8 r9 = args, orig_rax = -1 (see KERNEL-NOTES),
 * PTRACE_SYSCALL to the syscall-enter stop, PTRACE_SYSCALL to the exit stop, reads rax. It
 * never executes past the syscall instruction, so nothing in the target's memory is written.
 * A signal that arrives meanwhile is remembered in pendingSignals (to re-deliver on detach)
 * and the call goes on; a syscall a signal interrupted (-ERESTART*) is run again.
 * restore() puts the saved registers back; the thread stays stopped. If the thread had been
 * stopped inside a syscall that must restart (saved rax = -512/-513/-514/-516), restore()
 * parks it in a PTRACE_EVENT_STOP again (one more round trip), so the kernel's own restart
 * logic runs when it is resumed: a frozen clock_nanosleep goes on sleeping to its original
 * deadline, not failing. Exception: after an injected nanosleep, clock_nanosleep, futex,
 * poll, ppoll, restart_syscall or rt_sigreturn the thread's restart block may be ours, so a
 * saved -516 (ERESTART_RESTARTBLOCK) is turned into a re-run of the frozen syscall with its
 * own arguments instead (rip -= 2, rax = orig_rax; a relative sleep starts over): getRegs
 * then differs from the saved registers in rip and rax.
 * The gadget is checked (EINVAL when the 2 bytes there are not 0f 05); a thread that is not
 * ptrace-stopped by this thread is ESRCH.
 */
export declare class SyscallInjector {
  constructor(tid: number, gadget: number, opts?: SyscallInjectorOptions)
  readonly tid: number
  /** Raw return value: negative errno is returned, not thrown (-2n = ENOENT). Arguments: bigints or safe integers (negative ones two's-complemented). */
  call(nr: number, args?: Array<bigint | number>): bigint
  /**
   * Runs many syscalls in one trip: `calls` holds entries of 8 words `[nr, a1..a6, goOn]`;
   * they run in order through SYSCALL_RUNNER_CODE, which must be at `runner` in the target
   * (checked), with the list written at `list` (8 words an entry plus 8, in memory the
   * target can write). Returns the raw return values of the calls that ran: a call that
   * fails (-4095..-1) without goOn is the last. For calls that neither block nor fork.
   */
  runList(runner: number, list: number, calls: BigUint64Array): BigInt64Array
  /** Number of calls that completed. */
  readonly count: number
  readonly pendingSignals: number[]
  restore(): void
}

/** x86-64 code for SyscallInjector.runList: write it into executable memory of the target. */
export declare const SYSCALL_RUNNER_CODE: Uint8Array

/** Finds a `syscall` instruction (0f 05) in [start, start+len) of pid's memory; null when none. Reads with process_vm_readv, or /proc/PID/mem for unreadable (execute-only) pages. */
export declare function findSyscallGadget(pid: number, start: number, len: number): number | null

/** process_vm_readv, batched up to IOV_MAX (1024) iovecs a call: ranges = flat [remoteAddr, len, ...] (Float64Array, or BigUint64Array); bytes land in `into` back to back. Returns bytes read; a short read throws code EFAULT naming the address (`address`). RangeError when `into` is smaller than the ranges. */
export declare function processVmRead(pid: number, ranges: Float64Array | BigUint64Array, into: Uint8Array): number
export declare function processVmWrite(pid: number, ranges: Float64Array | BigUint64Array, from: Uint8Array): number

/** pidfd_open(pid, 0): an O_CLOEXEC pidfd. */
export declare function pidfdOpen(pid: number): number
/** pidfd_getfd(pidfd, targetFd, 0): this process's own (FD_CLOEXEC) copy of the target's fd. */
export declare function pidfdGetfd(pidfd: number, targetFd: number): number
export declare function closeFd(fd: number): void

/**
 * Unix sockets with SCM_RIGHTS, for the lazy-pages work-dir control socket. They are
 * SOCK_SEQPACKET (connection-oriented like stream sockets, but each send is exactly one
 * message and each recv returns one whole message with the fds sent with it). Payloads must
 * not be empty (0 bytes reads as "peer closed"); at most 253 fds a message. Received fds are
 * O_CLOEXEC and owned by the caller (closeFd them).
 */
export declare const unixSocket: Readonly<{
  /** Connects, retrying while the path does not exist or nobody accepts yet (ENOENT, ECONNREFUSED) until timeoutMs (then ETIMEDOUT). Blocks the JS thread meanwhile. */
  connect(path: string, timeoutMs: number): number
  /** One message; waits up to 10 s for room in the peer's queue (ETIMEDOUT). EPIPE when the peer is gone. */
  send(fd: number, payload: Uint8Array, fds?: number[]): void
  /** One message; null when the peer closed. Bounded by timeoutMs (ETIMEDOUT). A message longer than maxBytes throws EMSGSIZE (and is dropped). */
  recv(fd: number, maxBytes: number, timeoutMs: number): { payload: Buffer; fds: number[] } | null
}>

export type UnixSocketMessage = { connFd: number; payload: Buffer; fds: number[] } | { connFd: number; closed: true }

/**
 * A listening unix socket served by a native thread: every message (payload + SCM_RIGHTS fds)
 * from any connection reaches onMessage on the JS thread (threadsafe function); replies go
 * back with unixSocket.send(connFd, ...). The received fds belong to onMessage (closeFd them).
 * After `{ connFd, closed: true }` returns, connFd is closed and must not be used again
 * (closed events come only for connections that sent at least one message).
 * A stale socket file at `path` (nobody listening) is replaced; a live server or a non-socket
 * file there is EADDRINUSE. While open, the server keeps Node alive (like net.Server).
 * close() stops the thread, closes everything, unlinks the path, and leaves nothing keeping
 * Node alive; messages received before it are still delivered first.
 */
export declare class UnixSocketServer {
  constructor(path: string, onMessage: (msg: UnixSocketMessage) => void)
  readonly path: string
  close(): Promise<void>
}

/** PAGEMAP_SCAN page categories (PAGE_IS_*) as bits, for pagemapScanPid. */
export declare const PAGE_IS: Readonly<{
  WPALLOWED: 1; WRITTEN: 2; FILE: 4; PRESENT: 8; SWAPPED: 16; PFNZERO: 32; HUGE: 64; SOFT_DIRTY: 128; GUARD: 256
}>

/**
 * PAGEMAP_SCAN on /proc/PID/pagemap over each of `ranges` (flat [start, end, ...], page
 * aligned): the runs of pages having at least one category of `anyof`, each with the
 * categories of `report` it has, as a flat [start, end, categories, ...]. No region spans two
 * ranges (pass one range per VMA). PAGE_IS.FILE is set for pages that are not anonymous
 * (page cache, shmem), PAGE_IS.PFNZERO for the shared zero page (no privilege needed).
 * Throws a SystemError with `pid` (ESRCH, EACCES, ENOTTY before Linux 6.7).
 */
export declare function pagemapScanPid(pid: number, ranges: Float64Array, anyof: number, report: number): Float64Array

/** get_robust_list(tid), from outside the thread (the caller must be allowed to ptrace it). */
export declare function getRobustList(tid: number): { head: bigint; len: bigint }

/**
 * A perf counter of thread `tid`'s returns from the syscalls `nrs` (raw_syscalls:sys_exit,
 * filtered on the number), counting from when this returns; an fd to closeFd. Needs tracefs
 * (ENOENT without it) and the right to trace the thread.
 */
export declare function syscallExitCounter(tid: number, nrs: number[]): number
/** What a syscallExitCounter has counted so far (also after its thread exited). */
export declare function readSyscallCounter(fd: number): number

/** What a PageStream's thread reports, on the JS thread. */
export type PageStreamEvent =
  /**
   * A binary frame the thread did not serve (hello, complete, a request before serve()).
   * The thread parses no further frame until resume().
   */
  | { type: 'message'; data: Uint8Array }
  /** A request outside the served ranges (or too long) was answered with an error frame. */
  | { type: 'refused'; pid: number; address: number; pages: number }
  /** Reading a request's pages failed; the peer got an error frame with `error`. */
  | { type: 'read-failed'; pid: number; address: number; error: string }
  /** The connection is over and the thread has ended (the last event). No error: a clean close. */
  | { type: 'closed'; error?: string }

/**
 * A page-server WebSocket connection whose `request`s are served on a native thread:
 * process_vm_readv of the pages into a page-aligned buffer just behind the frame headers,
 * then one send of the whole `pages` frame. The thread blocks in send while the peer reads
 * slowly. It answers pings and close frames itself, and passes every other binary frame to
 * `onEvent` as a message; JS answers with send(), whose frames go out between replies.
 *
 * `fd` is a connected TCP socket after the WebSocket handshake; the stream makes its own
 * duplicate (and makes the open file blocking), so the caller must stop reading `fd` and
 * close it. `head`: bytes already read from it. `greeting`: bytes written first, as they
 * are (the handshake's 101 response). `bufferBytes`: the reply size expected, its buffer
 * faulted in now (a larger request gets a larger buffer).
 */
export declare class PageStream {
  constructor(fd: number, head: Uint8Array, greeting: Uint8Array, bufferBytes: number, onEvent: (e: PageStreamEvent) => void)
  /** Serves requests inside ranges (flat [pid, start, end, ...]) of at most maxPages from now on. */
  serve(ranges: Float64Array, maxPages: number): void
  /** JS is done with the last message event: the thread reads on. */
  resume(): void
  /** Queues a binary frame; onSent runs once it has been handed to the socket. */
  send(payload: Uint8Array, onSent?: () => void): void
  /** A close frame once the queued frames are out, then the end. */
  close(code: number, reason: string): void
  /** Ends the connection now. */
  terminate(): void
  readonly closed: boolean
  readonly stats: { requests: number; pagesSent: number; bytesSent: number }
}
