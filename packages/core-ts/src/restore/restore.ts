/**
 * `lazymig restore`: rebuild a dumped process tree from its images.
 *
 *  1. read and check the images, and everything they refer to, before creating anything
 *     (plan.ts): a refusal leaves nothing behind;
 *  2. start a stub, seize it, map the control area, fork the tree from it (tree.ts);
 *  3. rebuild each process: address space, pages, mm, threads, files, limits, signals,
 *     per-thread state; lazy ranges go to the lazy hook (a userfaultfd) instead of pages;
 *  4. only when every process is rebuilt: give each thread its registers and let go
 *     (the leader unmaps the control area as its last syscall and is detached at its exit).
 * Any failure before step 4 kills whatever was created.
 */
import { reapTracees } from '../tracees.js';
import { entriesForLazyRestore, vmasOverlapping } from '../lazy/plan.js';
import { UFFDIO_STRUCT_BYTES, type RemoteProcess } from '../lazy/attach.js';
import { processVmWrite, ptrace, setThreadAffinity } from '@lazymig/uffd-rs';
import { awaitImages, openPagesReader, readImages, type LoadedImages, type PagemapEntry, type Vma } from '../image/index.js';
import { pinToOneCpu, type Pin } from '../host/affinity.js';
import { CONTROL_SIZE, controlArea, type ControlArea } from './control.js';

import { restoreFds, restoreFsState, restoreLimits, ourTerminalFd } from './files.js';
import { fillPages, finishVmas, mapVmas, unmapStub } from './memory.js';
import { setMm } from './mm.js';
import { checkImages, findHole, hostFacts, RestoreRefusedError, type Range } from './plan.js';
import { rehearseRestore } from './rehearsal.js';
import { injectionStats, LIST_ENTRY, type Remote } from './remote.js';
import { startStub, type StartedStub, type StubExit } from './stub.js';
import { checkXstate, cloneThreads, restoreSigactions, restoreThreadState, setFinalState } from './threads.js';
import { forkTree, prepareRoot, seizeStub, type SeizedStub, type StubProcess } from './tree.js';
import { moveSpecialMappings } from './vdso.js';

/** What a lazy restore gets for each process before it resumes (see LazyHook). */
export interface LazyRestoreTarget {
  /** the pid in the images */
  dumpedPid: number;
  /** the restored process (stopped, rebuilt but for the lazy pages) */
  pid: number;
  /** lazy page ranges (merged, page aligned): nothing is mapped in them yet but empty memory */
  ranges: Range[];
  /** the dumped VMAs that contain lazy ranges */
  vmas: Vma[];
  /** injected syscalls in its main thread, with scratch memory for arguments */
  remote: Remote;
  /** the same, in the shape lazy/attach.ts's attachUserfaultfd takes */
  process: RemoteProcess;
}

/**
 * Called for every process of a lazy restore once its eager state is in, before anything
 * resumes: create the userfaultfd inside the target (remote), register `ranges`, take the fd
 * out (pidfd_getfd) and hand it to the lazy-pages daemon. Throwing aborts the restore.
 * Every page the kernel touches during the rebuild is eager by then (see KERNEL-NOTES).
 */
export type LazyHook = (t: LazyRestoreTarget) => void | Promise<void>;

export type RestoreProgress =
  | { phase: 'waiting'; reason: string }
  | { phase: 'checked'; processes: number; threads: number; presentPages: number }
  | { phase: 'pages'; pid: number; bytes: number; totalBytes: number }
  | { phase: 'rebuilt'; pid: number; restoredPid: number };

export interface RestoreOptions {
  imagesDir: string;
  /** the images' terminal fds become this restore's terminal; the tree stays in our session */
  shellJob?: boolean;
  lazy?: LazyHook;
  /** pin tracer and stubs to one CPU while rebuilding (default true) */
  pin?: boolean;
  /** check every page read from the images against its CRC (default true) */
  verifyPages?: boolean;
  /**
   * Restore into a new pid namespace in which every process and thread has its dumped
   * pid/tid (see pidns.ts). Its pid 1 is the stub's init; a dumped pid 1 is refused.
   */
  pidNs?: boolean;
  /**
   * The images may still be arriving (being copied): wait up to this many ms for all of them
   * to be there and check out (image/arrival.ts). Lets a restore start up before the dump.
   */
  awaitImagesMs?: number;
  onProgress?: (p: RestoreProgress) => void;
  onWarning?: (msg: string) => void;
}

export interface RestoreResult {
  /** the restored root's pid (as seen from our pid namespace) */
  rootPid: number;
  /** dumped pid -> restored pid (as seen from our pid namespace) */
  pids: Map<number, number>;
  /**
   * --pid-ns: the namespace's init (our pid for it; it is pid 1 there). Inside the
   * namespace every restored process has its dumped pid.
   */
  pidNs: { initPid: number } | null;
  processes: number;
  threads: number;
  pages: { present: number; lazy: number; zero: number };
  injectedSyscalls: number;
  /** ptrace trips those took (a list of syscalls is one) */
  injectionTrips: number;
  /** from reading the images (with awaitImagesMs: from their arrival) to the last detach */
  ms: number;
  /** where the time went (ms): images, check, stub, root, fork, layout, pages, state, lazy-handover, finish */
  phaseMs: Record<string, number>;
  /** CPU the rebuild ran pinned on, null when not pinned */
  pinnedCpu: number | null;
  /** resolves when the restored root ends (its exit status or signal) */
  exited: Promise<StubExit>;
  /** the root lives on without its reaper parent (--restore-detached): reparented to init */
  detach(): void;
}

function lazyRanges(entries: readonly PagemapEntry[], P: number): Range[] {
  const out: Range[] = [];
  for (const e of entries) {
    if (e.kind !== 'lazy') continue;
    const end = e.start + e.pages * P;
    const last = out[out.length - 1];
    if (last && last.end === e.start) last.end = end;
    else out.push({ start: e.start, end });
  }
  return out;
}

function setCreds(remote: Remote, p: StubProcess): void {
  const c = p.image.core.creds;
  if ([c.uid, c.euid, c.suid, c.gid, c.egid, c.sgid].every((x) => x === 0) && c.groups.length === 0) return;
  const scratch = remote.scratch!;
  scratch.reset();
  const g = Buffer.alloc(Math.max(4, c.groups.length * 4));
  c.groups.forEach((x, i) => g.writeUInt32LE(x, i * 4));
  const at = scratch.put(g);
  remote.call('setgroups', 116, [c.groups.length, at]);
  remote.call('setresgid', 119, [c.gid, c.egid, c.sgid]);
  remote.call('setresuid', 117, [c.uid, c.euid, c.suid]);
}

/** RemoteProcess.syscalls through `remote`'s runner, with its list at `list` (room reserved by the caller). */
function runListAt(remote: Remote, list: number): (calls: ReadonlyArray<{ nr: number; args: Array<number | bigint> }>) => bigint[] {
  return (calls) => remote.rawList(list, calls);
}

class Rebuilder {
  readonly created: StubProcess[] = [];
  readonly counts = { present: 0, lazy: 0, zero: 0 };
  readonly phaseMs: Record<string, number> = {};
  last = performance.now();
  lap(name: string): void {
    const now = performance.now();
    this.phaseMs[name] = (this.phaseMs[name] ?? 0) + (now - this.last);
    this.last = now;
  }
  constructor(
    readonly images: LoadedImages,
    readonly opts: RestoreOptions,
    readonly area: ControlArea,
    readonly pin: Pin,
  ) {}

  warn(msg: string): void {
    this.opts.onWarning?.(msg);
  }

  async rebuild(p: StubProcess): Promise<void> {
    const core = p.image.core;
    // A lazy restore of eager images leaves their anonymous pages to the daemon too.
    const entries = this.opts.lazy ? entriesForLazyRestore(this.images.inventory, p.image) : p.image.pagemap.entries;
    const P = this.images.inventory.pageSize;
    const leader = p.leader;
    const areaRange = { start: this.area.addr, end: this.area.addr + this.area.size };

    // Address space.
    const stubMaps = unmapStub(leader, areaRange);
    moveSpecialMappings(leader, stubMaps, core.vmas, [areaRange, ...core.vmas]);
    const { widened } = mapVmas(leader, core.vmas, entries, P);
    this.lap('layout');
    const reader = await openPagesReader(this.images, p.image.pid, { verifyReads: this.opts.verifyPages ?? true });
    try {
      this.counts.present += await fillPages(p.pid, reader, entries, (f) => this.opts.onProgress?.({ phase: 'pages', pid: p.pid, ...f }));
    } finally {
      await reader.close();
    }
    for (const e of entries) if (e.kind !== 'present') this.counts[e.kind] += e.pages;
    this.lap('pages');
    finishVmas(leader, core.vmas, widened, (m) => this.warn(m));

    // mm, then threads (they inherit comm), then what the process shares.
    setMm(leader, core);
    p.threads = cloneThreads(leader, core.threads, this.area, this.opts.pidNs ?? false);
    p.tids.push(...p.threads.map((t) => t.tid));
    restoreFds(leader, core.fds, this.opts.shellJob ?? false);
    const state = leader.list();
    restoreFsState(state, core);
    restoreLimits(state, p.pid, core, (m) => this.warn(m));
    restoreSigactions(state, core.sigactions);
    state.run();
    restoreThreadState(leader, core.threads[0]!);
    p.threads.forEach((t, i) => restoreThreadState(t, core.threads[i + 1]!));

    this.lap('state');
    if (this.opts.lazy) {
      const ranges = lazyRanges(entries, P);
      if (ranges.length > 0) {
        const vmas = vmasOverlapping(core.vmas, ranges);
        const sc = leader.scratch!;
        sc.reset();
        // The scratch shared between the uffdio structs (the API one, then one per VMA) and
        // the runner's entries (one per VMA, plus the API call, the close and the end mark):
        // the hand-over registers this many VMAs a trip.
        const S = UFFDIO_STRUCT_BYTES;
        const perTrip = Math.floor((sc.size - S - 3 * LIST_ENTRY) / (S + LIST_ENTRY));
        const scratchBytes = S + perTrip * S;
        const proc: RemoteProcess = {
          pid: p.pid,
          syscall: (nr: number, args: Array<number | bigint>) => leader.raw(nr, args),
          scratch: sc.reserve(scratchBytes),
          scratchBytes,
          ...(leader.runner !== null ? { syscalls: runListAt(leader, sc.reserve((perTrip + 3) * LIST_ENTRY)), maxCalls: perTrip + 2 } : {}),
          write: (address: number, data: Uint8Array) => void processVmWrite(p.pid, new Float64Array([address, data.length]), data),
          read: (address: number, length: number) => sc.read(address, length),
        };
        await this.opts.lazy({ dumpedPid: p.image.pid, pid: p.pid, ranges, vmas, remote: leader, process: proc });
      }
      this.lap('lazy-handover');
    }
    setCreds(leader, p);
    this.lap('state');
    this.opts.onProgress?.({ phase: 'rebuilt', pid: p.image.pid, restoredPid: p.pid });
  }

  /** The point of no return for one process: affinity, control area gone, registers, detach. */
  finish(p: StubProcess): void {
    const core = p.image.core;
    const all = [p.leader, ...p.threads];
    if (this.pin.cpu !== null && this.pin.before.length > 0) for (const r of all) setThreadAffinity([...this.pin.before], r.tid);
    // The leader's last syscall: unmap the control area; it stops at the syscall exit.
    p.leader.munmap(this.area.addr, this.area.size);
    p.threads.forEach((t, i) => setFinalState(t.tid, core.threads[i + 1]!));
    setFinalState(p.pid, core.threads[0]!);
    for (const r of [...p.threads, p.leader]) {
      const sigs = r.pendingSignals;
      ptrace.detach(r.tid, sigs[0] ?? 0);
      for (const s of sigs.slice(1)) process.kill(r.pid, s);
    }
  }

  /** Kills everything created so far (all are our tracees: no pid can have been reused). */
  killAll(): void {
    for (const p of this.created) {
      try {
        process.kill(p.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    reapTracees(this.created.flatMap((p) => p.tids));
  }
}

/**
 * Restores the images in `opts.imagesDir`. Resolves once every restored process runs; the
 * result tells how the root ends. Rejects (with nothing left running) on any problem.
 */
export async function restore(opts: RestoreOptions): Promise<RestoreResult> {
  const tStart = performance.now();
  // Needs nothing from the images (but with a pid namespace, the root's pid): started and
  // seized while they are read, or arrive. Pinned once they are here (an early pin would keep a restore
  // waiting on a busy CPU while the other one idles).
  const earlyStub = opts.pidNs ? null : startStub({});
  const early = earlyStub?.then((s) => ({ stub: s, seized: seizeStub(s.pid) })) ?? null;
  early?.catch(() => undefined); // awaited (or killed) below
  let pin: Pin | null = null;
  let stub: StartedStub | undefined;
  let rb: Rebuilder | undefined;
  let tImages = tStart;
  let callsBefore = injectionStats.calls;
  let tripsBefore = injectionStats.trips;
  let threads = 0;
  try {
    const images =
      opts.awaitImagesMs === undefined
        ? await readImages(opts.imagesDir)
        : await awaitImages(opts.imagesDir, {
            timeoutMs: opts.awaitImagesMs,
            onWaiting: (why) => opts.onProgress?.({ phase: 'waiting', reason: why }),
            warmUp: async () => {
              hostFacts();
              await rehearseRestore(restore);
            },
          });
    tImages = performance.now();
    // From here: an armed restore has rehearsed meanwhile (rehearsal.ts).
    callsBefore = injectionStats.calls;
    tripsBefore = injectionStats.trips;
    checkImages(images, { shellJob: opts.shellJob ?? false, lazy: opts.lazy !== undefined, pidNs: opts.pidNs ?? false });
    if (opts.shellJob && images.processes.some((p) => p.core.fds.some((f) => f.kind === 'tty')) && ourTerminalFd() === null)
      throw new RestoreRefusedError([{ pid: images.inventory.rootPid, code: 'options', message: '--shell-job: the images have a terminal open, but this restore has no terminal to give them' }]);
    threads = images.processes.reduce((n, p) => n + p.core.threads.length, 0);
    const presentPages = images.processes.reduce((n, p) => n + p.pagemap.entries.reduce((m, e) => m + (e.kind === 'present' ? e.pages : 0), 0), 0);
    opts.onProgress?.({ phase: 'checked', processes: images.processes.length, threads, presentPages });

    pin = pinToOneCpu(opts.pin ?? true);
    const tStub = performance.now();
    const rootImage = images.processes[0]!;
    let seized: SeizedStub;
    if (early) ({ stub, seized } = await early);
    else {
      stub = await startStub({ pidNs: rootImage.pid });
      seized = seizeStub(stub.pid);
    }
    // A hole for the control area in the stub's layout and every dumped one.
    const taken: Range[] = seized.maps.filter((v) => v.kind !== 'vsyscall');
    for (const p of images.processes) taken.push(...p.core.vmas.filter((v) => v.kind !== 'vsyscall'));
    const area = controlArea(findHole(taken, CONTROL_SIZE));
    rb = new Rebuilder(images, opts, area, pin);
    rb.phaseMs[opts.awaitImagesMs === undefined ? 'images' : 'images-arrived'] = tImages - tStart;
    rb.phaseMs['check'] = tStub - tImages;
    rb.last = tStub;
    rb.lap('stub');
    // On our CPU, like the tracer (set from here: every injection after it is then a switch
    // on one CPU); the tree forks and clones from the root and inherits it.
    if (pin.cpu !== null) setThreadAffinity([pin.cpu], seized.pid);
    const root = prepareRoot(seized, rootImage, area, !(opts.shellJob ?? false));
    rb.created.push(root);
    rb.lap('root');
    for (const p of images.processes) checkXstate(stub.pid, p.core.threads, p.pid);
    const rbx = rb;
    const all = forkTree(images, root, area, (p) => rbx.created.push(p), opts.pidNs ?? false);
    rb.lap('fork');
    for (const p of all) await rb.rebuild(p);
    // Everything is in place: let go, children first (a parent may wait for them at once).
    for (const p of [...all].reverse()) rb.finish(p);
    rb.lap('finish');
  } catch (err) {
    rb?.killAll();
    stub ??= await earlyStub?.catch(() => undefined);
    if (!rb && stub) {
      try {
        process.kill(stub.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    stub?.kill();
    pin?.release();
    throw err;
  }
  pin.release();
  const s = stub;
  return {
    rootPid: s.pid,
    pids: new Map(rb.created.map((p) => [p.image.pid, p.pid])),
    pidNs: s.initPid !== null ? { initPid: s.initPid } : null,
    processes: rb.created.length,
    threads,
    pages: { ...rb.counts },
    injectedSyscalls: injectionStats.calls - callsBefore,
    injectionTrips: injectionStats.trips - tripsBefore,
    ms: performance.now() - (opts.awaitImagesMs === undefined ? tStart : tImages),
    phaseMs: rb.phaseMs,
    pinnedCpu: pin.cpu,
    exited: s.exited,
    detach: () => s.release(),
  };
}


