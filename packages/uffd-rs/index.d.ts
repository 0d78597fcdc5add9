// @lazymig/uffd-rs: userfaultfd, the fault loop and write-protect tracking for Node.
//
// Addresses and lengths are JS numbers: non-negative integers below 2^53 (TypeError if not
// a number, RangeError if not such an integer). Ranges given to the kernel must be
// page-aligned; an unaligned one fails like the kernel would (an Error with code 'EINVAL').
//
// Errors from the kernel are `SystemError`s (below). Outcomes that are part of normal
// lazy-migration life (page already there, mapping changing, process gone) are returned,
// not thrown.

/** The system page size in bytes. */
export declare const PAGE_SIZE: number

/** UFFDIO_API feature bits, by name (UFFD_FEATURE_*). */
export type UffdFeature =
  | 'pagefaultFlagWp'
  | 'eventFork'
  | 'eventRemap'
  | 'eventRemove'
  | 'missingHugetlbfs'
  | 'missingShmem'
  | 'eventUnmap'
  | 'sigbus'
  | 'threadId'
  | 'minorHugetlbfs'
  | 'minorShmem'
  | 'exactAddress'
  | 'wpHugetlbfsShmem'
  | 'wpUnpopulated'
  | 'poison'
  | 'wpAsync'
  | 'move'

/** ioctls the kernel reports as available (_UFFDIO_*). */
export type UffdIoctl = 'register' | 'unregister' | 'wake' | 'copy' | 'zeropage' | 'move' | 'writeprotect' | 'continue' | 'poison' | 'api'

/** PAGEMAP_SCAN page categories (PAGE_IS_*). */
export type PageCategory = 'wpAllowed' | 'written' | 'file' | 'present' | 'swapped' | 'pfnZero' | 'huge' | 'softDirty' | 'guard'

/** An Error from a failed syscall or ioctl, shaped like Node's system errors. */
export interface SystemError extends Error {
  /** errno name, e.g. 'EBADF', 'EINVAL'. */
  code: string
  /** The (positive) Linux errno value. */
  errno: number
  /** The operation: 'UFFDIO_COPY', 'UFFDIO_REGISTER', 'userfaultfd', 'munmap', ... */
  syscall: string
  /** The address the operation was working on, when there was one. */
  address?: number
}

/**
 * - ok: everything was installed
 * - exists (EEXIST): a page of the range was already mapped; `bytes` were installed before it
 * - again (EAGAIN): the mapping is changing (a non-cooperative event must be read first): retry
 * - gone (ESRCH): the whole process is gone
 * - unmapped (ENOENT): no range registered with this uffd is there any more (unmapped, or
 *   moved by mremap), though the process lives on
 */
export type OutcomeStatus = 'ok' | 'exists' | 'again' | 'gone' | 'unmapped'

/** Index = the codes in BatchResult.statuses. */
export declare const OUTCOME_STATUSES: readonly ['ok', 'exists', 'again', 'gone', 'unmapped']

export interface Outcome {
  status: OutcomeStatus
  /** Bytes installed (partial progress is reported, not lost). */
  bytes: number
}

export interface HandshakeResult {
  /** Every feature this kernel supports (UFFDIO_API reports all of them). */
  features: UffdFeature[]
  /** The features requested, now enabled on this uffd. */
  enabled: UffdFeature[]
  ioctls: UffdIoctl[]
}

export interface RegisterMode {
  missing?: boolean
  wp?: boolean
  minor?: boolean
}

export interface FillOptions {
  /** Install the pages write-protected (UFFDIO_COPY_MODE_WP). copy/installBatch only. */
  wp?: boolean
  /** Do not wake the faulting threads (wake them later with wake()). */
  dontWake?: boolean
}

/** kind values of installBatch ranges. */
export declare const RangeKind: { readonly copy: 0; readonly zero: 1 }

export interface BatchResult {
  /** Ranges fully installed. */
  ok: number
  /** Ranges that met already-present pages (those were skipped, the rest installed). */
  exists: number
  /** Ranges stopped by EAGAIN (retry them). */
  again: number
  /** Ranges whose process is gone. */
  gone: number
  /** Ranges no longer mapped (or registered) there: unmapped or moved. */
  unmapped: number
  /** Bytes installed over all ranges. */
  bytes: number
  /** Pages skipped because they were already present. */
  pagesExisting: number
  /** Per range, an index into OUTCOME_STATUSES. */
  statuses: Uint8Array
}

export declare class Userfaultfd {
  private constructor()
  /** userfaultfd(2) with UFFD_USER_MODE_ONLY | O_CLOEXEC (falls back to /dev/userfaultfd). */
  static open(opts?: { /** default true */ nonBlocking?: boolean }): Userfaultfd
  /** Wraps an fd obtained elsewhere (pidfd_getfd, a fork event's childFd). It is now owned by this object. */
  static adopt(fd: number): Userfaultfd
  /** The fd number, or -1 once closed (operations then fail with EBADF). */
  readonly fd: number
  readonly closed: boolean
  /**
   * UFFDIO_API. Must come first and succeeds once per uffd. Requesting a feature this
   * kernel lacks throws a SystemError (EINVAL) naming it.
   * With eventFork/Remap/Remove/Unmap enabled, the thread causing the event (fork, mremap,
   * madvise, munmap) blocks until someone reads it: keep a 'thread'-mode FaultLoop on the
   * uffd (or close it) before doing such things from the JS thread (with an 'event-loop'
   * FaultLoop, do them from another thread: the JS thread is the reader).
   */
  handshake(features?: UffdFeature[]): HandshakeResult
  /** UFFDIO_REGISTER; returns the ioctls available on the range. */
  register(start: number, len: number, mode: RegisterMode): { ioctls: UffdIoctl[] }
  unregister(start: number, len: number): void
  /**
   * UFFDIO_COPY from `src` (a whole number of pages, RangeError otherwise), read in place:
   * no copy on the JS side. Wakes the faulting threads unless `dontWake`.
   */
  copy(dst: number, src: Buffer | Uint8Array, opts?: FillOptions): Outcome
  /** UFFDIO_ZEROPAGE. */
  zeropage(dst: number, len: number, opts?: Omit<FillOptions, 'wp'>): Outcome
  /** UFFDIO_WAKE. */
  wake(start: number, len: number): void
  /**
   * Installs many ranges in one call: COPY (from `data`) or ZEROPAGE, without waking,
   * then one WAKE per contiguous span. `ranges` is flat: [dst, dataOffset, len, kind]...
   * (kind: RangeKind; dataOffset is ignored for zero ranges). Everything is validated
   * before anything is installed (RangeError for ranges outside `data`).
   */
  installBatch(data: Buffer | Uint8Array, ranges: Float64Array | BigUint64Array, opts?: FillOptions): BatchResult
  /** UFFDIO_WRITEPROTECT: protect, or unprotect (waking WP-faulting threads unless dontWake). */
  writeProtect(start: number, len: number, protect: boolean, opts?: { dontWake?: boolean }): void
  /**
   * Detaches from any FaultLoop, then closes. Idempotent. Note: closing a uffd whose
   * registered pages are not all installed turns the missing ones into zero pages.
   */
  close(): void
}

export interface Fault {
  /** The uffd it arrived on. */
  fd: number
  /** Page-aligned faulting address. */
  address: number
  write: boolean
  /** A write-protect fault (resolve with writeProtect(..., false)). */
  wp: boolean
  minor: boolean
  /** Faulting thread id, when the uffd enabled 'threadId' (0 otherwise). */
  tid: number
}

export type UffdEvent =
  /** UFFD_EVENT_FORK: the child's uffd, already installed in this process as childFd. */
  | { kind: 'fork'; fd: number; childFd: number }
  | { kind: 'remap'; fd: number; from: number; to: number; len: number }
  | { kind: 'remove'; fd: number; start: number; end: number }
  | { kind: 'unmap'; fd: number; start: number; end: number }
  /** The loop stopped watching `fd` after this error. */
  | { kind: 'error'; fd: number; code: string; message: string }

export interface FaultBatch {
  /** Faults in arrival order; several faults on the same page are coalesced into one. */
  faults: Fault[]
  /**
   * Non-cooperative events in arrival order. Handle them before the faults of the same
   * batch (the kernel itself reports pending faults before pending events).
   */
  events: UffdEvent[]
}

/**
 * Who reads the uffds:
 * - 'thread' (default): a native thread epolls them and hands batches to the JS thread
 *   (one thread-safe-function call in flight; faults arriving meanwhile are coalesced
 *   into the next batch).
 * - 'event-loop': Node's own event loop polls them (a libuv `uv_poll_t` per uffd); the JS
 *   thread reads them when readable and calls onBatch synchronously, in the same tick.
 */
export type FaultLoopMode = 'thread' | 'event-loop'

export interface FaultLoopOptions {
  /** Default 'thread'. See FaultLoop for what each mode guarantees. */
  mode?: FaultLoopMode
  /** Pin the loop thread to this CPU ('thread' mode only: a RangeError in 'event-loop' mode, pin the JS thread instead). */
  cpu?: number
}

/**
 * Reads the added uffds and delivers what it reads to `onBatch` on the JS thread, one
 * batch at a time. A running loop keeps Node alive (see unref()); a stopped one does not.
 * An exception thrown by onBatch is an uncaught exception (as from any event handler).
 *
 * Ordering of non-cooperative events (remove/unmap/remap) against page installs — reading
 * an event is what lets the target's madvise/munmap/mremap proceed:
 *
 * - 'event-loop': the read happens on the JS thread, immediately before onBatch receives
 *   the event, with no other JS in between. So every copy/zeropage/installBatch made by
 *   any JS code is ordered with it: one made before the read returns status 'again' (the
 *   kernel refuses installs while an event is unread: retry later, by which time onBatch
 *   has told you about the event); one made after the read runs after onBatch has seen
 *   the event. A handler that records removed/unmapped/moved ranges in onBatch therefore
 *   never installs stale page data (e.g. a network reply for a page the target has just
 *   MADV_DONTNEEDed and expects to read as zeros). Lower latency too: no thread hop.
 *   Caveats: the JS thread must never itself cause an event on a watched uffd (madvise,
 *   munmap, mremap or fork of registered memory *of this process* with the matching event
 *   feature): the kernel would block it until the event is read, by itself — a deadlock.
 *   Faults wait while JS runs other synchronous code (as in 'thread' mode, since JS
 *   installs the pages anyway). A uffd can be in only one event-loop FaultLoop per thread
 *   (EEXIST). Needs Node's libuv (the node binary exports it).
 * - 'thread': the loop thread reads (and so acknowledges) events before JS hears of them:
 *   between the read and onBatch, the target may already have zapped a range, and an
 *   install JS makes meanwhile (from data requested earlier) succeeds and puts stale
 *   data there. Use it only when the uffds have no remove/unmap/remap events enabled, or
 *   when installs are made only from within onBatch after handling the batch's events.
 *   Its advantages: the JS thread may itself cause events (the loop thread reads them),
 *   the loop can be pinned to a CPU, and reading goes on while JS is busy (up to 65536
 *   faults are buffered).
 */
export declare class FaultLoop {
  constructor(onBatch: (batch: FaultBatch) => void, opts?: FaultLoopOptions)
  readonly mode: FaultLoopMode
  /** Watches a uffd (it must have done its handshake). The fd is switched to O_NONBLOCK. */
  add(uffd: Userfaultfd | number): void
  /** Stops watching; when it returns, the loop no longer reads that fd. */
  remove(fd: number | Userfaultfd): void
  unref(): this
  ref(): this
  /**
   * Stops without waiting for outstanding faults (they stay pending in the kernel, on
   * uffds the caller still owns). No onBatch call happens after stop() was called (also
   * when called from within onBatch). Resolves once the loop thread has exited ('thread')
   * or at once ('event-loop': the poll handles are closed synchronously). Idempotent.
   */
  stop(): Promise<void>
  /**
   * Installs on native threads ('event-loop' mode only, else an Error), with the loop's
   * guarantee kept: a job never installs a page after the loop has read an event about
   * that page (a REMOVE or UNMAP of it; any REMAP or FORK) that JS had not seen when
   * submitting the job. A REMOVE or UNMAP of other pages leaves it alone. The loop's read
   * of a uffd waits for an install slice in progress (64 KiB) to end.
   */
  backgroundInstaller(onDone: BackgroundDone, opts?: { /** worker threads, default 1 */ threads?: number }): BackgroundInstaller
  /**
   * Where a PageReceiver may install a reply's pages: from `dst` on in the uffd's process
   * ('event-loop' mode only, else an Error). A page goes in only if this loop has read no
   * event about it (a REMOVE or UNMAP of it; any REMAP or FORK) since now: take the target
   * when deciding what to ask for.
   */
  installTarget(uffd: Userfaultfd | number, dst: number): InstallTarget
  /**
   * Faults onBatch never saw: a PageReceiver with a request into the faulting uffd took
   * them as the loop read them ('event-loop' mode; zeros otherwise). A missing-page fault on
   * a page of a reply read whole gets up to 64 pages from it installed at once, or, if the
   * reply's own install has put that page in already, waits for that install's next wake
   * (a background reply's pages are woken every 128 KiB); one on a request whose reply is
   * being read or comes soon (a fault lane's, or a background one with at most two replies
   * before it) waits for it, and its thread is woken to fault again (for onBatch) if that
   * reply ends without its page. A page an event touched since its request is onBatch's.
   * Counts are totals; `serviceUs` (from the read of the fault until its page was in and
   * woken) are handed over once each.
   */
  nearFaults(): NearFaults
  /**
   * The page of the latest missing-page fault this loop read from `uffd`, onBatch's or one
   * a PageReceiver took (0: none yet; always 0 in 'thread' mode). What a fault handler that
   * follows the faulting threads (a background transfer going on from their latest fault)
   * needs, now that it does not see every fault.
   */
  lastFault(uffd: Userfaultfd | number): number
}

/** See FaultLoop.nearFaults. */
export interface NearFaults {
  /** Faults that waited for a reply on its way. */
  waited: number
  /** Faults whose window was installed at once from a reply read whole. */
  installed: number
  /** Pages those windows installed, the faulting pages included. */
  pages: number
  /** Service times (µs) of the `installed` faults since the last call. */
  serviceUs: Float64Array
  /** Service times (µs) of the `waited` faults since the last call. */
  waitedUs: Float64Array
}

/** See FaultLoop.installTarget. Opaque. */
export declare class InstallTarget {
  private constructor()
}

/** What a PageReceiver's thread reports, on the JS thread. */
export type PageReceiverEvent =
  /** The reply to request `id` is dealt with: `bytes` from its start are in; `end` as for BackgroundInstaller. */
  | { type: 'installed'; id: number; bytes: number; end: BackgroundEnd }
  /** The reply to request `id` does not match it (pid, address, length): nothing was installed. */
  | { type: 'bad-reply'; id: number; error: string }
  /** Any other binary frame (error, bye, reject), for the protocol's decoder. */
  | { type: 'message'; data: Uint8Array }
  /** The connection is over and the thread has ended (the last event). No error: a clean close. */
  | { type: 'closed'; error?: string }

/**
 * A page client's connection whose replies are received and installed on native threads:
 * on a 'background' lane two threads (deferring to the JS thread) take turns reading a
 * whole reply into their own page-aligned buffer, and each installs the reply it read with
 * UFFDIO_COPY (waking waiting threads) while the other reads the next; on a 'fault' lane one
 * thread at the JS thread's priority reads and installs each reply. Installs go in 64 KiB
 * slices ordered with the FaultLoop's reads as BackgroundInstaller's are. JS hears once per
 * reply. The threads answer pings and close frames themselves.
 *
 * `fd` is a connected TCP socket after the WebSocket handshake and the protocol's hello;
 * the receiver makes its own duplicate (and makes the open file blocking), so the caller
 * must stop reading `fd` and close it. `head`: bytes already read from it. `maxBytes`: the
 * largest reply's page data (its buffer is faulted in now; a longer reply ends the connection).
 */
export declare class PageReceiver {
  constructor(fd: number, head: Uint8Array, maxBytes: number, onEvent: (e: PageReceiverEvent) => void, lane?: 'background' | 'fault')
  /**
   * Registers request `id` (its reply's pages go to `target`, checked against pid, address
   * and pages) and sends `payload`, the encoded request, as a binary frame. Throws (errno
   * and operation) if the frame cannot be written; the request stays registered.
   */
  request(id: number, pid: number, address: number, pages: number, target: InstallTarget, payload: Uint8Array): void
  /** Request `id` is given up: a late reply is read and dropped. */
  cancel(id: number): void
  /** Bytes [offset, offset+len) (whole pages) of request `id`'s pages are in already: its reply passes over them. */
  present(id: number, offset: number, len: number): void
  /**
   * Installs bytes [offset, offset+len) (whole pages) of request `id`'s pages now, on the
   * calling thread, from the buffer its reply was read into (for a fault on a page that has
   * arrived and waits for the installer): 'installed'; 'absent' when the reply has not been
   * read whole (or is wholly dealt with); else how it stopped, as for BackgroundInstaller
   * (an event read since the request makes it 'stale').
   */
  installNow(id: number, offset: number, len: number): 'installed' | 'absent' | BackgroundEnd
  /** Sends a binary frame. */
  send(payload: Uint8Array): void
  ping(): void
  /**
   * true: frames written from now on stay in the socket (TCP_CORK); false: they leave,
   * together. For a burst of requests: over loopback each send costs the sender the
   * receiving side's processing.
   */
  hold(on: boolean): void
  /** Sends a close frame; the connection ends when the server answers, or after 1 s. */
  close(code?: number): void
  /** Ends the connection now. */
  terminate(): void
  readonly closed: boolean
  readonly state: { silentMs: number; replies: number; pagesInstalled: number; bytesReceived: number }
}

/**
 * How a background job ended:
 * - 'done': every page of it is in (installed by the job, or already present);
 * - 'stale': an event about the page at `bytes` was read since the job was submitted (or
 *   the uffd left the loop, or the installer stopped), or the range was unmapped or moved
 *   (an event about it is read or on its way): pages past `bytes` were not installed;
 * - 'again': the kernel refused (an event waits to be read): pages past `bytes` were not installed;
 * - 'gone': the process is gone;
 * - 'failed': another error.
 * `bytes`: from the start of the job, how much is in. Called on the JS thread.
 */
export type BackgroundEnd = 'done' | 'stale' | 'again' | 'gone' | 'failed'
export type BackgroundDone = (id: number, bytes: number, end: BackgroundEnd) => void

export declare class BackgroundInstaller {
  private constructor()
  /**
   * Queues the install of `data` (whole pages) at `dst` in the uffd's process; threads
   * waiting for these pages are woken. `id`: a non-negative integer naming the job.
   * `data` is kept alive until onDone(id) and must not be modified meanwhile. Pages
   * already present are skipped.
   */
  submit(id: number, uffd: Userfaultfd | number, dst: number, data: Buffer | Uint8Array): void
  /**
   * Bytes [offset, offset+len) (whole pages) of job `id`'s data are in the process already:
   * the caller installed them itself (a fault on a page the job had not reached). The job
   * passes over them, and reports them in like its other pages, instead of finding each
   * present page with a UFFDIO_COPY that allocates and fills a page before it fails. Name
   * only pages that are truly present. May come before or after submit(id).
   */
  present(id: number, offset: number, len: number): void
  /**
   * Stops the threads (a job in progress ends 'stale' after its current slice; its onDone
   * still comes); jobs not started are dropped without onDone. Idempotent.
   */
  stop(): void
}

export interface ProbeCheck {
  ok: boolean
  /** errno name when not ok. */
  code?: string
  message?: string
}

export interface KernelProbe {
  kernel: string
  pageSize: number
  userfaultfd: {
    /** userfaultfd(2) with UFFD_USER_MODE_ONLY */
    syscall: ProbeCheck
    /** /dev/userfaultfd + USERFAULTFD_IOC_NEW */
    device: ProbeCheck
    /** vm.unprivileged_userfaultfd, null when unreadable */
    unprivilegedSysctl: number | null
    api: ProbeCheck
    features: UffdFeature[]
    /** Feature bits this package does not know by name. */
    unknownFeatureBits: number
    ioctls: UffdIoctl[]
    /** ioctls available on anonymous memory registered missing+wp. */
    anonRangeIoctls: UffdIoctl[]
    /** WP_ASYNC + WP_UNPOPULATED write-tracking registration works. */
    wpAsync: ProbeCheck
  }
  /** PAGEMAP_SCAN ioctl on /proc/self/pagemap (Linux 6.7+). */
  pagemapScan: ProbeCheck
  pidfdOpen: ProbeCheck
  /** pidfd_getfd on this process. */
  pidfdGetfd: ProbeCheck
  processVmReadv: ProbeCheck
  processVmWritev: ProbeCheck
  /** kernel.yama.ptrace_scope, null when Yama is absent. */
  ptraceScope: number | null
}

/** Finds out, by syscalls, what this kernel supports. */
export declare function probe(): KernelProbe

export type PagemapScanOptions = {
  /** true: only pages in this category; false: only pages not in it. */
  [C in PageCategory]?: boolean
} & {
  /** Write-protect the matched pages again in the same walk (PM_SCAN_WP_MATCHING). */
  reprotect?: boolean
  /** Stop after this many pages. */
  maxPages?: number
}

export interface PageRegion {
  start: number
  /** Exclusive. */
  end: number
  categories: PageCategory[]
}

/**
 * PAGEMAP_SCAN over [start, start+len) of this process. For dirty tracking: a uffd with
 * ['pagefaultFlagWp', 'wpAsync', 'wpUnpopulated'], the range registered {wp: true} and
 * write-protected; then `pagemapScan(start, len, {written: true, reprotect: true})` lists
 * the pages written since the previous scan. Neighbouring pages with equal categories are
 * merged into one region.
 */
export declare function pagemapScan(start: number, len: number, opts?: PagemapScanOptions): PageRegion[]

/**
 * CRC32C (Castagnoli) of `data`, continuing `seed` (a finished CRC32C; 0, the default, starts
 * a new one): crc32c(b, crc32c(a)) === crc32c(a ++ b). SSE4.2 when the CPU has it.
 */
export declare function crc32c(data: Uint8Array, seed?: number): number
/**
 * How far into its page the first byte of `data` lies (0 <= result < PAGE_SIZE): the address
 * modulo the page size, for placing data where the kernel copies it fastest.
 */
export declare function pageOffset(data: Uint8Array): number
/**
 * The CRC32C of each `pageSize`-byte page of `data` into out[outOffset ..], in one call.
 * Returns crc32c(data, seed) (computed from the page CRCs, without a second pass).
 * data.length must be a multiple of pageSize; out must not overlap data.
 */
export declare function crc32cPages(data: Uint8Array, pageSize: number, out: Uint32Array, outOffset?: number, seed?: number): number

export interface TouchOptions {
  /** Addresses to touch (8-byte aligned), in order... */
  addresses?: number[] | Float64Array | BigUint64Array
  /** ...or `count` addresses from `start`, `stride` bytes apart (default PAGE_SIZE). */
  start?: number
  count?: number
  stride?: number
  /** Write `value` (u64) before reading back. Default: read only. */
  write?: boolean
  value?: number | bigint
  /** Pin the touching thread to this CPU. */
  cpu?: number
}

export interface TouchResult {
  /** The first 8 bytes at each address (after the write when writing). */
  values: BigUint64Array
  /** Time each access took (including any fault it waited for), ns. */
  latencyNs: Float64Array
}

export interface BenchRustResult {
  latencyNs: Float64Array
  /** Pages whose content was not what the handler installed (0 when correct). */
  mismatches: number
  totalNs: number
}

/**
 * Sets the CPU affinity of the calling thread — the JS thread that makes the call, not the
 * whole process and not the native threads (fault loop, servers) already running:
 * sched_setaffinity(0, cpus). Threads the caller creates afterwards, and processes it
 * forks, inherit the set. With `tid`, that thread's instead (any thread the caller may
 * change: same user, or CAP_SYS_NICE; errors then name the tid). Throws RangeError for an empty list, a SystemError (EINVAL)
 * for a CPU number out of range or a set with no online CPU.
 */
export declare function setThreadAffinity(cpus: number[], tid?: number): void
/** The CPUs the calling thread (or thread `tid`) may run on (sched_getaffinity), ascending. */
export declare function getThreadAffinity(tid?: number): number[]

/**
 * setsockopt(fd, TCP_CONGESTION, name): the congestion control a TCP socket sends with
 * from now on. Throws a SysError: ENOENT for an algorithm the kernel does not have,
 * EPERM for one this process may not choose (net.ipv4.tcp_allowed_congestion_control).
 */
export declare function setTcpCongestion(fd: number, name: string): void

/** getsockopt(fd, TCP_CONGESTION): the congestion control a TCP socket sends with. */
export declare function tcpCongestion(fd: number): string

/** Helpers for tests and benchmarks, not for production use. */
export declare const testing: {
  /** mmap of private anonymous memory (MAP_NORESERVE); len: whole pages. */
  mapAnonymous(len: number): number
  unmap(addr: number, len: number): void
  madvise(addr: number, len: number, advice: 'dontneed' | 'remove' | 'willneed' | 'nohugepage'): void
  /** mremap(MREMAP_MAYMOVE, plus MREMAP_FIXED when newAddr is given); returns the new address. */
  mremap(addr: number, oldLen: number, newLen: number, newAddr?: number): number
  /**
   * Touches the addresses one by one on a new native thread (a fault blocks that thread,
   * not JS) and resolves when done. Addresses are checked to be mapped first (EFAULT).
   */
  touch(opts: TouchOptions): Promise<TouchResult>
  /** Reads on the JS thread: never on a page that can fault into a uffd (it would block JS). */
  readU64(addr: number): bigint
  writeU64(addr: number, value: number | bigint): void
  /** Fills [addr, addr+len) with a repeated u64. */
  fill(addr: number, len: number, pattern: number | bigint): void
  /** Alias of setThreadAffinity (the calling thread). */
  setAffinity(cpus: number[]): void
  /** Alias of getThreadAffinity (the calling thread). */
  getAffinity(): number[]
  /**
   * The latency floor: a fault handler in Rust alone serving `pages` single-page faults
   * touched one at a time by a native thread.
   */
  benchRustHandler(opts: { pages?: number; handlerCpu?: number; toucherCpu?: number }): Promise<BenchRustResult>
  /**
   * A worker takes ~20 µs slices under a background-install gate back to back while the
   * calling thread takes the gate exclusively `rounds` times (as a FaultLoop reading its
   * uffd does): the most slices the worker began while the caller waited for the gate.
   */
  gateTurns(rounds: number): number
  /**
   * madvise / munmap / mremap done by a new native thread, resolved when the call returns.
   * With uffd events enabled the calling thread blocks until the event is read, which in
   * 'event-loop' mode is done by the JS thread: so there, use these, not the sync ones.
   */
  madviseOnThread(addr: number, len: number, advice: 'dontneed' | 'remove' | 'willneed' | 'nohugepage'): Promise<void>
  unmapOnThread(addr: number, len: number): Promise<void>
  mremapOnThread(addr: number, oldLen: number, newLen: number, newAddr?: number): Promise<number>
  /**
   * Starts a fork-test target: a child process T that makes its own uffd with 'eventFork',
   * maps `pages` (default 4, >= 2) pages registered missing and sends the uffd here (as
   * `uffd`, already handshaken, owned by the caller: wrap it with Userfaultfd.adopt). On
   * `go()`, T forks G (the fork event arrives on `uffd`, with G's uffd as childFd; T's fork
   * waits until it is read). G reads the first u64 of every page, reports and exits; then T
   * reads page 1 itself, reports and exits. The registered memory is T's, so this
   * process's own forks (child_process) are unaffected. Killed after `timeoutMs` (10 s).
   */
  forkTarget(opts?: { pages?: number; timeoutMs?: number }): ForkTarget
}

export interface ForkTarget {
  pid: number
  uffd: number
  /** Address of the registered pages in T (and G). */
  start: number
  go(): void
  done: Promise<ForkTargetResult>
}

export interface ForkTargetResult {
  /** What G read at the start of each page (fewer if it was killed). */
  childValues: BigUint64Array
  /** G's wait status as T saw it (0 = exited with 0). */
  childStatus: bigint | null
  /** What T read at page 1 after G had exited. */
  targetValue: bigint | null
  /** T's exit status (10.. = a setup step failed, see testing.rs), or null if killed. */
  exitCode: number | null
  signal: number | null
  timedOut: boolean
}

export * from './ptrace.js'
