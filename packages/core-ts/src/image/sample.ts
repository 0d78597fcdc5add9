/**
 * A realistic, valid image set built in memory (a two-process tree, one of them two-threaded),
 * for tests here and in other packages (page server, CLI show). Page contents follow a
 * verifiable pattern: every 8-byte word of the page at `addr` holds `addr + offset ^ pid`.
 */
import {
  FORMAT_VERSION, LAZYMIG_VERSION, MADV_DONTDUMP, MADV_HUGEPAGE, MAP_ANONYMOUS, MAP_GROWSDOWN, MAP_PRIVATE, NSIG,
  PROT_EXEC, PROT_READ, PROT_WRITE, RLIM_NLIMITS, USER_REGS_FIELDS, VSYSCALL_END, VSYSCALL_START, type CoreImage,
  type FileId, type ImageSet, type PagemapEntry, type ThreadState, type UserRegs, type Vma,
} from './types.js';

export interface SampleOptions {
  lazy?: boolean;
  pageSize?: number;
}

export interface Sample {
  images: ImageSet;
  /** pages-file contents per pid (in file order) */
  pages: Map<number, Buffer>;
}

/** The pattern page at `addr` of process `pid`. */
export function samplePage(pid: number, addr: number, pageSize = 4096): Buffer {
  const b = Buffer.alloc(pageSize);
  for (let off = 0; off < pageSize; off += 8) b.writeBigUInt64LE(BigInt(addr + off) ^ BigInt(pid), off);
  return b;
}

const id = (ino: number): FileId => ({ dev: 0x803n, ino: BigInt(ino), size: 1 << 20, mtimeNs: 1_700_000_000_123_456_789n });

function regs(seed: number): UserRegs {
  const r = Object.fromEntries(USER_REGS_FIELDS.map((k, i) => [k, BigInt(seed * 1000 + i)])) as unknown as UserRegs;
  r.rip = 0x401000n + BigInt(seed);
  r.rsp = 0x7ffc0000f000n - 64n;
  r.cs = 0x33n;
  r.ss = 0x2bn;
  r.eflags = 0x246n;
  r.orig_rax = 0xffffffffffffffffn; // not in a syscall: -1 as u64
  r.rax = 0xfffffffffffffe00n; // -ERESTARTSYS
  r.fs_base = 0x7f0000001740n;
  r.gs_base = 0n;
  return r;
}

function thread(tid: number): ThreadState {
  const xstate = Buffer.alloc(2688);
  for (let i = 0; i < xstate.length; i++) xstate[i] = (i * 7 + tid) & 0xff;
  return {
    tid,
    regs: regs(tid),
    xstate,
    sigmask: 1n << 13n, // SIGPIPE blocked
    rseq: { ptr: 0x7f0000001fe0n, len: 32, sig: 0x53053053, flags: 0 },
    clearChildTid: 0x7f0000001a10n,
    robustList: { head: 0x7f0000001a20n, len: 24n },
  };
}

function core(pid: number, tids: number[], comm: string): { core: CoreImage; vmas: Vma[] } {
  const rw = PROT_READ | PROT_WRITE;
  const anon = MAP_PRIVATE | MAP_ANONYMOUS;
  const vmas: Vma[] = [
    { start: 0x400000, end: 0x401000, prot: PROT_READ, flags: MAP_PRIVATE, kind: 'file', file: { path: '/usr/local/bin/memhog', id: id(11) }, pgoff: 0, madvise: 0 },
    { start: 0x401000, end: 0x402000, prot: PROT_READ | PROT_EXEC, flags: MAP_PRIVATE, kind: 'file', file: { path: '/usr/local/bin/memhog', id: id(11) }, pgoff: 0x1000, madvise: 0 },
    { start: 0x403000, end: 0x404000, prot: rw, flags: MAP_PRIVATE, kind: 'file', file: { path: '/usr/local/bin/memhog', id: id(11) }, pgoff: 0x2000, madvise: 0 },
    { start: 0x1000000, end: 0x1021000, prot: rw, flags: anon, kind: 'heap', file: null, pgoff: 0, madvise: 0 },
    { start: 0x7f0000000000, end: 0x7f0000040000, prot: rw, flags: anon, kind: 'anon', file: null, pgoff: 0, madvise: (1 << MADV_HUGEPAGE) | (1 << MADV_DONTDUMP) },
    { start: 0x7f0000100000, end: 0x7f0000128000, prot: PROT_READ | PROT_EXEC, flags: MAP_PRIVATE, kind: 'file', file: { path: '/usr/lib/x86_64-linux-gnu/libc.so.6', id: id(22) }, pgoff: 0x28000, madvise: 0 },
    { start: 0x7ffc0000b000, end: 0x7ffc00010000, prot: rw, flags: anon | MAP_GROWSDOWN, kind: 'stack', file: null, pgoff: 0, madvise: 0 },
    { start: 0x7ffc00100000, end: 0x7ffc00104000, prot: PROT_READ, flags: MAP_PRIVATE, kind: 'vvar', file: null, pgoff: 0, madvise: 0 },
    { start: 0x7ffc00104000, end: 0x7ffc00106000, prot: PROT_READ | PROT_EXEC, flags: MAP_PRIVATE, kind: 'vdso', file: null, pgoff: 0, madvise: 0 },
    { start: VSYSCALL_START, end: VSYSCALL_END, prot: PROT_EXEC, flags: MAP_PRIVATE, kind: 'vsyscall', file: null, pgoff: 0, madvise: 0 },
  ];
  const c: CoreImage = {
    pid,
    comm,
    personality: 0,
    exe: { path: '/usr/local/bin/memhog', id: id(11) },
    cwd: '/root',
    root: '/',
    umask: 0o022,
    creds: {
      uid: 0, euid: 0, suid: 0, fsuid: 0, gid: 0, egid: 0, sgid: 0, fsgid: 0,
      groups: [0, 4, 27],
      caps: { inheritable: 0n, permitted: 0x1ffffffffffn, effective: 0x1ffffffffffn, bounding: 0x1ffffffffffn, ambient: 0n },
    },
    rlimits: Array.from({ length: RLIM_NLIMITS }, (_, i) =>
      i === 7 ? { soft: 1024n, hard: 1048576n } : i === 3 ? { soft: 8388608n, hard: 'unlimited' as const } : { soft: 'unlimited' as const, hard: 'unlimited' as const },
    ),
    sigactions: Array.from({ length: NSIG }, (_, i) =>
      i + 1 === 15 // SIGTERM handler
        ? { handler: 0x401234n, flags: 0x14000000n, restorer: 0x7f0000100520n, mask: 1n << 9n }
        : i + 1 === 13 // SIGPIPE ignored
          ? { handler: 1n, flags: 0n, restorer: 0n, mask: 0n }
          : { handler: 0n, flags: 0n, restorer: 0n, mask: 0n },
    ),
    threads: tids.map(thread),
    mm: {
      startCode: 0x401000, endCode: 0x402000, startData: 0x403000, endData: 0x404000, startBrk: 0x1000000, brk: 0x1021000,
      startStack: 0x7ffc0000fe00, argStart: 0x7ffc0000ff00, argEnd: 0x7ffc0000ff20, envStart: 0x7ffc0000ff20, envEnd: 0x7ffc0000ffe0,
    },
    auxv: [[6n, 4096n], [33n, 0x7ffc00104000n], [16n, 0x178bfbffn], [25n, 0x7ffc0000fe80n], [31n, 0x7ffc0000ffe8n]],
    vmas,
    fds: [
      { fd: 0, kind: 'devnull', path: '/dev/null', flags: 0o100000, offset: 0n, id: { dev: 5n, ino: 4n, size: 0, mtimeNs: 0n } },
      { fd: 1, kind: 'file', path: '/tmp/memhog.log', flags: 0o102001, offset: 123456n, id: id(33) },
      { fd: 2, kind: 'pipe', path: 'pipe:[99123]', flags: 0o1, offset: 0n, id: null },
      { fd: 3, kind: 'dir', path: '/root', flags: 0o2304000, offset: 0n, id: id(44) },
    ],
  };
  return { core: c, vmas };
}

export function sampleImageSet(opts: SampleOptions = {}): Sample {
  const lazy = opts.lazy ?? true;
  const P = opts.pageSize ?? 4096;
  const procs = [
    { pid: 1000, ppid: 1, tids: [1000, 1002], children: [1001], comm: 'memhog' },
    { pid: 1001, ppid: 1000, tids: [1001], children: [], comm: 'memhog-child' },
  ];
  const pages = new Map<number, Buffer>();
  const processes = procs.map((p) => {
    const { core: c } = core(p.pid, p.tids, p.comm);
    const chunks: Buffer[] = [];
    let offset = P;
    const entries: PagemapEntry[] = [];
    const present = (start: number, n: number): void => {
      for (let i = 0; i < n; i++) chunks.push(samplePage(p.pid, start + i * P, P));
      entries.push({ start, pages: n, kind: 'present', offset });
      offset += n * P;
    };
    present(0x403000, 1); // data
    present(0x1000000, 4); // heap head
    entries.push({ start: 0x1004000, pages: 0x1d, kind: 'zero' });
    if (lazy) entries.push({ start: 0x7f0000000000, pages: 0x40, kind: 'lazy' });
    else present(0x7f0000000000, 0x40);
    present(0x7ffc0000d000, 3); // stack
    pages.set(p.pid, Buffer.concat(chunks));
    return { pid: p.pid, core: c, pagemap: { pid: p.pid, pageSize: P, entries } };
  });
  const images: ImageSet = {
    inventory: {
      formatVersion: FORMAT_VERSION,
      lazymigVersion: LAZYMIG_VERSION,
      kernelRelease: '6.18.44-fc-v657',
      arch: 'x86_64',
      pageSize: P,
      dumpMode: lazy ? 'leave-stopped' : 'kill',
      lazy,
      pageServer: lazy ? { address: '10.77.0.1', port: 27027 } : null,
      createdAt: 1_760_000_000_000,
      rootPid: 1000,
      tree: procs.map(({ pid, ppid, tids, children }) => ({ pid, ppid, tids, children })),
    },
    processes,
  };
  return { images, pages };
}
