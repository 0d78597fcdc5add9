/**
 * The lazy-pages engine: serves the userfaultfd faults of restored processes from a
 * PageSource, and pulls every other page in the background until all are in.
 *
 * Faults come first: the faulting page plus a window after it (doubling while faults are
 * sequential, back to one page otherwise), fetched on the fault lane and installed with
 * one batched call that wakes the waiting threads. The background fetches the remaining
 * pages in large chunks, starting near the latest fault, a few requests in flight, and
 * installs them on native threads (BackgroundInstaller) while the JS thread receives the
 * next ones and serves faults. A source that can install them itself (fetchInstalled: the
 * network client's lanes) gets them without their bytes reaching this thread.
 * REMOVE and UNMAP drop pages that must never be installed; REMAP moves them; FORK adds
 * the child, which misses what its parent missed.
 */
import {
  FaultLoop, Userfaultfd, type BackgroundEnd, type BackgroundInstaller, type Fault, type FaultBatch, type UffdEvent,
} from '@lazymig/uffd-rs';
import { silentLogger, type Logger } from '../log.js';
import type { InstallingFetch, PageSource, Priority } from './page-source.js';
import { DONE, MISSING, PageSpace, REQUESTED, type LazyRange, type Run } from './page-space.js';

export interface LazyTarget {
  /** pid of the restored process (for logs and kills). */
  pid: number;
  /** pid the pages belong to on the source. */
  sourcePid: number;
  uffd: Userfaultfd;
  /** Pages to fetch, by address in the restored process (= address in the dumped one). */
  ranges: ReadonlyArray<{ start: number; pages: number; /** address on the source, when it differs */ src?: number }>;
}

export interface LazyEngineOptions {
  pageSize: number;
  log?: Logger;
  /** Largest fault window in pages. Default 64. */
  maxWindow?: number;
  /** Background request size in pages. Default 512 (2 MiB of 4 KiB pages). */
  chunkPages?: number;
  /** Background requests in flight (sent, or received and not yet wholly installed). Default 8. */
  inFlight?: number;
  /**
   * Longest the JS thread installs received pages in one go before it lets the event loop
   * look for new faults, in ms. Default 0.3. Installing is the slow part on the destination
   * (every page is a fresh page of the target), so a received chunk is installed a slice at
   * a time: a fault never waits behind more than this much background work.
   */
  installSliceMs?: number;
  /**
   * Native threads installing background replies. Default 1. The event-loop FaultLoop's
   * guarantee holds for them too (see FaultLoop.backgroundInstaller).
   */
  installThreads?: number;
  /** Cap on background transfer, bytes per second (faults are never held back). Default: none. */
  maxBackgroundRate?: number;
  onProgress?: (s: LazyStats) => void;
}

export interface LazyStats {
  pagesTotal: number;
  pagesByFault: number;
  pagesByPrefetch: number;
  pagesByBackground: number;
  zeroFaults: number;
  faults: number;
  /** Faults on pages already asked for, which waited for their reply rather than ask again. */
  faultsWaited: number;
  bytes: number;
  remaining: number;
}

/** Fault service times, µs. */
export interface ServiceTimes {
  p50: number;
  p99: number;
  count: number;
}

export interface LazySummary extends LazyStats {
  /** Every fault served: the two kinds below together. */
  faultServiceUs: ServiceTimes;
  /**
   * Faults that waited for pages already on their way (a reply to an earlier request).
   * On a link slower than the workload nearly every such wait is a transfer's worth, and
   * when these are most of the faults, the overall p50 is one of them.
   */
  waitedServiceUs: ServiceTimes;
  /** The others: served from pages at hand, by their own request, or with a zero page. */
  otherServiceUs: ServiceTimes;
  totalMs: number;
  /**
   * CPU time of this whole process (every thread, user + system) over the same span as
   * totalMs. On a machine with few CPUs, the transfer is bound by it rather than by the
   * link, and it varies far less from run to run than the wall-clock time.
   */
  cpuMs: number;
}

/** A reply received and not yet wholly installed. */
interface Staged {
  p: Proc;
  run: Run;
  data: Uint8Array;
  /** Pages of the run before this one have been dealt with. */
  next: number;
  lane: 'fault' | 'background';
}

/** A run the source installs itself (fetchInstalled). */
interface Remote {
  p: Proc;
  run: Run;
  f: InstallingFetch;
  lane: Priority;
  /** Faults on its pages, waiting for its reply. */
  waiting: Waiting[];
}

/** A fault read at `t` whose thread waits for a reply. */
interface Waiting {
  fault: Fault;
  t: number;
  /** It waits for a reply to an earlier request (not one made for this fault). */
  onItsWay: boolean;
}

/** A contiguous part of a background reply handed to the installer threads. */
interface Job {
  s: Staged;
  /** Pages [from, from + count) of the run. */
  from: number;
  count: number;
}

/**
 * After the first hand-over, background transfer waits this long, or until a fault has been
 * served if one comes first: a process that has just resumed faults at once, and its first
 * faults would otherwise share both ends' CPUs with the first megabytes of background data
 * (measured: 7-15 ms for the first fault instead of ~1 ms).
 */
const BACKGROUND_HOLD_MS = 15;

/** Background request size, in pages, and how many are in flight (LazyEngineOptions). */
export const DEFAULT_CHUNK_PAGES = 512;
export const DEFAULT_IN_FLIGHT = 8;
/** Small requests (runs shorter than a chunk) in flight in the room of one chunk, at most. */
const MAX_REQUESTS_PER_CHUNK = 8;
/** Largest fault window, in pages (LazyEngineOptions.maxWindow). */
export const DEFAULT_MAX_WINDOW = 64;
/**
 * A fault on a page of a background request waits for that request's reply when at most
 * this many background requests are ahead of it: its reply is being read, or comes next
 * after the one being read. Further back, the page is asked for on the fault lane.
 */
const WAIT_BEHIND_REQUESTS = 2;
/** How often progress takes in the faults the receiving connections took (ms). */
const NEAR_FOLD_MS = 50;

/** Pages installed per installBatch call while draining staged replies. */
const SLICE_PAGES = 16;

interface Proc {
  pid: number;
  sourcePid: number;
  uffd: Userfaultfd;
  space: PageSpace;
  lastFaultPage: number;
  window: number;
  alive: boolean;
}

function cpuMsSince(start: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(start);
  return (d.user + d.system) / 1000;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

function serviceTimes(us: number[]): ServiceTimes {
  const sorted = Float64Array.from(us).sort();
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), count: sorted.length };
}

export class LazyPagesEngine {
  readonly stats: LazyStats = {
    pagesTotal: 0, pagesByFault: 0, pagesByPrefetch: 0, pagesByBackground: 0, zeroFaults: 0, faults: 0, faultsWaited: 0, bytes: 0, remaining: 0,
  };
  readonly #source: PageSource;
  readonly #P: number;
  readonly #log: Logger;
  readonly #maxWindow: number;
  readonly #chunk: number;
  readonly #inFlightMax: number;
  readonly #onProgress: ((s: LazyStats) => void) | undefined;
  readonly #maxRate: number;
  #backgroundBytes = 0;
  #rateTimer: NodeJS.Timeout | null = null;
  /** Background requests wait (BACKGROUND_HOLD_MS) while this timer runs. */
  #holdTimer: NodeJS.Timeout | null = null;
  readonly #procs = new Map<number, Proc>(); // by uffd fd
  readonly #loop: FaultLoop;
  #inFlight = 0;
  /** Pages of the background requests in flight. */
  #inFlightPages = 0;
  readonly #installer: BackgroundInstaller;
  /** Background jobs on the installer threads, by id. */
  readonly #jobs = new Map<number, Job>();
  /** Background replies with jobs on the installer threads, and how many jobs each. */
  readonly #installing = new Map<Staged, number>();
  #nextJob = 1;
  /** Runs the source is installing itself. */
  readonly #remote = new Set<Remote>();
  /** The source's fetchInstalled, for the lanes it installs itself (PageSource.installedLanes). */
  readonly #sourceInstalls: Partial<Record<Priority, NonNullable<PageSource['fetchInstalled']>>> = {};
  /** Received replies waiting to be installed, the ones from the fault lane first. */
  #staged: Staged[] = [];
  #drainScheduled = false;
  readonly #sliceMs: number;
  #rr = 0;
  #t0 = performance.now();
  #cpu0 = process.cpuUsage();
  /** Service times of the faults served other than by waiting for pages on their way (those: #waitedUs). */
  #serviceUs: number[] = [];
  #waitedUs: number[] = [];
  /** The loop's nearFaults counts already in `stats`. */
  #near = { waited: 0, installed: 0, pages: 0 };
  #nearFoldedAt = 0;
  #rangeList = new Float64Array(4 * 64);
  #finished = false;
  #sealed = false;
  #resolve!: (s: LazySummary) => void;
  #reject!: (e: Error) => void;
  readonly done: Promise<LazySummary>;

  constructor(source: PageSource, opts: LazyEngineOptions) {
    this.#source = source;
    this.#P = opts.pageSize;
    this.#log = opts.log ?? silentLogger;
    this.#maxWindow = opts.maxWindow ?? DEFAULT_MAX_WINDOW;
    this.#chunk = opts.chunkPages ?? DEFAULT_CHUNK_PAGES;
    this.#inFlightMax = opts.inFlight ?? DEFAULT_IN_FLIGHT;
    this.#sliceMs = opts.installSliceMs ?? 0.3;
    this.#onProgress = opts.onProgress;
    this.#maxRate = opts.maxBackgroundRate ?? Infinity;
    const fetchInstalled = source.fetchInstalled;
    if (fetchInstalled) for (const lane of source.installedLanes ?? []) this.#sourceInstalls[lane] = fetchInstalled;
    this.done = new Promise((res, rej) => {
      this.#resolve = res;
      this.#reject = rej;
    });
    // On the JS thread itself: reading an event and installing pages are then serialized, so
    // a page is never installed into a range the process has just unmapped or zapped.
    this.#loop = new FaultLoop((b) => this.#onBatch(b), { mode: 'event-loop' });
    this.#installer = this.#loop.backgroundInstaller((id, bytes, end) => this.#onInstalled(id, bytes, end), {
      threads: opts.installThreads ?? 1,
    });
  }

  add(t: LazyTarget): void {
    // totalMs counts from the first process handed over, not from the daemon's start.
    if (this.#procs.size === 0) {
      this.#startClocks();
      this.#holdBackground(BACKGROUND_HOLD_MS);
    }
    const space = new PageSpace(this.#P);
    for (const r of t.ranges) space.add(r.start, r.src ?? r.start, r.pages);
    this.#adopt(t.pid, t.sourcePid, t.uffd, space);
    this.stats.pagesTotal += space.remaining;
  }

  #adopt(pid: number, sourcePid: number, uffd: Userfaultfd, space: PageSpace): void {
    const p: Proc = { pid, sourcePid, uffd, space, lastFaultPage: -2, window: 1, alive: true };
    this.#procs.set(uffd.fd, p);
    this.#loop.add(uffd);
    this.#log.info('serving process', { pid, sourcePid, lazyPages: space.remaining, uffd: uffd.fd });
  }

  /** Starts background transfer; faults are served from add() on. */
  start(): void {
    this.#startClocks();
    this.#pump();
  }

  /** totalMs and cpuMs count from here. */
  #startClocks(): void {
    this.#t0 = performance.now();
    this.#cpu0 = process.cpuUsage();
  }

  /** Every process has been added: once their pages are in, the transfer is complete. */
  seal(): void {
    this.#sealed = true;
    this.#pump();
  }

  /** The restored processes still being served. */
  get pids(): number[] {
    return [...this.#procs.values()].filter((p) => p.alive && p.pid > 0).map((p) => p.pid);
  }

  /**
   * Stops serving (the caller kills the processes: a process left without its pages would
   * hang). The uffds stay open: a caller that goes on using registered memory itself must
   * close them first, or its munmap of it waits for someone to read the UNMAP event.
   */
  async abort(err: Error): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    if (this.#rateTimer) clearTimeout(this.#rateTimer);
    if (this.#holdTimer) clearTimeout(this.#holdTimer);
    this.#dropStaged();
    await this.#loop.stop();
    this.#reject(err);
  }

  #remaining(): number {
    let n = 0;
    for (const p of this.#procs.values()) if (p.alive) n += p.space.remaining;
    return n;
  }

  #onBatch(b: FaultBatch): void {
    // Events first: a fault in the batch may be about a range an event just changed.
    for (const e of b.events) this.#onEvent(e);
    const t = performance.now();
    // Several faults at once (threads resuming together): their requests leave together.
    const burst = b.faults.length > 1 && this.#source.hold !== undefined;
    if (burst) this.#source.hold!();
    try {
      for (const f of b.faults) {
        this.stats.faults++;
        this.#serveFault(f, t);
      }
      this.#pump();
    } finally {
      if (burst) this.#source.flush?.();
    }
  }

  /**
   * After an event took [start, start + len) away from where it was: a thread blocked in a
   * fault there (its page's install now stopped, or never to come) is not woken by the
   * kernel. Woken, it faults again and is served as its page now is (a zero page where it
   * was dropped), or meets whatever is at that address now.
   */
  #wakeAfter(p: Proc, start: number, len: number): void {
    if (len <= 0 || p.uffd.closed) return;
    try {
      p.uffd.wake(start, len);
    } catch (err) {
      this.#log.warn('wake after an event failed', { pid: p.pid, start, len, error: (err as Error).message });
    }
  }

  #onEvent(e: UffdEvent): void {
    const p = this.#procs.get(e.fd);
    if (!p) return;
    switch (e.kind) {
      case 'remove':
      case 'unmap': {
        const n = p.space.drop(e.start, e.end);
        if (n > 0) this.#log.debug(`${e.kind} drops lazy pages`, { pid: p.pid, start: e.start, end: e.end, pages: n });
        this.#wakeAfter(p, e.start, e.end - e.start);
        return;
      }
      case 'remap':
        p.space.remap(e.from, e.to, e.len);
        this.#wakeAfter(p, e.from, e.len);
        return;
      case 'fork': {
        const child = Userfaultfd.adopt(e.childFd);
        const space = p.space.fork();
        this.stats.pagesTotal += space.remaining;
        this.#adopt(-1, p.sourcePid, child, space);
        return;
      }
      case 'error':
        this.#log.error('userfaultfd error', { pid: p.pid, code: e.code, message: e.message });
        this.#gone(p);
        return;
    }
  }

  /** A fault read at `t`: served now, or left to wait for pages already on their way. */
  #serveFault(f: Fault, t: number): void {
    const p = this.#procs.get(f.fd);
    if (!p || !p.alive) return;
    const page = f.address;
    const r = p.space.find(page);
    const idx = r ? (page - r.dst) / this.#P : -1;
    if (!r || r.state[idx] === DONE) {
      // Not a page of the source (never touched before the dump, or dropped since): zero it.
      // Only wake the thread if an install got there first (a racing one, or the reply this
      // fault waited for), or if the page is no longer mapped there at all (munmap, mremap
      // while the fault waited): it then meets what is there now, and the process, alive,
      // keeps its other lazy pages. 'again' (an event queued since the read, not read yet)
      // wakes it too: it faults again, and is served once the event has been read; left
      // alone it would wait forever, since no reply ever brings a page outside the source's.
      const o = p.uffd.zeropage(page, this.#P);
      if (o.status === 'exists' || o.status === 'unmapped' || o.status === 'again') p.uffd.wake(page, this.#P);
      else if (o.status === 'gone') this.#gone(p);
      if (o.status === 'ok') this.stats.zeroFaults++;
      this.#serviceUs.push((performance.now() - t) * 1000);
      return;
    }
    const pageNo = page / this.#P;
    // Sequential: after the last fault or its window, or (the receiving connections take
    // most faults of a thread reading in order, and this thread never sees them) right
    // after a page that is in or on its way.
    const sequential = pageNo === p.lastFaultPage + 1 || pageNo === p.lastFaultPage + p.window || (idx > 0 && r.state[idx - 1] !== MISSING);
    p.window = sequential ? Math.min(p.window * 2, this.#maxWindow) : 1;
    p.lastFaultPage = pageNo;
    if (r.state[idx] === REQUESTED && (this.#serveFromStaged(p, r, idx, t) || this.#serveFromRemote(p, r, idx, f, t))) return;
    const run = p.space.claim(r, idx, p.window, true);
    if (!run) return;
    const fetchInstalled = this.#sourceInstalls.fault;
    if (fetchInstalled) this.#fetchInstalled(p, run, fetchInstalled, 'fault', { fault: f, t, onItsWay: false });
    else this.#fetch(p, run, 'fault', t);
  }

  #fetch(p: Proc, run: Run, lane: 'fault' | 'background', faultT?: number): void {
    const src = run.range.src + run.first * this.#P;
    if (lane === 'background') this.#sent(run);
    this.#source.fetch(p.sourcePid, src, run.count, lane).then(
      (data) => {
        if (this.#finished || !p.alive) {
          if (lane === 'background') this.#done(run);
          this.#source.release?.(data);
          this.#pump();
          return;
        }
        const s: Staged = { p, run, data, next: 0, lane };
        if (lane === 'fault') {
          // The faulting page first, with its own wake; the rest of the window is staged
          // ahead of background data.
          this.#installPart(s, 1, 'fault');
          if (faultT !== undefined) this.#serviceUs.push((performance.now() - faultT) * 1000);
          this.#releaseBackground();
          this.#staged.unshift(s);
          this.#scheduleDrain();
        } else this.#submit(s);
      },
      (err: Error) => {
        if (lane === 'background') this.#done(run);
        void this.#fail(new Error(`fetching pid ${p.sourcePid} 0x${src.toString(16)}+${run.count} pages: ${err.message}`));
      },
    );
  }

  /**
   * A fault on a page that has arrived but is not installed yet: install it (and the rest of
   * the fault window) from the staged reply now. False when the page is still on its way.
   */
  #serveFromStaged(p: Proc, range: LazyRange, idx: number, t: number): boolean {
    for (const s of this.#stagedAndInstalling()) {
      if (s.p !== p || s.run.range !== range) continue;
      const at = idx - s.run.first;
      if (at < s.next || at >= s.run.count) continue;
      const n = Math.min(p.window, s.run.count - at);
      const installed = this.#installRange(s, at, at + n);
      if (installed < 0) return false;
      if (this.#installing.has(s)) this.#tellInstaller(s, at, at + n);
      if (installed > 0) {
        this.stats.pagesByFault += 1;
        this.stats.pagesByPrefetch += installed - 1;
      }
      this.#serviceUs.push((performance.now() - t) * 1000);
      if (at === s.next) s.next = at + n;
      return true;
    }
    return false;
  }

  /**
   * A fault on a page of a run the source installs itself: if its reply has been read, the
   * fault window is installed from it now. If not, and the reply is near (a fault lane's, or
   * a background one at most WAIT_BEHIND_REQUESTS behind), the fault waits for it: its
   * install wakes the thread. Asking for the page again on the fault lane would have the
   * source read and send it twice, which on two CPUs costs the whole transfer more than the
   * wait costs the thread (docs/PERFORMANCE.md, "Faults on pages on their way").
   */
  #serveFromRemote(p: Proc, range: LazyRange, idx: number, fault: Fault, t: number): boolean {
    // Background requests are answered in the order they were made, which is this set's.
    let ahead = 0;
    for (const remote of this.#remote) {
      const { p: rp, run, f, lane } = remote;
      if (rp !== p || run.range !== range || idx < run.first || idx >= run.first + run.count) {
        if (lane === 'background') ahead++;
        continue;
      }
      const at = idx - run.first;
      const n = Math.min(p.window, run.count - at);
      if (!f.installNow(at * this.#P, n * this.#P)) {
        if (lane === 'background' && ahead > WAIT_BEHIND_REQUESTS) return false;
        remote.waiting.push({ fault, t, onItsWay: true });
        this.stats.faultsWaited++;
        return true;
      }
      const installed = p.space.finish(range, idx, n);
      this.stats.pagesByFault += Math.min(1, installed);
      this.stats.pagesByPrefetch += Math.max(0, installed - 1);
      this.stats.bytes += installed * this.#P;
      this.#serviceUs.push((performance.now() - t) * 1000);
      return true;
    }
    return false;
  }

  *#stagedAndInstalling(): Iterable<Staged> {
    yield* this.#staged;
    yield* this.#installing.keys();
  }

  /**
   * Hands a background reply to the installer threads: one job per span of pages still
   * wanted. Pages already DONE are left out — installed by a fault meanwhile, or dropped
   * by an event JS has seen (the installer only guards against events read later).
   */
  #submit(s: Staged): void {
    const { p, run, data } = s;
    const { range, first } = run;
    let jobs = 0;
    let i = 0;
    while (i < run.count) {
      if (range.state[first + i] === DONE) {
        i++;
        continue;
      }
      let j = i;
      while (j < run.count && range.state[first + j] !== DONE) j++;
      const id = this.#nextJob++;
      this.#jobs.set(id, { s, from: i, count: j - i });
      this.#installer.submit(id, p.uffd, range.dst + (first + i) * this.#P, data.subarray(i * this.#P, j * this.#P));
      jobs++;
      i = j;
    }
    if (jobs > 0) this.#installing.set(s, jobs);
    else this.#retire(s);
  }

  /**
   * Pages [from, to) of a reply the installer threads are working on are in now (installed
   * here for a fault, or present already): its jobs pass over them rather than find each
   * one present with a UFFDIO_COPY that allocates and fills a page before it fails.
   */
  #tellInstaller(s: Staged, from: number, to: number): void {
    for (const [id, job] of this.#jobs) {
      if (job.s !== s) continue;
      const a = Math.max(from, job.from);
      const b = Math.min(to, job.from + job.count);
      if (a < b) this.#installer.present(id, (a - job.from) * this.#P, (b - a) * this.#P);
    }
  }

  /** The installer threads are done with a job. */
  #onInstalled(id: number, bytes: number, end: BackgroundEnd): void {
    const job = this.#jobs.get(id);
    if (!job) return;
    this.#jobs.delete(id);
    const { s, from, count } = job;
    this.#installedElsewhere(s.p, s.run, from, count, bytes, end);
    const left = (this.#installing.get(s) ?? 1) - 1;
    if (left > 0) {
      this.#installing.set(s, left);
      return;
    }
    this.#installing.delete(s);
    this.#retire(s);
  }

  /**
   * Pages [from, from + count) of a run were installed off this thread (by the installer
   * threads, or by the source), `bytes` of them from `from` on; a fault window's (`lane`
   * 'fault') first page is the faulting one.
   */
  #installedElsewhere(p: Proc, run: Run, from: number, count: number, bytes: number, end: BackgroundEnd, lane: Priority = 'background'): void {
    if (this.#finished || !p.alive) return;
    const n = Math.min(count, bytes / this.#P);
    const installed = n > 0 ? p.space.finish(run.range, run.first + from, n) : 0;
    if (lane === 'fault') {
      this.stats.pagesByFault += Math.min(1, installed);
      this.stats.pagesByPrefetch += Math.max(0, installed - 1);
    } else this.stats.pagesByBackground += installed;
    this.stats.bytes += installed * this.#P;
    if (end === 'gone') this.#gone(p);
    else if (n < count) {
      // An event came (or is waiting) since the pages were asked for: they are fetched
      // again unless the event dropped them.
      if (end === 'failed') this.#log.warn('install failed', { lane, pid: p.pid, address: run.range.dst + (run.first + from + n) * this.#P });
      p.space.release(run.range, run.first + from + n, count - n);
    }
  }

  /**
   * Asks the source for a run it installs itself: a background run, or a fault window
   * (`lane` 'fault', for `fault`, which then waits for it). The target is taken now, when
   * every event read so far has been dealt with: an event read after this makes the install
   * stop, and the pages it did not install are decided about again.
   */
  #fetchInstalled(p: Proc, run: Run, fetchInstalled: NonNullable<PageSource['fetchInstalled']>, lane: Priority, fault?: Waiting): void {
    const dst = run.range.dst + run.first * this.#P;
    const src = run.range.src + run.first * this.#P;
    const background = lane === 'background';
    if (background) this.#sent(run);
    const r: Remote = { p, run, f: fetchInstalled(p.sourcePid, src, run.count, this.#loop.installTarget(p.uffd, dst), lane), lane, waiting: fault ? [fault] : [] };
    this.#remote.add(r);
    r.f.done.then(
      ({ bytes, end }) => {
        this.#remote.delete(r);
        if (background) this.#done(run);
        else this.#releaseBackground();
        this.#installedElsewhere(p, run, 0, run.count, bytes, end, lane);
        this.#endWaits(r, bytes);
        this.#pump();
      },
      (err: Error) => {
        this.#remote.delete(r);
        if (background) this.#done(run);
        void this.#fail(new Error(`fetching pid ${p.sourcePid} 0x${src.toString(16)}+${run.count} pages: ${err.message}`));
      },
    );
  }

  /**
   * A run's reply is dealt with, `bytes` of it in from its start: the faults that waited for
   * it (and a fault window's own fault) are done if it installed their page, as that
   * install woke their thread off this one (their wait counts until now, a little more than
   * it was). The others are served again as their page now is: released to be fetched
   * again, or dropped by an event (whose wake may have served them already).
   */
  #endWaits(r: Remote, bytes: number): void {
    const now = performance.now();
    const { p, run } = r;
    const installedTo = run.first + bytes / this.#P;
    for (const { fault, t, onItsWay } of r.waiting) {
      const idx = (fault.address - run.range.dst) / this.#P;
      const installed = p.space.find(fault.address) === run.range && idx >= run.first && idx < installedTo && run.range.state[idx] === DONE;
      if (installed) (onItsWay ? this.#waitedUs : this.#serviceUs).push((now - t) * 1000);
      else this.#serveFault(fault, t);
    }
  }

  /**
   * Pages [first, first + count) of a range were installed here: a background run the
   * source is installing passes over them rather than find each one present.
   */
  #tellRemote(p: Proc, range: LazyRange, first: number, count: number): void {
    for (const { p: rp, run, f } of this.#remote) {
      if (rp !== p || run.range !== range) continue;
      const a = Math.max(first, run.first);
      const b = Math.min(first + count, run.first + run.count);
      if (a < b) f.present((a - run.first) * this.#P, (b - a) * this.#P);
    }
  }

  /** A background reply is wholly dealt with: its buffer goes back, another request may go. */
  #retire(s: Staged): void {
    this.#source.release?.(s.data);
    this.#done(s.run);
    this.#pump();
  }

  #scheduleDrain(): void {
    if (this.#drainScheduled || this.#staged.length === 0) return;
    this.#drainScheduled = true;
    setImmediate(() => {
      this.#drainScheduled = false;
      this.#drain();
    });
  }

  /**
   * Installs staged pages a slice at a time for at most installSliceMs, then yields to the
   * event loop (where new faults are read) and comes back.
   */
  #drain(): void {
    const end = performance.now() + this.#sliceMs;
    while (this.#staged.length > 0 && !this.#finished) {
      const s = this.#staged[0]!;
      if (s.p.alive && s.next < s.run.count) this.#installPart(s, SLICE_PAGES, s.lane === 'fault' ? 'prefetch' : 'background');
      if (!s.p.alive || s.next >= s.run.count) {
        this.#staged.shift();
        this.#source.release?.(s.data);
        if (s.lane === 'background') this.#done(s.run);
        this.#pump();
      }
      if (performance.now() >= end) break;
    }
    this.#scheduleDrain();
  }

  /** Installs the next up-to-max pages of a staged reply, crediting them to `as`. */
  #installPart(s: Staged, max: number, as: 'fault' | 'prefetch' | 'background'): void {
    const from = s.next;
    const to = Math.min(s.run.count, from + max);
    s.next = to;
    const installed = this.#installRange(s, from, to);
    if (installed < 0) {
      // The address space is changing (an event is on its way) or the process is gone:
      // whatever of this reply is not in yet is fetched again (or dropped) later.
      s.p.space.release(s.run.range, s.run.first + from, s.run.count - from);
      s.next = s.run.count;
      return;
    }
    if (as === 'background') this.stats.pagesByBackground += installed;
    else if (as === 'prefetch') this.stats.pagesByPrefetch += installed;
    else {
      this.stats.pagesByFault += Math.min(1, installed);
      this.stats.pagesByPrefetch += Math.max(0, installed - 1);
    }
  }

  /**
   * Installs pages [from, to) of a staged reply that are still wanted, in one batched call.
   * Returns how many were installed, or -1 when none could be (EAGAIN, or the process is gone).
   */
  #installRange(s: Staged, from: number, to: number): number {
    const { p, run, data } = s;
    if (!p.alive || this.#finished) return -1;
    const { range, first } = run;
    // installBatch is synchronous: one reused range list serves every call on this path.
    if (this.#rangeList.length < 4 * (to - from)) this.#rangeList = new Float64Array(4 * (to - from));
    const ranges = this.#rangeList;
    let n = 0;
    let i = from;
    while (i < to) {
      if (range.state[first + i] === DONE) {
        i++;
        continue;
      }
      let j = i;
      while (j < to && range.state[first + j] !== DONE) j++;
      ranges[n++] = range.dst + (first + i) * this.#P;
      ranges[n++] = i * this.#P;
      ranges[n++] = (j - i) * this.#P;
      ranges[n++] = 0; // RangeKind.copy
      i = j;
    }
    if (n === 0) return 0;
    const res = p.uffd.installBatch(data, ranges.subarray(0, n));
    if (res.gone > 0) {
      this.#gone(p);
      return -1;
    }
    if (res.again > 0 || res.unmapped > 0) {
      // An event is on its way (or read, for a range unmapped or moved): these pages are
      // decided again later.
      p.space.release(range, first + from, to - from);
      return -1;
    }
    const installed = this.#finishRuns(p, range, ranges, n);
    this.stats.bytes += installed * this.#P;
    return installed;
  }

  #finishRuns(p: Proc, range: LazyRange, flat: Float64Array, len: number): number {
    let n = 0;
    for (let k = 0; k < len; k += 4) {
      const first = (flat[k]! - range.dst) / this.#P;
      const count = flat[k + 2]! / this.#P;
      n += p.space.finish(range, first, count);
      if (this.#remote.size > 0) this.#tellRemote(p, range, first, count);
    }
    return n;
  }

  #gone(p: Proc): void {
    if (!p.alive) return;
    p.alive = false;
    this.#log.info('process gone; its remaining pages are dropped', { pid: p.pid, remaining: p.space.remaining });
    this.#loop.remove(p.uffd.fd);
    p.uffd.close();
  }

  #sent(run: Run): void {
    this.#inFlight++;
    this.#inFlightPages += run.count;
  }

  #done(run: Run): void {
    this.#inFlight--;
    this.#inFlightPages -= run.count;
  }

  /**
   * Room for another background request: as many pages in flight as inFlight whole chunks.
   * Runs end at a VMA's end, so in a process of many small mappings each request is small,
   * and counting requests would leave the link idle between round trips.
   */
  #roomInFlight(): boolean {
    return this.#inFlightPages < this.#inFlightMax * this.#chunk && this.#inFlight < this.#inFlightMax * MAX_REQUESTS_PER_CHUNK;
  }

  /** Keeps background requests in flight; finishes when nothing is left. */
  #pump(): void {
    if (this.#finished) return;
    const procs = [...this.#procs.values()].filter((p) => p.alive && p.space.remaining > 0);
    while (this.#roomInFlight() && procs.length > 0) {
      if (this.#holdTimer || this.#overRate()) break;
      const p = procs[this.#rr++ % procs.length]!;
      // Background goes on from the latest fault the loop read, also one a receiving
      // connection took (this thread no longer sees every fault).
      const hint = p.uffd.closed ? 0 : this.#loop.lastFault(p.uffd);
      const run = p.space.nextMissing(hint, this.#chunk);
      if (!run) {
        procs.splice(procs.indexOf(p), 1);
        continue;
      }
      this.#backgroundBytes += run.count * this.#P;
      const fetchInstalled = this.#sourceInstalls.background;
      if (fetchInstalled) this.#fetchInstalled(p, run, fetchInstalled, 'background');
      else this.#fetch(p, run, 'background');
    }
    this.stats.remaining = this.#remaining();
    if (this.#onProgress) {
      // A native call each: not on every reply.
      if (performance.now() - this.#nearFoldedAt >= NEAR_FOLD_MS) this.#foldNearFaults();
      this.#onProgress(this.stats);
    }
    if (this.#sealed && this.stats.remaining === 0 && this.#inFlight === 0) void this.#complete();
  }

  #holdBackground(ms: number): void {
    this.#holdTimer = setTimeout(() => this.#releaseBackground(), ms);
  }

  #releaseBackground(): void {
    if (!this.#holdTimer) return;
    clearTimeout(this.#holdTimer);
    this.#holdTimer = null;
    this.#pump();
  }

  /** Past the background rate cap: come back when the budget allows another request. */
  #overRate(): boolean {
    if (this.#maxRate === Infinity) return false;
    const allowed = ((performance.now() - this.#t0) / 1000) * this.#maxRate;
    if (this.#backgroundBytes <= allowed) return false;
    if (!this.#rateTimer) {
      const waitMs = ((this.#backgroundBytes - allowed) / this.#maxRate) * 1000;
      this.#rateTimer = setTimeout(() => {
        this.#rateTimer = null;
        this.#pump();
      }, Math.max(1, waitMs));
    }
    return true;
  }

  #dropStaged(): void {
    // Stopping waits for the threads: nothing reads the buffers after this.
    this.#installer.stop();
    for (const s of this.#staged) this.#source.release?.(s.data);
    for (const s of this.#installing.keys()) this.#source.release?.(s.data);
    this.#staged = [];
    this.#installing.clear();
    this.#jobs.clear();
  }

  async #complete(): Promise<void> {
    if (this.#finished) return;
    this.#finished = true;
    // Every page is in: what is left staged (the tail of a fault window) is not needed.
    this.#dropStaged();
    try {
      await this.#source.complete();
      this.#foldNearFaults();
      // Every page is in: closing the uffds now cannot turn a missing page into a zero page.
      await this.#loop.stop();
      for (const p of this.#procs.values()) if (!p.uffd.closed) p.uffd.close();
      this.#resolve({
        ...this.stats,
        faultServiceUs: serviceTimes(this.#serviceUs.concat(this.#waitedUs)),
        waitedServiceUs: serviceTimes(this.#waitedUs),
        otherServiceUs: serviceTimes(this.#serviceUs),
        totalMs: performance.now() - this.#t0,
        cpuMs: cpuMsSince(this.#cpu0),
      });
    } catch (err) {
      this.#reject(err as Error);
    }
  }

  /**
   * Counts the faults the receiving connections took as the loop read them (FaultLoop.
   * nearFaults), which this thread never saw. Their pages are in the background count of
   * the reply they came from (this thread marks a reply's pages in when it hears of it),
   * so a window installed for a fault moves from there to the fault and prefetch counts.
   */
  #foldNearFaults(): void {
    this.#nearFoldedAt = performance.now();
    const n = this.#loop.nearFaults();
    const waited = n.waited - this.#near.waited;
    const installed = n.installed - this.#near.installed;
    const pages = n.pages - this.#near.pages;
    this.#near = { waited: n.waited, installed: n.installed, pages: n.pages };
    this.stats.faults += waited + installed;
    this.stats.faultsWaited += waited;
    this.stats.pagesByFault += installed;
    this.stats.pagesByPrefetch += pages - installed;
    this.stats.pagesByBackground -= pages;
    for (const us of n.serviceUs) this.#serviceUs.push(us);
    for (const us of n.waitedUs) this.#waitedUs.push(us);
  }

  async #fail(err: Error): Promise<void> {
    if (this.#finished) return;
    this.#log.error('lazy transfer failed', { error: err.message });
    await this.abort(err);
  }
}
