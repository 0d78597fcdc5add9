import * as fs from 'node:fs';
import { ProcError, procDir } from './errors.js';
import { readStat } from './stat.js';
import { listTids } from './task.js';

export interface TreeProcess {
  pid: number;
  ppid: number;
  pgid: number;
  sid: number;
  comm: string;
  /** Main thread first. */
  tids: number[];
  /** Direct children, ascending. */
  children: number[];
}

export interface ProcessTree {
  root: number;
  /** Parents before their children (breadth-first from the root). */
  processes: TreeProcess[];
}

/** Children of pid from /proc/PID/task/TID/children (needs CONFIG_PROC_CHILDREN), or undefined if unavailable. */
function childrenFromProc(pid: number, tids: readonly number[]): number[] | undefined {
  const out: number[] = [];
  for (const tid of tids) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT' && tid === tids[0] && fs.existsSync(`/proc/${pid}/task/${tid}`)) return undefined;
      continue;
    }
    for (const s of text.trim().split(/\s+/)) if (s !== '') out.push(Number(s));
  }
  return out.sort((a, b) => a - b);
}

/** ppid of every process on the system, one pass over /proc (the fallback when CONFIG_PROC_CHILDREN is off, as on this kernel). */
function ppidIndex(): Map<number, number[]> {
  const byParent = new Map<number, number[]>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
    } catch {
      continue;
    }
    const ppid = Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]);
    const list = byParent.get(ppid) ?? [];
    list.push(Number(e));
    byParent.set(ppid, list);
  }
  for (const l of byParent.values()) l.sort((a, b) => a - b);
  return byParent;
}

/**
 * The process tree rooted at rootPid, with every thread. Exact only while the tree is
 * frozen; on a running tree a process that forks or exits meanwhile may be missed, and
 * one that vanishes mid-walk is dropped (the root vanishing is ESRCH).
 */
export function readTree(rootPid: number): ProcessTree {
  procDir(rootPid);
  let index: Map<number, number[]> | undefined;
  const processes: TreeProcess[] = [];
  const queue = [rootPid];
  const seen = new Set<number>();
  while (queue.length > 0) {
    const pid = queue.shift() ?? 0;
    if (seen.has(pid)) continue;
    seen.add(pid);
    let node: TreeProcess;
    try {
      const st = readStat(pid);
      const tids = listTids(pid);
      let children = childrenFromProc(pid, tids);
      if (children === undefined) {
        index ??= ppidIndex();
        children = index.get(pid) ?? [];
      }
      node = { pid, ppid: st.ppid, pgid: st.pgrp, sid: st.session, comm: st.comm, tids, children };
    } catch (e) {
      if (pid !== rootPid && e instanceof ProcError && e.code === 'ESRCH') continue;
      throw e;
    }
    processes.push(node);
    queue.push(...node.children);
  }
  return { root: rootPid, processes };
}
