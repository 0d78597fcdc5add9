/**
 * `lazymig dump`: a running process tree into an images directory.
 *
 * The order matters:
 *  1. refuse what cannot be restored, before touching anything;
 *  2. freeze every thread, and check again (nothing can change from here on);
 *  3. read each process's layout and pages before anything is injected into it;
 *  4. ask what only the process knows (injected syscalls), and put its registers back;
 *  5. write the images under a temporary name and rename them into place (a lazy dump then
 *     checks the VmFlags it took from before the freeze, see layout.ts);
 *  6. kill the tree, let it run, or keep it frozen for the page server (lazy).
 * Any failure after the freeze removes the partial images and lets the tree run on untouched.
 */
import { randomBytes } from 'node:crypto';
import { ptrace, PAGE_SIZE } from '@lazymig/uffd-rs';
import {
  FORMAT_VERSION, ImagesDirWriter, LAZYMIG_VERSION, RLIMIT_NAMES,
  type CoreImage, type DumpMode, type LoadedImages, type PagemapEntry, type ProcessImage, type Rlimit, type ThreadState,
} from '../image/index.js';
import {
  RLIM_INFINITY, readAuxv, readComm, readCwd, readExe, readFds, readLimits, readPersonality, readRoot, readFlaggedVmas, readFlaggedVmasOffThread,
  readStat, readStatus, readTree, type FlaggedVma, type ProcessTree, type Refusal, type TreeProcess,
} from '../proc/index.js';
import { askProcess } from './ask-process.js';
import { dumpRefusals, toImageFd } from './fds.js';
import { freezeTree, type FrozenTree } from './freeze.js';
import { withTraceesOnOurCpu } from '../host/affinity.js';
import { niced } from '../host/priority.js';
import { FlagSyscallWatch } from './flag-syscalls.js';
import { StaleFlagsError, frozenLayout, staleFlags, type FrozenLayout } from './layout.js';
import { dumpMemory, wholePopulatedAnon } from './memory.js';
import { rehearseLazyDump } from './rehearsal.js';
import { untraceableRefusals } from './untraceable.js';
import { arch, release } from 'node:os';

/** The page server's auth token, written into the images dir: whoever has the images may fetch the pages. */
export const TOKEN_FILE = 'page-server.token';

export class DumpRefusedError extends Error {
  override readonly name = 'DumpRefusedError';
  constructor(readonly refusals: Refusal[]) {
    const first = refusals[0]?.message ?? 'refused';
    super(refusals.length > 1 ? `${first} (and ${refusals.length - 1} more)` : first);
  }
}

export type DumpProgress =
  | { phase: 'frozen'; processes: number; threads: number; freezeMs: number }
  | { phase: 'pages'; pid: number; bytes: number }
  | { phase: 'written'; dir: string };

const DUMP_MODES: ReadonlyArray<unknown> = ['kill', 'leave-running', 'lazy'];

export interface DumpOptions {
  pid: number;
  imagesDir: string;
  /** 'kill' (default), 'leave-running', or 'lazy' (pages stay on the source, the tree stays frozen). */
  mode?: 'kill' | 'leave-running' | 'lazy';
  pageServer?: { address: string; port: number };
  /**
   * The page server's token (lazy dumps; 64 hex digits), written into the images. Made here
   * when not given: a caller that starts its page server before the freeze passes its own.
   */
  token?: string;
  /**
   * A lazy dump first dumps a throwaway process of its own (rehearsal.ts), so that its code
   * runs for the second time while the tree is frozen. Default: true for a lazy dump.
   */
  rehearse?: boolean;
  onProgress?: (p: DumpProgress) => void;
}

export interface DumpResult {
  images: LoadedImages;
  processes: number;
  threads: number;
  pages: { present: number; lazy: number; zero: number };
  bytesWritten: number;
  freezeMs: number;
  /**
   * From the freeze until the tree was killed or resumed (eager dumps), or until the images
   * were committed (lazy: a restore may start from then on; the tree stays frozen to serve
   * its pages, and what the dump still does, phase 'post-verify', overlaps that start).
   */
  frozenMs: number;
  injectedSyscalls: number;
  /**
   * Milliseconds spent in each phase, in order: 'pre-*' before the freeze, the rest while
   * frozen (their sum is about frozenMs). For benchmarks and `--verbose` output.
   */
  phaseMs: Record<string, number>;
  /** A lazy dump hands back the frozen tree: the page server serves it, then kills it. */
  frozen: FrozenTree | null;
  token: string | null;
}

/** Throws every refusal of the tree at once: `already`, and what `read` shows of the other processes. */
function refuseIfAny(tree: readonly TreeProcess[], read: (pid: number) => { smaps: readonly FlaggedVma[]; fds: ReturnType<typeof readFds> }, already: Refusal[] = []): void {
  const all = [...already];
  // A process refused already (one that has exited has no memory or fds left) is not read.
  const refused = new Set(all.map((r) => r.pid));
  for (const p of tree) {
    if (refused.has(p.pid)) continue;
    const { smaps, fds } = read(p.pid);
    all.push(...dumpRefusals(p.pid, smaps, fds));
  }
  if (all.length > 0) throw new DumpRefusedError(all);
}

function rlimit(v: bigint): Rlimit['soft'] {
  return v === RLIM_INFINITY ? 'unlimited' : v;
}

function threadState(tid: number, asked: { clearChildTid: bigint; robustList: { head: bigint; len: bigint } }): ThreadState {
  return {
    tid,
    regs: ptrace.getRegs(tid),
    xstate: ptrace.getXstate(tid),
    sigmask: ptrace.getSigmask(tid),
    rseq: ptrace.getRseqConfig(tid),
    clearChildTid: asked.clearChildTid,
    robustList: asked.robustList,
  };
}

/** Accumulates wall time per named phase: `lap(name)` charges the time since the last lap to name. */
class Phases {
  readonly ms: Record<string, number> = {};
  private t = performance.now();
  lap(name: string): void {
    const now = performance.now();
    this.ms[name] = (this.ms[name] ?? 0) + (now - this.t);
    this.t = now;
  }
}

export async function dump(opts: DumpOptions): Promise<DumpResult> {
  const phases = new Phases();
  const mode = opts.mode ?? 'kill';
  // Checked before anything is touched: JS callers are not held to the type.
  if (!DUMP_MODES.includes(mode)) throw new Error(`dump mode must be one of ${DUMP_MODES.join(', ')}, not ${JSON.stringify(mode)}`);
  if (mode === 'lazy' && !opts.pageServer) throw new Error('a lazy dump needs the page server address and port');
  // First of all, so the smaps read below stays as close to the freeze as it can. Below the
  // workload: it is still running.
  if (mode === 'lazy' && opts.rehearse !== false) {
    await niced(() => rehearseLazyDump(dump, opts.pageServer!)).catch(() => undefined);
    phases.lap('pre-rehearsal');
  }

  // 1. Before touching anything. The smaps read here also serves a lazy dump after the
  // freeze, if the layout has not changed (layout.ts).
  const before: ProcessTree = readTree(opts.pid);
  // Opened before the read: with no flag-changing syscall until the freeze, a lazy dump can
  // trust the VmFlags read here without reading smaps again (flag-syscalls.ts).
  const flagWatch = mode === 'lazy' ? FlagSyscallWatch.open(before) : null;
  const preSmaps = new Map<number, FlaggedVma[]>();
  // A lazy dump's wholly populated anonymous VMAs: not scanned again while frozen (memory.ts).
  const preWhole = new Map<number, Map<number, number>>();
  try {
    const read = (pid: number): { smaps: FlaggedVma[]; fds: ReturnType<typeof readFds> } => {
      const smaps = readFlaggedVmas(pid);
      preSmaps.set(pid, smaps);
      return { smaps, fds: readFds(pid) };
    };
    refuseIfAny(before.processes, read, untraceableRefusals(before.processes, opts.pid));
    if (mode === 'lazy') {
      for (const p of before.processes) {
        const anon = preSmaps.get(p.pid)!.filter((v) => ['anon', 'heap', 'stack'].includes(v.kind) && !v.vmFlags.mayShare);
        preWhole.set(p.pid, wholePopulatedAnon(p.pid, anon));
      }
    }
  } catch (err) {
    flagWatch?.close();
    throw err;
  }
  phases.lap('pre-check');
  const writer = await ImagesDirWriter.create(opts.imagesDir);
  // The page server's token and the pages files' headers depend on nothing the freeze
  // captures: written before it (a process gone by then loses its pages file again).
  if (opts.token !== undefined && !/^[0-9a-f]{64}$/.test(opts.token)) throw new Error('the page server token must be 64 hex digits');
  const token = mode === 'lazy' ? (opts.token ?? randomBytes(32).toString('hex')) : null;
  try {
    if (token) await writer.writeExtraFile(TOKEN_FILE, token + '\n', 0o600);
    for (const p of before.processes) await writer.pages(p.pid, PAGE_SIZE);
  } catch (err) {
    flagWatch?.close();
    await writer.abort();
    throw err;
  }
  phases.lap('pre-mkdir');

  // 2. Freeze, and look again: the tree may have changed since.
  let frozen: FrozenTree;
  try {
    frozen = freezeTree(opts.pid);
  } catch (err) {
    flagWatch?.close();
    await writer.abort();
    throw err;
  }
  const tFrozen = performance.now();
  let tReleased: number | undefined;
  let committed = false;
  phases.lap('freeze');
  const threads = frozen.processes.reduce((n, p) => n + p.tids.length, 0);
  opts.onProgress?.({ phase: 'frozen', processes: frozen.processes.length, threads, freezeMs: frozen.freezeMs });

  try {
    // Processes whose threads made no flag-changing syscall since before the smaps read.
    const quiet = new Set(frozen.processes.filter((p) => flagWatch?.quiet(p.pid, p.tids)).map((p) => p.pid));
    flagWatch?.close();
    const processes: ProcessImage[] = [];
    const totals = { present: 0, lazy: 0, zero: 0 };
    let bytesWritten = 0;
    let injectedSyscalls = 0;
    await writer.keepPagesOf(frozen.processes.map((p) => p.pid));
    // Only a lazy dump can check reused VmFlags once its images are written (layout.ts).
    const states = new Map<number, { layout: FrozenLayout; fds: ReturnType<typeof readFds> }>(
      frozen.processes.map((p) => [p.pid, { layout: frozenLayout(p.pid, mode === 'lazy' ? preSmaps.get(p.pid) : undefined), fds: readFds(p.pid) }]),
    );
    // The check of reused VmFlags needs smaps from after the freeze, unless the process was
    // quiet: read it now, off this thread, so its page-table walk overlaps the work below
    // instead of following the commit.
    const smapsAfterFreeze = new Map<number, Promise<FlaggedVma[]>>();
    for (const [pid, st] of states) {
      if (st.layout.flags !== 'reused' || quiet.has(pid)) continue;
      const read = readFlaggedVmasOffThread(pid);
      read.catch(() => undefined); // awaited after the commit, or dropped with the dump
      smapsAfterFreeze.set(pid, read);
    }
    phases.lap('layout+fds');
    refuseIfAny(frozen.processes, (pid) => {
      const st = states.get(pid)!;
      return { smaps: st.layout.vmas, fds: st.fds };
    });

    for (const p of frozen.processes) {
      const { layout, fds } = states.get(p.pid)!;
      const vmas = layout.vmas;
      // 3. Layout and pages first.
      const regsByTid = new Map(p.tids.map((tid) => [tid, ptrace.getRegs(tid)]));
      const eagerAddresses: number[] = [];
      for (const [tid, regs] of regsByTid) {
        const sp = Number(regs.rsp);
        // The stack top and the page below (red zone, a signal frame): the kernel writes there.
        eagerAddresses.push(sp, sp - 128, sp - PAGE_SIZE);
        const rseq = ptrace.getRseqConfig(tid);
        if (rseq) eagerAddresses.push(Number(rseq.ptr), Number(rseq.ptr) + rseq.len - 1);
      }
      phases.lap('regs');
      const pw = await writer.pages(p.pid, PAGE_SIZE);
      phases.lap('pages-open');
      // Trusted only where nothing could have changed the layout or the flags since.
      const whole = quiet.has(p.pid) && states.get(p.pid)!.layout.flags === 'reused' ? preWhole.get(p.pid) : undefined;
      const mem = await dumpMemory(p.pid, vmas, pw, { lazy: mode === 'lazy', eagerAddresses, ...(whole ? { wholeBeforeFreeze: whole } : {}) }, (bytes) =>
        opts.onProgress?.({ phase: 'pages', pid: p.pid, bytes }),
      (name) => phases.lap(name));
      for (const k of ['present', 'lazy', 'zero'] as const) totals[k] += mem.pages[k];
      bytesWritten += mem.bytesWritten;

      // 4. Then what only the process can tell.
      const status = readStatus(p.pid);
      const asked = withTraceesOnOurCpu(p.tids, () => askProcess(p.pid, p.tids, vmas, { caught: status.sigCgt, ignored: status.sigIgn }));
      injectedSyscalls += asked.injectedSyscalls;
      phases.lap('inject');

      const stat = readStat(p.pid);
      const exe = readExe(p.pid);
      const auxv = readAuxv(p.pid);
      const limits = readLimits(p.pid);
      const core: CoreImage = {
        pid: p.pid,
        comm: readComm(p.pid),
        personality: readPersonality(p.pid),
        exe: { path: exe.path, id: { dev: exe.dev, ino: exe.ino, size: Number(exe.size), mtimeNs: exe.mtimeNs } },
        cwd: readCwd(p.pid).path,
        root: readRoot(p.pid),
        umask: status.umask ?? 0o022,
        creds: {
          uid: status.uid.real, euid: status.uid.effective, suid: status.uid.saved, fsuid: status.uid.fs,
          gid: status.gid.real, egid: status.gid.effective, sgid: status.gid.saved, fsgid: status.gid.fs,
          groups: status.groups,
          caps: { inheritable: status.capInh, permitted: status.capPrm, effective: status.capEff, bounding: status.capBnd, ambient: status.capAmb },
        },
        rlimits: RLIMIT_NAMES.map((_, i) => {
          const l = limits[i];
          return l ? { soft: rlimit(l.soft), hard: rlimit(l.hard) } : { soft: 'unlimited', hard: 'unlimited' };
        }),
        sigactions: asked.sigactions,
        threads: p.tids.map((tid) => {
          const a = asked.threads.get(tid);
          if (!a) throw new Error(`pid ${p.pid}: no answers from tid ${tid}`);
          return threadState(tid, a);
        }),
        mm: {
          startCode: stat.startCode, endCode: stat.endCode, startData: stat.startData, endData: stat.endData,
          startBrk: stat.startBrk, brk: asked.brk, startStack: stat.startStack,
          argStart: stat.argStart, argEnd: stat.argEnd, envStart: stat.envStart, envEnd: stat.envEnd,
        },
        auxv: auxv.entries.filter((e) => e.type !== 0).map((e) => [BigInt(e.type), e.value] as [bigint, bigint]),
        vmas: mem.vmas,
        fds: fds.map(toImageFd),
      };
      const entries: PagemapEntry[] = mem.entries;
      processes.push({ pid: p.pid, core, pagemap: { pid: p.pid, pageSize: PAGE_SIZE, entries } });
      phases.lap('proc');
    }

    // 5. Images, atomically.
    const dumpMode: DumpMode = mode === 'lazy' ? 'leave-stopped' : mode;
    const images = await writer.commit({
      inventory: {
        formatVersion: FORMAT_VERSION,
        lazymigVersion: LAZYMIG_VERSION,
        kernelRelease: release(),
        arch: arch() === 'x64' ? 'x86_64' : (arch() as 'x86_64'),
        pageSize: PAGE_SIZE,
        dumpMode,
        lazy: mode === 'lazy',
        pageServer: mode === 'lazy' ? opts.pageServer! : null,
        createdAt: Date.now(),
        rootPid: opts.pid,
        tree: frozen.processes.map((p) => ({ pid: p.pid, ppid: p.ppid, tids: p.tids, children: p.children })),
      },
      processes,
    }, {
      onPhase: (name) => phases.lap(name),
      // The images of a lazy dump are worthless without the frozen tree, which holds their
      // pages: after a crash of this machine there is nothing left to restore, so making them
      // durable first would protect nothing (the rename still makes them appear whole).
      durable: mode !== 'lazy',
    });
    committed = true;
    // In place: they can be copied now. (A lazy dump's pages are served only after dump()
    // returns, so a copy of images that the check below retracts never gets any.)
    opts.onProgress?.({ phase: 'written', dir: opts.imagesDir });
    if (mode === 'lazy') {
      tReleased = performance.now();
      // Before anyone can fetch a page: were the VmFlags taken from before the freeze right?
      for (const [pid, read] of smapsAfterFreeze) {
        const why = staleFlags(pid, states.get(pid)!.layout.vmas, await read);
        if (why) throw new StaleFlagsError(why);
      }
      phases.lap('post-verify');
    }

    // 6. The tree's fate.
    if (mode === 'kill') frozen.kill();
    else if (mode === 'leave-running') frozen.resume();
    phases.lap('release');
    tReleased ??= performance.now();
    return {
      images,
      processes: processes.length,
      threads,
      pages: totals,
      bytesWritten,
      freezeMs: frozen.freezeMs,
      frozenMs: tReleased - tFrozen,
      injectedSyscalls,
      phaseMs: phases.ms,
      frozen: mode === 'lazy' ? frozen : null,
      token,
    };
  } catch (err) {
    flagWatch?.close();
    // Nothing of a lazy dump's images has been served yet: retracting them is still safe.
    if (committed) await writer.retract();
    else await writer.abort();
    frozen.resume();
    throw err;
  }
}
