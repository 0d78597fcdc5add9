/**
 * The image model: what a dump records and a restore needs. See docs/IMAGES.md for the on-disk
 * layout. Conventions:
 *  - register values, masks, rlimits, sigaction words, auxv: `bigint` (u64);
 *  - user-space addresses of VMAs, pagemap ranges and mm fields: `number` (x86-64 user addresses
 *    are below 2^47, exact in a double; validated on decode);
 *  - byte strings (xstate): `Buffer`.
 */

/** The format version written by this lazymig. Readers accept 1..FORMAT_VERSION. */
export const FORMAT_VERSION = 1;
/** The lazymig version recorded in new inventories. */
export const LAZYMIG_VERSION = '0.1.0';

/** One past the highest user address on x86-64 with 4-level paging (TASK_SIZE_MAX). */
export const TASK_SIZE = 0x7ffffffff000;
/** The legacy vsyscall page, the one mapping allowed above TASK_SIZE. */
export const VSYSCALL_START = 0xffffffffff600000;
export const VSYSCALL_END = 0xffffffffff601000;

export const FILE_NAMES = {
  inventory: 'inventory.img',
  core: (pid: number): string => `core-${pid}.img`,
  pagemap: (pid: number): string => `pagemap-${pid}.img`,
  pages: (pid: number): string => `pages-${pid}.img`,
} as const;

/* ------------------------------------------------------------------ inventory */

/**
 * What happens to the source tree once the dump is complete (CRIU's options):
 * 'kill' (default eager dump), 'leave-running', or 'leave-stopped' (a lazy dump: the tree stays
 * frozen and serves its pages until the destination has them all).
 */
export type DumpMode = 'kill' | 'leave-running' | 'leave-stopped';
export const DUMP_MODES = ['kill', 'leave-running', 'leave-stopped'] as const;

export type Arch = 'x86_64';

export interface PageServerAddress {
  address: string;
  port: number;
}

export interface TreeEntry {
  pid: number;
  /** parent pid (for the root: its parent on the source, not part of the images) */
  ppid: number;
  /** thread ids; the thread-group leader (tid === pid) is one of them */
  tids: number[];
  /** pids of the children that are part of the dump */
  children: number[];
}

export interface Inventory {
  formatVersion: number;
  lazymigVersion: string;
  /** uname -r of the source */
  kernelRelease: string;
  arch: Arch;
  pageSize: number;
  dumpMode: DumpMode;
  /** page contents were left on the source (post-copy); lazy VMAs are served by the page server */
  lazy: boolean;
  /** where the page server listens; required for a lazy dump, null otherwise */
  pageServer: PageServerAddress | null;
  /** dump time, ms since the epoch */
  createdAt: number;
  /** pid of the root of the tree */
  rootPid: number;
  /** every dumped process, parents before children, root first */
  tree: TreeEntry[];
}

/* ------------------------------------------------------------------ threads */

/** x86-64 `struct user_regs_struct`, in kernel order (27 × u64, 216 bytes). */
export interface UserRegs {
  r15: bigint; r14: bigint; r13: bigint; r12: bigint;
  rbp: bigint; rbx: bigint; r11: bigint; r10: bigint;
  r9: bigint; r8: bigint; rax: bigint; rcx: bigint;
  rdx: bigint; rsi: bigint; rdi: bigint; orig_rax: bigint;
  rip: bigint; cs: bigint; eflags: bigint; rsp: bigint;
  ss: bigint; fs_base: bigint; gs_base: bigint; ds: bigint;
  es: bigint; fs: bigint; gs: bigint;
}

export const USER_REGS_FIELDS = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi',
  'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const satisfies readonly (keyof UserRegs)[];

export const USER_REGS_SIZE = USER_REGS_FIELDS.length * 8; // 216

export interface RseqConfig {
  /** address of the registered struct rseq */
  ptr: bigint;
  len: number;
  sig: number;
  flags: number;
}

export interface RobustList {
  head: bigint;
  len: bigint;
}

export interface ThreadState {
  tid: number;
  regs: UserRegs;
  /** raw PTRACE_GETREGSET NT_X86_XSTATE bytes (XSAVE area) */
  xstate: Buffer;
  /** blocked signals, bit (n-1) for signal n */
  sigmask: bigint;
  /** null: no rseq registered */
  rseq: RseqConfig | null;
  /** set_tid_address / clear_child_tid (0: none) */
  clearChildTid: bigint;
  robustList: RobustList;
}

/* ------------------------------------------------------------------ memory */

export interface MmFields {
  startCode: number; endCode: number;
  startData: number; endData: number;
  startBrk: number; brk: number;
  startStack: number;
  argStart: number; argEnd: number;
  envStart: number; envEnd: number;
}

export const MM_FIELDS = [
  'startCode', 'endCode', 'startData', 'endData', 'startBrk', 'brk', 'startStack', 'argStart', 'argEnd',
  'envStart', 'envEnd',
] as const satisfies readonly (keyof MmFields)[];

/** Identity of a file as seen by stat(2) on the source, checked on restore. */
export interface FileId {
  /** st_dev (the kernel's new encoding, as stat returns it) */
  dev: bigint;
  ino: bigint;
  size: number;
  /** st_mtime in nanoseconds since the epoch */
  mtimeNs: bigint;
}

export interface FileRef {
  path: string;
  id: FileId;
}

export type VmaKind = 'anon' | 'file' | 'stack' | 'heap' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall';
export const VMA_KINDS = ['anon', 'file', 'stack', 'heap', 'vdso', 'vvar', 'vvar_vclock', 'vsyscall'] as const;

export const PROT_READ = 0x1;
export const PROT_WRITE = 0x2;
export const PROT_EXEC = 0x4;

/** mmap(2) flags as the kernel defines them; a VMA's `flags` is a combination of these. */
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x0100;
export const MAP_DENYWRITE = 0x0800;
export const MAP_EXECUTABLE = 0x1000;
export const MAP_LOCKED = 0x2000;
export const MAP_NORESERVE = 0x4000;
export const MAP_HUGETLB = 0x40000;
export const VMA_FLAGS_MASK =
  MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_DENYWRITE | MAP_EXECUTABLE | MAP_LOCKED |
  MAP_NORESERVE | MAP_HUGETLB;

/** madvise state of a VMA: bit (1 << MADV_x) for each advice in effect (as CRIU's `madv`). */
export const MADV_DONTFORK = 10;
export const MADV_MERGEABLE = 12;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;
export const MADV_DONTDUMP = 16;
export const MADV_WIPEONFORK = 18;
/** the MADV numbers a VMA's `madvise` bitmask may contain */
export const MADV_KNOWN = [MADV_DONTFORK, MADV_MERGEABLE, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTDUMP, MADV_WIPEONFORK] as const;

export interface Vma {
  start: number;
  end: number;
  /** PROT_* */
  prot: number;
  /** MAP_* : exactly one of MAP_SHARED / MAP_PRIVATE, MAP_ANONYMOUS for every kind but 'file' */
  flags: number;
  kind: VmaKind;
  /** the mapped file, only for kind 'file' */
  file: FileRef | null;
  /** file offset in bytes (page aligned); 0 for anonymous */
  pgoff: number;
  /** bitmask of (1 << MADV_*) */
  madvise: number;
}

/* ------------------------------------------------------------------ fds, signals, limits, creds */

export type FdKind =
  | 'file' | 'dir' | 'devnull' | 'chardev' | 'tty' | 'pipe' | 'fifo' | 'socket' | 'eventfd' | 'epoll'
  | 'signalfd' | 'timerfd' | 'inotify' | 'memfd' | 'other';
export const FD_KINDS = [
  'file', 'dir', 'devnull', 'chardev', 'tty', 'pipe', 'fifo', 'socket', 'eventfd', 'epoll', 'signalfd',
  'timerfd', 'inotify', 'memfd', 'other',
] as const;

export interface FdEntry {
  fd: number;
  kind: FdKind;
  /** readlink(/proc/pid/fd/N) */
  path: string;
  /** open flags from fdinfo (O_*, including O_CLOEXEC) */
  flags: number;
  /** file position (fdinfo pos) */
  offset: bigint;
  /** identity of the opened file, when it is one (file, dir, chardev, tty, fifo) */
  id: FileId | null;
}

export interface SigAction {
  /** sa_handler (0 = SIG_DFL, 1 = SIG_IGN) */
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}
export const NSIG = 64;

export type RlimitValue = bigint | 'unlimited';
export interface Rlimit {
  soft: RlimitValue;
  hard: RlimitValue;
}
/** RLIMIT_* in kernel order; `rlimits[i]` is resource i. */
export const RLIMIT_NAMES = [
  'cpu', 'fsize', 'data', 'stack', 'core', 'rss', 'nproc', 'nofile', 'memlock', 'as', 'locks', 'sigpending',
  'msgqueue', 'nice', 'rtprio', 'rttime',
] as const;
export const RLIM_NLIMITS = 16;

export interface Capabilities {
  inheritable: bigint;
  permitted: bigint;
  effective: bigint;
  bounding: bigint;
  ambient: bigint;
}

export interface Creds {
  uid: number; euid: number; suid: number; fsuid: number;
  gid: number; egid: number; sgid: number; fsgid: number;
  groups: number[];
  caps: Capabilities;
}

/* ------------------------------------------------------------------ per process */

/** Contents of core-<pid>.img: everything about one process except page data. */
export interface CoreImage {
  pid: number;
  comm: string;
  personality: number;
  exe: FileRef;
  cwd: string;
  root: string;
  umask: number;
  creds: Creds;
  /** RLIM_NLIMITS entries, index = RLIMIT_* */
  rlimits: Rlimit[];
  /** NSIG entries, index i = signal i + 1 */
  sigactions: SigAction[];
  threads: ThreadState[];
  mm: MmFields;
  /** raw auxv (type, value) pairs, AT_NULL excluded */
  auxv: Array<[bigint, bigint]>;
  /** sorted by start, non-overlapping */
  vmas: Vma[];
  /** sorted by fd */
  fds: FdEntry[];
}

export type PagemapKind = 'present' | 'lazy' | 'zero';
/** On-disk flag bits of a pagemap entry; exactly one is set. */
export const PE_PRESENT = 0x1;
export const PE_LAZY = 0x2;
export const PE_ZERO = 0x4;

/** A range of pages whose contents are in the pages file at `offset` (bytes from the start of the file). */
export interface PresentRange {
  start: number;
  pages: number;
  kind: 'present';
  offset: number;
}
/** A range of pages left on the source ('lazy': fetch from the page server) or known to be zero. */
export interface AbsentRange {
  start: number;
  pages: number;
  kind: 'lazy' | 'zero';
}
export type PagemapEntry = PresentRange | AbsentRange;

/** Contents of pagemap-<pid>.img. */
export interface Pagemap {
  pid: number;
  pageSize: number;
  /** sorted by start, non-overlapping, each covered by VMAs (one, or several adjacent ones) */
  entries: PagemapEntry[];
}

export interface ProcessImage {
  pid: number;
  core: CoreImage;
  pagemap: Pagemap;
}

/** A complete dump: what `writeImages` writes and `readImages` returns (besides page data). */
export interface ImageSet {
  inventory: Inventory;
  /** one per inventory.tree entry, same order */
  processes: ProcessImage[];
}

/** What is known about a pages-<pid>.img after its header and footer were validated. */
export interface PagesFileInfo {
  path: string;
  pid: number;
  pageSize: number;
  /** number of pages stored */
  pageCount: number;
  /** file size in bytes */
  size: number;
  /** CRC32C stored in the trailer for the whole file */
  fileCrc: number;
}
