/**
 * Schemas of the three msgpack-encoded image files and the layout checks that go with them.
 * The same code validates what is read and what is about to be written, so a writer can
 * never produce images its reader refuses.
 */
import { FieldError } from './errors.js';
import {
  alignedAddress, array, bool, bytes, literal, nullable, object, refine, safeUint, str, tuple, u16, u32, u64, uint,
  type Decoder,
} from './schema.js';
import {
  DUMP_MODES, FD_KINDS, MADV_KNOWN, MAP_ANONYMOUS, MAP_PRIVATE, MAP_SHARED, MM_FIELDS, NSIG, PE_LAZY, PE_PRESENT,
  PE_ZERO, RLIM_NLIMITS, TASK_SIZE, USER_REGS_FIELDS, VMA_FLAGS_MASK, VMA_KINDS, VSYSCALL_END, VSYSCALL_START,
  type CoreImage, type FileId, type Inventory, type MmFields, type Pagemap, type PagemapEntry, type Rlimit,
  type RlimitValue, type TreeEntry, type UserRegs, type Vma,
} from './types.js';

/* ------------------------------------------------------------------ limits (hostile input) */

export const LIMITS = {
  path: 4096,
  comm: 64,
  threads: 1 << 20,
  vmas: 1 << 24,
  fds: 1 << 20,
  xstate: 1 << 20,
  auxv: 1024,
  groups: 65536,
  tree: 1 << 22,
  pagemapEntries: 1 << 28,
  /** largest pid/tid (PID_MAX_LIMIT) */
  pid: 4194304,
} as const;

const PATH = str(LIMITS.path);
const PID = uint(LIMITS.pid);

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}
const pageSize: Decoder<number> = refine(u32, (n) =>
  isPowerOfTwo(n) && n >= 4096 && n <= 1 << 30 ? undefined : `page size ${n} is not a power of two in 4096..2^30`,
);

/* ------------------------------------------------------------------ inventory */

const treeEntry: Decoder<TreeEntry> = object({
  pid: refine(PID, (p) => (p === 0 ? 'pid 0' : undefined)),
  ppid: PID,
  tids: array(PID, { min: 1, max: LIMITS.threads }),
  children: array(PID, { max: LIMITS.tree }),
});

const inventoryShape: Decoder<Inventory> = object({
  formatVersion: u16,
  lazymigVersion: str(64, { nonEmpty: true }),
  kernelRelease: str(256),
  arch: literal(['x86_64'] as const),
  pageSize,
  dumpMode: literal(DUMP_MODES),
  lazy: bool,
  pageServer: nullable(object({ address: str(1024, { nonEmpty: true }), port: uint(65535) })),
  createdAt: safeUint,
  rootPid: PID,
  tree: array(treeEntry, { min: 1, max: LIMITS.tree }),
});

export function decodeInventory(v: unknown): Inventory {
  const inv = inventoryShape(v, '');
  if (inv.lazy && inv.pageServer === null) throw new FieldError('pageServer', 'a lazy dump needs the page server address', 'layout');
  if (!inv.lazy && inv.pageServer !== null) throw new FieldError('pageServer', 'set on a dump that is not lazy', 'layout');
  if (inv.pageServer && inv.pageServer.port === 0) throw new FieldError('pageServer.port', 'port 0', 'schema');
  checkTree(inv);
  return inv;
}

function checkTree(inv: Inventory): void {
  const L = (path: string, problem: string): FieldError => new FieldError(path, problem, 'layout');
  const index = new Map<number, number>();
  const allTids = new Set<number>();
  inv.tree.forEach((e, i) => {
    if (index.has(e.pid)) throw L(`tree[${i}].pid`, `pid ${e.pid} appears twice`);
    index.set(e.pid, i);
    if (!e.tids.includes(e.pid)) throw L(`tree[${i}].tids`, `the threads of pid ${e.pid} do not include its leader (tid ${e.pid})`);
    for (const t of e.tids) {
      if (allTids.has(t)) throw L(`tree[${i}].tids`, `tid ${t} appears twice`);
      allTids.add(t);
    }
  });
  if (inv.tree[0]!.pid !== inv.rootPid) throw L('tree[0].pid', `the root (${inv.rootPid}) must come first, found ${inv.tree[0]!.pid}`);
  if (index.has(inv.tree[0]!.ppid)) throw L('tree[0].ppid', `the root's parent ${inv.tree[0]!.ppid} is in the tree`);
  // sets, not arrays: a hostile inventory may list a million children of one process
  const childSets = inv.tree.map((e) => new Set(e.children));
  inv.tree.forEach((e, i) => {
    if (i > 0) {
      const pi = index.get(e.ppid);
      if (pi === undefined || pi >= i) throw L(`tree[${i}].ppid`, `parent ${e.ppid} of pid ${e.pid} is not listed before it`);
      if (!childSets[pi]!.has(e.pid)) throw L(`tree[${pi}].children`, `pid ${e.pid} (ppid ${e.ppid}) missing from its parent's children`);
    }
    const seen = new Set<number>();
    for (const c of e.children) {
      if (seen.has(c)) throw L(`tree[${i}].children`, `child ${c} listed twice`);
      seen.add(c);
      const ci = index.get(c);
      if (ci === undefined) throw L(`tree[${i}].children`, `child ${c} of pid ${e.pid} is not in the tree`);
      if (inv.tree[ci]!.ppid !== e.pid) throw L(`tree[${i}].children`, `child ${c} has ppid ${inv.tree[ci]!.ppid}, not ${e.pid}`);
    }
  });
}

/* ------------------------------------------------------------------ core */

const regsShape: Decoder<UserRegs> = object(
  Object.fromEntries(USER_REGS_FIELDS.map((k) => [k, u64])) as { [K in keyof UserRegs]: Decoder<bigint> },
);

const fileId: Decoder<FileId> = object({ dev: u64, ino: u64, size: safeUint, mtimeNs: u64 });
const fileRef = object({ path: str(LIMITS.path, { nonEmpty: true }), id: fileId });

const RLIM_INFINITY = (1n << 64n) - 1n;
const rlimitValue: Decoder<RlimitValue> = (v, path) => {
  if (v === 'unlimited') return 'unlimited';
  const n = u64(v, path);
  if (n === RLIM_INFINITY) throw new FieldError(path, 'RLIM_INFINITY must be written as "unlimited"');
  return n;
};
const rlimit: Decoder<Rlimit> = refine(object({ soft: rlimitValue, hard: rlimitValue }), (r) => {
  if (r.hard === 'unlimited') return undefined;
  if (r.soft === 'unlimited' || r.soft > r.hard) return `soft limit ${r.soft} above hard limit ${r.hard}`;
  return undefined;
});

const mmShape: Decoder<MmFields> = object(
  Object.fromEntries(MM_FIELDS.map((k) => [k, uint(TASK_SIZE)])) as { [K in keyof MmFields]: Decoder<number> },
);

const vmaShape: Decoder<Vma> = object({
  start: alignedAddress,
  end: alignedAddress,
  prot: uint(7),
  flags: u32,
  kind: literal(VMA_KINDS),
  file: nullable(fileRef),
  pgoff: safeUint,
  madvise: u32,
});

const MADV_MASK = MADV_KNOWN.reduce((m, b) => m | (1 << b), 0);

const coreShape: Decoder<CoreImage> = object({
  pid: PID,
  comm: str(LIMITS.comm),
  personality: u32,
  exe: fileRef,
  cwd: PATH,
  root: PATH,
  umask: uint(0o777),
  creds: object({
    uid: u32, euid: u32, suid: u32, fsuid: u32,
    gid: u32, egid: u32, sgid: u32, fsgid: u32,
    groups: array(u32, { max: LIMITS.groups }),
    caps: object({ inheritable: u64, permitted: u64, effective: u64, bounding: u64, ambient: u64 }),
  }),
  rlimits: array(rlimit, { min: RLIM_NLIMITS, max: RLIM_NLIMITS }),
  sigactions: array(object({ handler: u64, flags: u64, restorer: u64, mask: u64 }), { min: NSIG, max: NSIG }),
  threads: array(
    object({
      tid: PID,
      regs: regsShape,
      xstate: bytes(LIMITS.xstate),
      sigmask: u64,
      rseq: nullable(object({ ptr: u64, len: u32, sig: u32, flags: u32 })),
      clearChildTid: u64,
      robustList: object({ head: u64, len: u64 }),
    }),
    { min: 1, max: LIMITS.threads },
  ),
  mm: mmShape,
  auxv: array(tuple(u64, u64), { max: LIMITS.auxv }),
  vmas: array(vmaShape, { max: LIMITS.vmas }),
  fds: array(
    object({
      fd: uint(0x7fffffff),
      kind: literal(FD_KINDS),
      path: PATH,
      flags: u32,
      offset: u64,
      id: nullable(fileId),
    }),
    { max: LIMITS.fds },
  ),
});

function hex(n: number): string {
  return '0x' + n.toString(16);
}

export function checkVmas(vmas: Vma[], align: number, pathPrefix = 'vmas'): void {
  let prevEnd = 0;
  vmas.forEach((v, i) => {
    // The path and the range are only spelled out for an error: a dump validates every VMA
    // of its images while the tree is frozen, thousands of them in some processes.
    const L = (problem: string): FieldError => new FieldError(`${pathPrefix}[${i}]`, problem, 'layout');
    const range = (): string => `${hex(v.start)}-${hex(v.end)}`;
    if (v.start % align !== 0 || v.end % align !== 0) throw L(`${range()} is not aligned to the page size ${align}`);
    if (v.start >= v.end) throw L(`${range()} is empty or inverted`);
    if (v.kind === 'vsyscall') {
      if (v.start !== VSYSCALL_START || v.end !== VSYSCALL_END) throw L(`vsyscall VMA at ${range()}, expected ${hex(VSYSCALL_START)}-${hex(VSYSCALL_END)}`);
    } else if (v.end > TASK_SIZE) throw L(`${range()} ends above the user address limit ${hex(TASK_SIZE)}`);
    if (i > 0 && v.start < prevEnd) throw L(`${range()} overlaps the previous VMA (ending at ${hex(prevEnd)}) or is out of order`);
    prevEnd = v.end;
    if ((v.flags & ~VMA_FLAGS_MASK) !== 0) throw L(`unknown mmap flags ${hex(v.flags & ~VMA_FLAGS_MASK)}`);
    const shared = (v.flags & MAP_SHARED) !== 0;
    const priv = (v.flags & MAP_PRIVATE) !== 0;
    if (shared === priv) throw L(`flags ${hex(v.flags)} must have exactly one of MAP_SHARED, MAP_PRIVATE`);
    if ((v.madvise & ~MADV_MASK) !== 0) throw L(`unknown madvise bits ${hex(v.madvise & ~MADV_MASK)}`);
    if (v.pgoff % 4096 !== 0) throw L(`pgoff ${v.pgoff} is not page aligned`);
    if (v.kind === 'file') {
      if (v.file === null) throw L('a file VMA without a file');
      if (v.flags & MAP_ANONYMOUS) throw L('a file VMA with MAP_ANONYMOUS');
    } else {
      if (v.file !== null) throw L(`a ${v.kind} VMA with a file (${v.file.path})`);
      if (v.pgoff !== 0) throw L(`a ${v.kind} VMA with pgoff ${v.pgoff}`);
      if ((v.kind === 'anon' || v.kind === 'stack' || v.kind === 'heap') && !(v.flags & MAP_ANONYMOUS))
        throw L(`a ${v.kind} VMA without MAP_ANONYMOUS`);
    }
  });
}

export function decodeCore(v: unknown): CoreImage {
  const core = coreShape(v, '');
  const tids = new Set<number>();
  core.threads.forEach((t, i) => {
    if (tids.has(t.tid)) throw new FieldError(`threads[${i}].tid`, `tid ${t.tid} appears twice`, 'layout');
    tids.add(t.tid);
  });
  core.fds.forEach((f, i) => {
    if (i > 0 && f.fd <= core.fds[i - 1]!.fd) throw new FieldError(`fds[${i}].fd`, `fd ${f.fd} duplicated or out of order`, 'layout');
  });
  const m = core.mm;
  for (const [a, b] of [['startCode', 'endCode'], ['startData', 'endData'], ['startBrk', 'brk'], ['argStart', 'argEnd'], ['envStart', 'envEnd']] as const) {
    if (m[a] > m[b]) throw new FieldError(`mm.${b}`, `${b} ${hex(m[b])} below ${a} ${hex(m[a])}`, 'layout');
  }
  checkVmas(core.vmas, 4096);
  return core;
}

/* ------------------------------------------------------------------ pagemap */

/** On disk an entry is a 4-array [start, pages, flags, offset|nil] (compact: there may be millions). */
const wireEntry = tuple(alignedAddress, uint(0xffffffff), uint(0xff), nullable(safeUint));

const pagemapShape = object({
  pid: PID,
  pageSize,
  entries: array(wireEntry, { max: LIMITS.pagemapEntries }),
});

export type WirePagemap = { pid: number; pageSize: number; entries: Array<[number, number, number, number | null]> };

export function pagemapToWire(pm: Pagemap): WirePagemap {
  return {
    pid: pm.pid,
    pageSize: pm.pageSize,
    entries: pm.entries.map((e) => [
      e.start,
      e.pages,
      e.kind === 'present' ? PE_PRESENT : e.kind === 'lazy' ? PE_LAZY : PE_ZERO,
      e.kind === 'present' ? e.offset : null,
    ]),
  };
}

/** Validate a model Pagemap (as given to a writer) by round-tripping it through the wire form. */
export function normalizePagemap(pm: Pagemap): Pagemap {
  const p = 'entries';
  if (typeof pm !== 'object' || pm === null || !Array.isArray(pm.entries)) throw new FieldError('', 'expected a pagemap {pid, pageSize, entries}');
  pm.entries.forEach((e, i) => {
    if (typeof e !== 'object' || e === null || !['present', 'lazy', 'zero'].includes(e.kind))
      throw new FieldError(`${p}[${i}].kind`, 'expected "present", "lazy" or "zero"');
    const keys = Object.keys(e).sort().join(',');
    const want = e.kind === 'present' ? 'kind,offset,pages,start' : 'kind,pages,start';
    if (keys !== want) throw new FieldError(`${p}[${i}]`, `a ${e.kind} entry has fields {${keys}}, expected {${want}}`);
  });
  return decodePagemap(pagemapToWire(pm));
}

export function decodePagemap(v: unknown): Pagemap {
  const w = pagemapShape(v, '');
  const ps = w.pageSize;
  const entries: PagemapEntry[] = new Array<PagemapEntry>(w.entries.length);
  let prevEnd = 0;
  let prevDataEnd = ps;
  for (let i = 0; i < w.entries.length; i++) {
    const [start, pages, flags, offset] = w.entries[i]!;
    const L = (problem: string): FieldError => new FieldError(`entries[${i}]`, problem, 'layout');
    if (start % ps !== 0) throw L(`start ${hex(start)} is not aligned to the page size ${ps}`);
    if (pages === 0) throw L('an empty range');
    const end = start + pages * ps;
    if (end > TASK_SIZE) throw L(`range ${hex(start)}+${pages} pages ends above the user address limit ${hex(TASK_SIZE)}`);
    if (i > 0 && start < prevEnd) throw L(`range at ${hex(start)} overlaps the previous one (ending at ${hex(prevEnd)}) or is out of order`);
    prevEnd = end;
    if (flags === PE_PRESENT) {
      if (offset === null) throw L('a present range without a pages-file offset');
      if (offset % ps !== 0) throw L(`pages-file offset ${offset} is not page aligned`);
      if (offset < prevDataEnd) throw L(`pages-file offset ${offset} overlaps the header page or the data of an earlier range (next free offset ${prevDataEnd})`);
      prevDataEnd = offset + pages * ps;
      if (!Number.isSafeInteger(prevDataEnd)) throw L(`pages-file offset ${offset} is too large`);
      entries[i] = { start, pages, kind: 'present', offset };
    } else if (flags === PE_LAZY || flags === PE_ZERO) {
      if (offset !== null) throw L(`a ${flags === PE_LAZY ? 'lazy' : 'zero'} range with a pages-file offset`);
      entries[i] = { start, pages, kind: flags === PE_LAZY ? 'lazy' : 'zero' };
    } else {
      throw L(`flags ${hex(flags)}: expected exactly one of PRESENT (1), LAZY (2), ZERO (4)`);
    }
  }
  return { pid: w.pid, pageSize: ps, entries };
}

/**
 * Every entry of the pagemap must lie inside the VMAs: fully covered by one VMA or by several
 * adjacent ones (a run may continue across a VMA boundary), never touching a hole.
 */
export function checkPagemapInVmas(pm: Pagemap, vmas: Vma[]): void {
  let j = 0;
  const ps = pm.pageSize;
  pm.entries.forEach((e, i) => {
    const end = e.start + e.pages * ps;
    while (j < vmas.length && vmas[j]!.end <= e.start) j++;
    let covered = e.start;
    for (let k = j; k < vmas.length && covered < end; k++) {
      const v = vmas[k]!;
      if (v.start > covered) break; // a hole
      covered = v.end;
    }
    if (covered < end) {
      throw new FieldError(
        `entries[${i}]`,
        `range ${hex(e.start)}-${hex(end)} (${e.kind}) is not inside the VMAs: nothing is mapped at ${hex(covered)}`,
        'layout',
      );
    }
  });
}

/** Present ranges must lie inside the pages file (pageCount data pages after the header page). */
export function checkPagemapInPagesFile(pm: Pagemap, pageCount: number): void {
  const limit = (pageCount + 1) * pm.pageSize;
  pm.entries.forEach((e, i) => {
    if (e.kind !== 'present') return;
    const end = e.offset + e.pages * pm.pageSize;
    if (end > limit)
      throw new FieldError(
        `entries[${i}]`,
        `present range ${hex(e.start)} needs pages-file bytes ${e.offset}..${end}, past the end of the pages file (${pageCount} pages, data ends at ${limit})`,
        'layout',
      );
  });
}
