/**
 * Migrations the way a user runs them: the four lazymig commands, on a source and a
 * destination host (network namespaces joined by a veth pair), with the images copied in
 * between.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { createTwoHosts, type Host, type TwoHosts } from '../../../tools/topology/index.js';
import { LAZYMIG } from './helpers.js';

export interface Proc {
  child: ChildProcess;
  stderr(): string;
  /** Resolves with the exit code (128 + n when killed by a signal). */
  exited: Promise<number>;
  waitForStderr(re: RegExp, timeoutMs: number): Promise<void>;
}

export function lazymigIn(hosts: TwoHosts, host: Host, args: string[]): Proc {
  const child = hosts.spawnIn(host, [process.execPath, LAZYMIG, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  const exited = new Promise<number>((resolve) =>
    child.on('close', (code, signal) => resolve(code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1))),
  );
  return {
    child,
    stderr: () => err,
    exited,
    waitForStderr: async (re, timeoutMs) => {
      const end = performance.now() + timeoutMs;
      while (!re.test(err)) {
        if (child.exitCode !== null || child.signalCode !== null) throw new Error(`lazymig ${args[0]} exited before ${re}:\n${err}`);
        if (performance.now() > end) throw new Error(`lazymig ${args[0]}: no ${re} within ${timeoutMs} ms:\n${err}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
  };
}

export interface Migration {
  hosts: TwoHosts;
  work: string;
  srcImages: string;
  dstImages: string;
  port: number;
  dumper: Proc;
  /** pid of the restored root process, once restored. */
  restoredPid?: number;
}

/** Two hosts and a work dir, destroyed (with every process started through them) at teardown. */
export async function setUp(t: ExecutionContext): Promise<{ hosts: TwoHosts; work: string; port: number; track(p: Proc): Proc; trackPid(pid: number): void }> {
  const hosts = await createTwoHosts();
  const work = await mkdtemp(join(tmpdir(), 'lazymig-migrate-'));
  const procs: Proc[] = [];
  const pids: number[] = [];
  t.teardown(async () => {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await Promise.all(procs.map((p) => p.exited));
    await hosts.destroy();
    await rm(work, { recursive: true, force: true });
  });
  return {
    hosts,
    work,
    port: 20000 + Math.floor(Math.random() * 20000),
    track: (p) => (procs.push(p), p),
    trackPid: (pid) => void pids.push(pid),
  };
}

export async function readPidfile(path: string): Promise<number> {
  return Number((await readFile(path, 'utf8')).trim());
}

export async function copyImages(from: string, to: string): Promise<void> {
  await cp(from, to, { recursive: true });
}

/** True while pid runs (a zombie waiting to be reaped does not count). */
export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX] /s.test(stat);
  } catch {
    return false;
  }
}

/** pids of the lazy guards `restore --lazy-pages` left for the work dir `workDir`. */
function guardsOf(workDir: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0');
      if (argv[0]?.endsWith('lazymig-guard') && argv[1] === workDir && alive(Number(name))) found.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

/** Waits until no guard for `workDir` runs any more: it has made its decision. */
export async function guardsDone(workDir: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const left = guardsOf(workDir);
    if (left.length === 0) return;
    if (performance.now() > deadline) throw new Error(`the lazy guard of ${workDir} (pid ${left.join(', ')}) still runs after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export { spawn };
