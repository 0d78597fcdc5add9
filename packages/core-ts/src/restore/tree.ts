/**
 * The process tree, as stubs: the root is a fresh stub, every other process is forked
 * (injected fork) from its already-created parent, before any memory is replaced, so each
 * restored child's parent is its restored parent. A forked child starts in the control
 * area's pause loop and is seized there.
 */
import { findSyscallGadget } from '@lazymig/uffd-rs';
import type { LoadedImages, ProcessImage } from '../image/index.js';
import { readMaps } from '../proc/index.js';
import { mapControlArea, type ControlArea } from './control.js';
import { RestoreError } from './errors.js';
import { Remote, Scratch } from './remote.js';
import { seizeStopped } from './threads.js';
import { hostChildWithNsPid } from './pidns.js';

const SIGCHLD = 17;

export interface StubProcess {
  image: ProcessImage;
  /** pid of the process being rebuilt */
  pid: number;
  /** its main thread (tid == pid), injected through the control area */
  leader: Remote;
  /** parent in the tree (restored pids), null for the root */
  parentPid: number | null;
  /** every thread we seized in it (the leader first) */
  tids: number[];
  /** remotes of the extra threads once cloned, image order */
  threads: Remote[];
}

/** A started stub, seized, with the `syscall` of its own text to inject through, and its layout. */
export interface SeizedStub {
  pid: number;
  leader: Remote;
  maps: ReturnType<typeof readMaps>;
}

/** Seizes the stub: nothing here depends on the images, so it can happen before they arrive. */
export function seizeStub(pid: number): SeizedStub {
  seizeStopped(pid);
  const maps = readMaps(pid);
  let gadget: number | null = null;
  for (const v of maps.filter((m) => m.perms.exec && m.kind === 'file')) {
    gadget = findSyscallGadget(pid, v.start, v.end - v.start);
    if (gadget !== null) break;
  }
  if (gadget === null) throw new RestoreError(`pid ${pid}: the stub has no syscall instruction`, 'process');
  return { pid, leader: new Remote(pid, pid, gadget), maps };
}

/** The root: the seized stub, with the control area mapped through the stub's own gadget. */
export function prepareRoot(stub: SeizedStub, image: ProcessImage, area: ControlArea, setsid: boolean): StubProcess {
  const { pid, leader } = stub;
  mapControlArea(leader, area);
  leader.useGadget(area.gadget);
  leader.runner = area.runner;
  leader.scratch = new Scratch(pid, area.scratch, area.scratchSize);
  if (setsid) leader.setsid();
  return { image, pid, leader, parentPid: null, tids: [pid], threads: [] };
}

/**
 * Forks every descendant of `root` in the images, parents before children. In a pid
 * namespace of the restore's own (`pidNs`) each gets its dumped pid there (clone3 with
 * set_tid, otherwise a plain fork); `pid` is always the one seen from our namespace.
 */
export function forkTree(images: LoadedImages, root: StubProcess, area: ControlArea, created: (p: StubProcess) => void, pidNs = false): StubProcess[] {
  const byDumped = new Map<number, StubProcess>([[root.image.pid, root]]);
  const out = [root];
  for (const t of images.inventory.tree) {
    if (t.pid === root.image.pid) continue;
    const parent = byDumped.get(t.ppid);
    if (!parent) throw new RestoreError(`pid ${t.pid}: its parent ${t.ppid} is not restored before it (the images' tree is out of order)`, 'unsupported');
    const image = images.processes.find((p) => p.pid === t.pid)!;
    const pid = pidNs ? forkAt(parent, t.pid) : parent.leader.fork();
    // Known to the caller at once, so a failure from here on kills it too.
    const p: StubProcess = {
      image,
      pid,
      leader: null as unknown as Remote,
      parentPid: parent.pid,
      tids: [],
      threads: [],
    };
    created(p);
    seizeStopped(pid);
    p.tids.push(pid);
    p.leader = new Remote(pid, pid, area.gadget, new Scratch(pid, area.scratch, area.scratchSize), area.runner);
    byDumped.set(t.pid, p);
    out.push(p);
  }
  return out;
}



/** clone3(set_tid = [dumped]) from `parent`: the child's pid in our namespace. */
function forkAt(parent: StubProcess, dumped: number): number {
  const nsPid = parent.leader.clone3({ flags: 0, exitSignal: SIGCHLD, setTid: [dumped] }, `child ${dumped} at its dumped pid in the new pid namespace`);
  const host = hostChildWithNsPid(parent.pid, nsPid);
  if (host === null || nsPid !== dumped) {
    // Not ours to track yet: kill it here, by the pid its parent (still stopped, a tracee) sees.
    if (host !== null) {
      try {
        process.kill(host, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    throw new RestoreError(`pid ${parent.pid}: the child cloned for dumped pid ${dumped} is pid ${nsPid} in the pid namespace${host === null ? ', and not found from here' : ''}`, 'process');
  }
  return host;
}
