/**
 * Freezing a process tree with ptrace, and letting it go again.
 *
 * Every thread is seized and interrupted. A tree that forks or clones while we walk it
 * gains members we have not seen, so the walk repeats until a pass finds nothing new: at
 * that point every member is stopped and can no longer create others.
 */
import { reapTracees } from '../tracees.js';
import { ptrace, type StopState } from '@lazymig/uffd-rs';
import { readTree, type TreeProcess } from '../proc/index.js';
import { isExitingThread, whyUntraceable } from './untraceable.js';

const STOP_TIMEOUT_MS = 2_000;
const MAX_PASSES = 50;

export class FreezeError extends Error {
  override readonly name = 'FreezeError';
}

export interface FrozenTree {
  readonly root: number;
  /** Parents before children, each with every thread. */
  readonly processes: readonly TreeProcess[];
  /** Milliseconds from the first seize until the last thread stopped. */
  readonly freezeMs: number;
  /** Detaches every thread: the tree runs on as if nothing happened. Idempotent. */
  resume(): void;
  /** SIGKILLs every process, then detaches and reaps them. Idempotent. */
  kill(): void;
  /**
   * SIGKILLs every process and returns at once: none of them runs again. Their exit (the
   * kernel freeing their memory: ~0.15 s per GiB) is not waited for; kill() still has to
   * follow, to detach and reap them. Idempotent.
   */
  sendKill(): void;
  /**
   * Detaches but leaves every process stopped (SIGSTOP): for when we must exit while a copy
   * of the tree may be running elsewhere. `kill -CONT` or `kill -KILL` decides later.
   */
  leaveStopped(): void;
  /** Signals that arrived while frozen (tid → signals), re-delivered by resume(). */
  readonly pendingSignals: Map<number, number[]>;
}

function errno(err: unknown): string | undefined {
  return (err as { code?: string }).code;
}

export function freezeTree(root: number): FrozenTree {
  const t0 = performance.now();
  const seized = new Set<number>();
  const pendingSignals = new Map<number, number[]>();
  let released = false;
  let killSent = false;

  const sendKill = (): void => {
    if (released || killSent) return;
    killSent = true;
    // Only the pids we froze: each is stopped under our ptrace, so it cannot have been
    // replaced by an unrelated process reusing the pid.
    const pids = new Set([...seized].filter((tid) => tids.has(tid)));
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  };

  const release = (kill: boolean, stop = false): void => {
    if (released) return;
    if (kill) sendKill();
    // After a kill was sent, whatever is asked for, the processes are dying: reap them.
    kill ||= killSent;
    released = true;
    if (stop) {
      for (const pid of tids) {
        try {
          process.kill(pid, 'SIGSTOP');
        } catch {
          /* gone */
        }
      }
    }
    for (const tid of seized) {
      try {
        const sigs = kill || stop ? [] : pendingSignals.get(tid) ?? [];
        ptrace.detach(tid, sigs[0] ?? 0);
        for (const s of sigs.slice(1)) process.kill(tid, s);
      } catch {
        /* exited meanwhile (or killed above) */
      }
    }
    if (kill) {
      reapTracees(seized);
    }
  };
  // Thread-group leaders, filled as processes are found.
  const tids = new Set<number>();

  const stopOne = (p: TreeProcess, tid: number): boolean => {
    try {
      ptrace.seize(tid);
    } catch (err) {
      if (errno(err) === 'ESRCH') return false; // exited while we looked
      if (errno(err) === 'EPERM') {
        if (isExitingThread(p.pid, tid)) return false;
        // dump refuses these before the freeze; this is one that became so since.
        const why = whyUntraceable(p.pid, tid, p.tids.length, root);
        if (why) throw new FreezeError(`pid ${p.pid} (${p.comm}): ${why}`);
      }
      throw err;
    }
    seized.add(tid);
    ptrace.interrupt(tid);
    for (;;) {
      const st: StopState = ptrace.waitStop(tid, STOP_TIMEOUT_MS);
      if (st.kind === 'exited' || st.kind === 'killed') {
        seized.delete(tid);
        return false;
      }
      if (st.kind === 'stopped' && st.event === 0 && !st.groupStop && st.signal !== 0) {
        // A signal was about to be delivered: hold it back and re-deliver on resume.
        const list = pendingSignals.get(tid) ?? [];
        list.push(st.signal);
        pendingSignals.set(tid, list);
        ptrace.cont(tid, 0);
        ptrace.interrupt(tid);
        continue;
      }
      return true;
    }
  };

  try {
    let processes: TreeProcess[] = [];
    for (let pass = 0; ; pass++) {
      if (pass === MAX_PASSES) throw new FreezeError(`pid ${root}: the tree kept changing for ${MAX_PASSES} passes; not dumping it`);
      processes = readTree(root).processes;
      let found = false;
      for (const p of processes) {
        tids.add(p.pid);
        for (const tid of p.tids) {
          if (seized.has(tid)) continue;
          if (stopOne(p, tid)) found = true;
        }
      }
      if (!found) break;
    }
    // Threads that exited between the walk and the seize are no longer part of the tree.
    processes = processes.map((p) => ({ ...p, tids: p.tids.filter((t) => seized.has(t)) }));
    const freezeMs = performance.now() - t0;
    return {
      root,
      processes,
      freezeMs,
      pendingSignals,
      resume: () => release(false),
      kill: () => release(true),
      sendKill,
      leaveStopped: () => release(false, true),
    };
  } catch (err) {
    release(false);
    throw err;
  }
}
