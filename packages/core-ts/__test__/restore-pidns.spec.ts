// `restore --pid-ns`: the restored tree lives in a new pid namespace in which every process
// and thread has exactly its dumped pid/tid. Round trips (dump killing the original, then
// restore) with what a user would check: the workloads' own getpid()/getppid()/gettid()
// output, glibc's cached tids (pthread_kill), and NSpid in /proc; refusals; the CLI.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test, { type ExecutionContext } from 'ava';
import { startWorkload, waitForLogLine, type Workload } from '../../../tools/workloads/index.js';
import { dump, readImages, restore, RestoreRefusedError, writeImages, FILE_NAMES, type RestoreResult } from '../src/index.js';
import { startStub } from '../src/restore/stub.js';
import { descendants, ppidOf, startTime, strayDescendants, tempDir, trackRestored } from './restore-helpers.js';

const WAIT_MS = 15_000;
const LAZYMIG = fileURLToPath(new URL('../../cli/bin/lazymig', import.meta.url));

type T = ExecutionContext;

function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms))),
  ]);
}

async function waitUntil(what: string, ok: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** NSpid of a task: its pid here first, the innermost namespace's last. */
function nsPid(pid: number, tid = pid): number[] {
  const s = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
  return /^NSpid:\s+(.*)$/m.exec(s)![1]!.trim().split(/\s+/).map(Number);
}

/** SIGKILLs `pid` on teardown if it is still the process it is now. */
function killOnTeardown(t: T, pid: number): void {
  const start = startTime(pid);
  t.teardown(() => {
    if (start !== undefined && startTime(pid) === start) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  });
}

async function dumpKill(t: T, w: Workload) {
  const dir = path.join(tempDir(t, 'pidns'), 'images');
  const d = await dump({ pid: w.pid, imagesDir: dir, mode: 'kill' });
  await bounded(w.exited, WAIT_MS, `pid ${w.pid} to exit after its dump`);
  return { d, dir };
}

async function restoreInNs(t: T, dir: string): Promise<RestoreResult> {
  const r = await restore({ imagesDir: dir, pidNs: true });
  trackRestored(t, r);
  t.truthy(r.pidNs, 'the result names the namespace init');
  killOnTeardown(t, r.pidNs!.initPid);
  t.log(`restored ${r.processes} processes, ${r.threads} threads; root ${r.rootPid} here, init ${r.pidNs!.initPid}`);
  return r;
}

/** Every restored process is its dumped pid in the namespace; the root's parent is the init (pid 1 there). */
function checkPids(t: T, r: RestoreResult): void {
  for (const [dumped, here] of r.pids) {
    const ns = nsPid(here);
    t.deepEqual(ns, [here, dumped], `pid ${here}: NSpid`);
  }
  t.deepEqual(nsPid(r.pidNs!.initPid), [r.pidNs!.initPid, 1]);
  t.is(ppidOf(r.rootPid), r.pidNs!.initPid);
}

test.serial('memhog: restored at its dumped pid in a new namespace, goes on verifying its memory', async (t) => {
  const w = await startWorkload('memhog', ['48', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^verify ok pass=3 /, WAIT_MS);
  const { dir } = await dumpKill(t, w);
  const last = Number(w.lastMatch(/^verify ok pass=\d+ counter=(\d+)/)![1]);
  const since = w.logSize();
  const r = await restoreInNs(t, dir);
  checkPids(t, r);
  t.is(r.pids.get(w.pid), r.rootPid);
  const next = await waitForLogLine(w.logPath, /^verify (?:ok pass=\d+ counter=(\d+) .*|FAILED.*)$/, WAIT_MS, { since });
  t.is(next[1], String(last + 1), next[0]);
  await waitForLogLine(w.logPath, new RegExp(`^verify ok pass=\\d+ counter=${last + 3} `), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
  // The root's end is reported by the init; the init then has nothing left and exits,
  // and with it the namespace.
  const init = r.pidNs!.initPid;
  process.kill(r.rootPid, 'SIGKILL');
  t.deepEqual(await bounded(r.exited, 5000, 'the root to be reported gone'), { code: null, signal: 9 });
  await waitUntil(`init ${init} to exit`, () => startTime(init) === undefined);
});

test.serial('forker: parent and child keep their pids; the child sees its dumped parent as ppid', async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '20']);
  t.teardown(() => w.kill());
  const parent = w.pid;
  const child = Number(/ child=(\d+)/.exec(w.ready[0])![1]);
  await w.waitForLine(/^child counter=3 /, WAIT_MS);
  const { dir } = await dumpKill(t, w);
  const since = w.logSize();
  const r = await restoreInNs(t, dir);
  t.is(r.processes, 2);
  checkPids(t, r);
  t.is(ppidOf(r.pids.get(child)!), r.pids.get(parent)!);
  // What the programs themselves print: getpid(), getppid(), the child's pid the parent stored.
  const p = await waitForLogLine(w.logPath, /^(?:parent counter=\d+ pid=(\d+) child=(\d+)|.*FAILED.*|child exited.*)$/, WAIT_MS, { since });
  t.deepEqual([p[1], p[2]], [String(parent), String(child)], p[0]);
  const c = await waitForLogLine(w.logPath, /^(?:child counter=\d+ pid=(\d+) ppid=(\d+)|.*FAILED.*)$/, WAIT_MS, { since });
  t.deepEqual([c[1], c[2]], [String(child), String(parent)], c[0]);
  // A few more rounds: the parent's waitpid(child, WNOHANG) on its stored pid finds a live child.
  const cnt = Number(/counter=(\d+)/.exec(p[0])![1]);
  await waitForLogLine(w.logPath, new RegExp(`^parent counter=${cnt + 5} pid=${parent} child=${child}$`), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED|child exited/);
});

test.serial('threads: every thread keeps its dumped tid, glibc\'s cached tids stay valid', async (t) => {
  const w = await startWorkload('threads', ['3', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  const tids = /tids=([\d,]+)/.exec(w.ready[0])![1]!;
  await w.waitForLine(new RegExp(`^self pid=${w.pid} tids=${tids} pthread_kill=0,0,0$`), WAIT_MS);
  const { dir } = await dumpKill(t, w);
  const since = w.logSize();
  const r = await restoreInNs(t, dir);
  t.is(r.threads, 4);
  checkPids(t, r);
  const here = r.rootPid;
  const inNs = fs.readdirSync(`/proc/${here}/task`).map((tid) => nsPid(here, Number(tid)).at(-1)!).sort((a, b) => a - b);
  t.deepEqual(inNs, [w.pid, ...tids.split(',').map(Number)].sort((a, b) => a - b));
  // gettid() in each thread, getpid(), and pthread_kill(thread, 0) (glibc's cached tid) after the restore.
  const m = await waitForLogLine(w.logPath, /^(?:self pid=(\d+) tids=([\d,]+) pthread_kill=([\d,]+)|.*FAILED.*)$/, WAIT_MS, { since });
  t.deepEqual([m[1], m[2], m[3]], [String(w.pid), tids, '0,0,0'], m[0]);
  const tick = Number(/counter=(\d+)/.exec(w.lastMatch(/^tick counter=\d+ /)![0])![1]);
  await waitForLogLine(w.logPath, new RegExp(`^tick counter=${tick + 3} counts=`), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
});

test.serial('a dumped pid or tid 1 is refused with --pid-ns (it is the namespace init), nothing started', async (t) => {
  const w = await startWorkload('threads', ['2', '--interval-ms', '50']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=1 /, WAIT_MS);
  const { dir: src } = await dumpKill(t, w);
  const images = await readImages(src);
  const p = images.processes[0]!;
  p.core.threads[2]!.tid = 1;
  images.inventory.tree[0]!.tids[2] = 1;
  const raw = fs.readFileSync(path.join(src, FILE_NAMES.pages(p.pid)));
  const n = images.pages.get(p.pid)!.pageCount;
  const dir = path.join(tempDir(t, 'pid1'), 'images');
  await writeImages(dir, { inventory: images.inventory, processes: images.processes }, { pages: new Map([[p.pid, raw.subarray(4096, 4096 + n * 4096)]]) });
  const before = descendants(process.pid);
  const err = await restore({ imagesDir: dir, pidNs: true }).then(
    (r) => {
      trackRestored(t, r).kill();
      throw new Error('the restore succeeded');
    },
    (e: Error) => e,
  );
  t.true(err instanceof RestoreRefusedError, err.message);
  t.regex(err.message, /thread 1: --pid-ns cannot restore pid 1, it is the new namespace's init/);
  t.deepEqual(await strayDescendants(before), []);
});

test.serial('the stub refuses clearly when clone3/set_tid cannot have the pid (EEXIST), leaving nothing', async (t) => {
  // pid 1 is always taken in the new namespace (by its init): clone3 fails with EEXIST.
  const before = descendants(process.pid);
  const err = await startStub({ pidNs: 1 }).then(
    (s) => {
      s.kill();
      throw new Error('the stub started');
    },
    (e: Error) => e,
  );
  t.regex(err.message, /could not create the root at pid 1 in the new pid namespace: clone3\(set_tid\): EEXIST/);
  t.deepEqual(await strayDescendants(before), []);
});

// ---- the CLI ----

function lazymig(args: string[], timeoutMs = 60_000): { exited: Promise<number | null>; stderr: () => string; stdout: () => string; kill(): void } {
  const child = spawn(process.execPath, [LAZYMIG, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  void exited.then(() => clearTimeout(timer));
  return {
    exited,
    stderr: () => err,
    stdout: () => out,
    kill: () => {
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}

test.serial('CLI: --pid-ns is in restore --help', async (t) => {
  const h = lazymig(['restore', '--help']);
  t.is(await bounded(h.exited, 30_000, 'restore --help'), 0);
  t.regex(h.stdout(), /^ +--pid-ns +restore into a new pid namespace/m);
  t.regex(h.stdout(), /--pidfile .*as seen from here/);
});

test.serial('CLI: restore --pid-ns --restore-detached --pidfile: the pidfile holds the pid seen from here', async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '20']);
  t.teardown(() => w.kill());
  const child = Number(/ child=(\d+)/.exec(w.ready[0])![1]);
  await w.waitForLine(/^child counter=2 /, WAIT_MS);
  const { dir } = await dumpKill(t, w);
  const since = w.logSize();
  const pidfile = path.join(tempDir(t, 'pidfile'), 'root.pid');
  const r = lazymig(['restore', '--images-dir', dir, '--pid-ns', '--restore-detached', '--pidfile', pidfile]);
  t.teardown(r.kill);
  t.is(await bounded(r.exited, 60_000, 'restore --restore-detached'), 0, r.stderr());
  const root = Number(fs.readFileSync(pidfile, 'utf8').trim());
  killOnTeardown(t, root);
  const init = ppidOf(root)!;
  t.deepEqual(nsPid(root), [root, w.pid], 'the pidfile has our pid of the root; inside it is the dumped pid');
  t.deepEqual(nsPid(init), [init, 1]);
  for (const c of descendants(root)) killOnTeardown(t, c);
  killOnTeardown(t, init);
  t.regex(r.stderr(), new RegExp(`root pid ${root}; in a new pid namespace with the dumped pids, root ${w.pid} there, its init is pid ${init}\\)`));
  await waitForLogLine(w.logPath, new RegExp(`^child counter=\\d+ pid=${child} ppid=${w.pid}$`), WAIT_MS, { since });
  await waitForLogLine(w.logPath, new RegExp(`^parent counter=\\d+ pid=${w.pid} child=${child}$`), WAIT_MS, { since });
});

test.serial('CLI: restore --pid-ns waits for the root and exits with its status; orphans go on under the init', async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '20']);
  t.teardown(() => w.kill());
  const child = Number(/ child=(\d+)/.exec(w.ready[0])![1]);
  await w.waitForLine(/^child counter=2 /, WAIT_MS);
  const { dir } = await dumpKill(t, w);
  const since = w.logSize();
  const r = lazymig(['restore', '--images-dir', dir, '--pid-ns']);
  t.teardown(r.kill);
  await waitUntil('the restore summary', () => /root pid (\d+);/.test(r.stderr()), 30_000);
  const root = Number(/root pid (\d+);/.exec(r.stderr())![1]);
  killOnTeardown(t, root);
  const init = ppidOf(root)!;
  const kids = descendants(root);
  for (const k of kids) killOnTeardown(t, k);
  killOnTeardown(t, init);
  t.deepEqual(nsPid(root), [root, w.pid]);
  t.is(kids.length, 1);
  const restoredChild = kids[0]!;
  await waitForLogLine(w.logPath, new RegExp(`^child counter=\\d+ pid=${child} ppid=${w.pid}$`), WAIT_MS, { since });
  process.kill(root, 'SIGTERM');
  t.is(await bounded(r.exited, 10_000, 'restore to exit after its root'), 128 + 15, r.stderr());
  t.regex(r.stderr(), /was killed by signal 15/);
  // The child lives on, reparented to the namespace's init: getppid() is 1 in there.
  await waitForLogLine(w.logPath, new RegExp(`^child counter=\\d+ pid=${child} ppid=1$`), WAIT_MS, { since });
  t.is(ppidOf(restoredChild), init);
  // Once the last process in the namespace is gone, the init has reaped it and exits.
  process.kill(restoredChild, 'SIGKILL');
  await waitUntil(`init ${init} to exit`, () => startTime(init) === undefined);
  t.is(startTime(restoredChild), undefined, 'the init reaped the orphan');
});
