// Round trips with the C workloads: dump (the original is killed), restore, and check what a
// user would: the process goes on where it stopped, with its memory, files and threads.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { startWorkload, waitForLogLine } from '../../../tools/workloads/index.js';
import { dump, restore } from '../src/index.js';
import { tempDir, trackRestored } from './restore-helpers.js';

const WAIT_MS = 15_000;

function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`waited ${ms} ms for ${what}`)), ms))),
  ]);
}

type T = Parameters<Parameters<typeof test>[1]>[0];

/** Dumps (killing the original) and waits until it is gone; the restore comes after. */
async function dumpKill(t: T, w: { pid: number; exited: Promise<unknown> }) {
  const dir = path.join(tempDir(t, 'restore'), 'images');
  const d = await dump({ pid: w.pid, imagesDir: dir, mode: 'kill' });
  await bounded(w.exited, WAIT_MS, `pid ${w.pid} to exit after its dump`);
  return { d, dir };
}

async function restoreIt(t: T, dir: string, d: Awaited<ReturnType<typeof dump>>) {
  const r = await restore({ imagesDir: dir });
  const tracked = trackRestored(t, r);
  t.log(`dump: ${d.pages.present} pages, frozen ${d.frozenMs.toFixed(1)} ms; restore: ${r.processes} processes, ${r.threads} threads, ${r.pages.present} pages, ${r.injectedSyscalls} syscalls`);
  return { r, tracked };
}

test.serial('memhog: the restored process verifies the same memory and counts on', async (t) => {
  const w = await startWorkload('memhog', ['48', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^verify ok pass=3 /, WAIT_MS);
  const { d, dir } = await dumpKill(t, w);
  const last = Number(w.lastMatch(/^verify ok pass=\d+ counter=(\d+)/)![1]);
  const since = w.logSize();
  const { r } = await restoreIt(t, dir, d);
  t.not(r.rootPid, w.pid);
  const next = await waitForLogLine(w.logPath, /^verify (?:ok pass=\d+ counter=(\d+) .*|FAILED.*)$/, WAIT_MS, { since });
  t.is(next[1], String(last + 1), next[0]);
  // A few more full passes over the restored memory (each rewrites pages with new generations).
  await waitForLogLine(w.logPath, new RegExp(`^verify ok pass=\\d+ counter=${last + 4} `), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
  t.is(fs.readFileSync(`/proc/${r.rootPid}/comm`, 'utf8').trim(), 'memhog');
  t.regex(fs.readlinkSync(`/proc/${r.rootPid}/exe`), /\/memhog$/);
});

test.serial('appender: appends at the right offset, its read-only fd keeps its position', async (t) => {
  const dir = tempDir(t, 'appender');
  const file = path.join(dir, 'out.txt');
  const w = await startWorkload('appender', [file, '--interval-ms', '20']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^appended counter=5 /, WAIT_MS);
  const roFd = Number(/ro_fd=(\d+)/.exec(w.ready[0])![1]);
  const { d, dir: images } = await dumpKill(t, w);
  const last = Number(w.lastMatch(/^appended counter=(\d+)/)![1]);
  const since = w.logSize();
  const { r } = await restoreIt(t, images, d);
  const m = await waitForLogLine(w.logPath, /^appended counter=(\d+) offset=(\d+)/, WAIT_MS, { since });
  t.is(Number(m[1]), last + 1);
  await waitForLogLine(w.logPath, new RegExp(`^appended counter=${last + 5} `), WAIT_MS, { since });
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  // line 1..n, no gap, no repeat, across the migration
  t.deepEqual(lines.slice(0, last + 5), Array.from({ length: last + 5 }, (_, i) => `line ${i + 1}`));
  const info = fs.readFileSync(`/proc/${r.rootPid}/fdinfo/${roFd}`, 'utf8');
  t.regex(info, /^pos:\s+1$/m);
  t.regex(fs.readlinkSync(`/proc/${r.rootPid}/fd/${roFd}`), /^\/etc\/(hostname|passwd)$/);
});

test.serial('sleeper: a sleep interrupted by the dump is re-run, not failed', async (t) => {
  const w = await startWorkload('sleeper', ['--sleep-ms', '300']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=2 /, WAIT_MS);
  const { d, dir } = await dumpKill(t, w);
  const last = Number(w.lastMatch(/^tick counter=(\d+)/)![1]);
  const since = w.logSize();
  await restoreIt(t, dir, d);
  const m = await waitForLogLine(w.logPath, /^(?:tick counter=(\d+) .*|sleep FAILED.*)$/, WAIT_MS, { since });
  t.is(m[1], String(last + 1), m[0]);
  await waitForLogLine(w.logPath, new RegExp(`^tick counter=${last + 3} `), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
});

test.serial('sleeper (raw nanosleep) resumes too', async (t) => {
  const w = await startWorkload('sleeper', ['--sleep-ms', '300', '--mode', 'nanosleep']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=2 /, WAIT_MS);
  const { d, dir } = await dumpKill(t, w);
  const last = Number(w.lastMatch(/^tick counter=(\d+)/)![1]);
  const since = w.logSize();
  await restoreIt(t, dir, d);
  await waitForLogLine(w.logPath, new RegExp(`^tick counter=${last + 2} `), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
});

test.serial('threads: every thread keeps working', async (t) => {
  const w = await startWorkload('threads', ['4', '--interval-ms', '50']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=3 /, WAIT_MS);
  const { d, dir } = await dumpKill(t, w);
  const before = w.lastMatch(/^tick counter=(\d+) counts=([\d,]+)/)!;
  const counts0 = before[2]!.split(',').map(Number);
  const since = w.logSize();
  const { r } = await restoreIt(t, dir, d);
  t.is(r.threads, 5);
  const m = await waitForLogLine(w.logPath, new RegExp(`^tick counter=${Number(before[1]) + 5} counts=([\\d,]+)`), WAIT_MS, { since });
  const counts1 = m[1]!.split(',').map(Number);
  t.is(counts1.length, 4);
  counts1.forEach((c, i) => t.true(c > counts0[i]!, `thread ${i}: ${counts0[i]} -> ${c}`));
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED/);
  t.is(fs.readdirSync(`/proc/${r.rootPid}/task`).length, 5);
});

test.serial("forker: parent and child both go on; the child's parent is the restored parent", async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '50']);
  t.teardown(() => w.kill());
  const ready = w.ready;
  const dumpedChild = Number(/child=(\d+)/.exec(ready[0])![1]);
  await w.waitForLine(/^child counter=3 /, WAIT_MS);
  const { d, dir } = await dumpKill(t, w);
  const since = w.logSize();
  const { r } = await restoreIt(t, dir, d);
  t.is(r.processes, 2);
  const parent = r.pids.get(w.pid)!;
  const child = r.pids.get(dumpedChild)!;
  const c = await waitForLogLine(w.logPath, /^child counter=\d+ pid=(\d+) ppid=(\d+)/, WAIT_MS, { since });
  t.is(Number(c[1]), child);
  t.is(Number(c[2]), parent);
  await waitForLogLine(w.logPath, /^parent counter=\d+ /, WAIT_MS, { since });
  const lastParent = Number(w.lastMatch(/^parent counter=(\d+)/)![1]);
  await waitForLogLine(w.logPath, new RegExp(`^parent counter=${lastParent + 2} `), WAIT_MS, { since });
  t.notRegex(fs.readFileSync(w.logPath, 'utf8').slice(since), /FAILED|child exited/);
});
