import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { processVmRead, PAGE_SIZE } from '@lazymig/uffd-rs';
import { startWorkload } from '../../../tools/workloads/index.js';
import { dump, DumpRefusedError, openPagesReader, readImages, readMaps, readStatus, stubBinary, TOKEN_FILE } from '../src/index.js';

async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-dump-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('a memhog dumped with leave-running: the images hold exactly its memory, and it runs on', async (t) => {
  const dir = await tempDir(t);
  // No rewrites: the memory stays what the dump saw, so it can be compared afterwards.
  const w = await startWorkload('memhog', ['16', '--rewrite-pages', '0', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=2 /, 20_000);
  const region = Number(w.ready.groups?.['region'] ?? /region=(0x[0-9a-f]+)/.exec(w.ready[0])![1]);
  const size = Number(/ size=(\d+)/.exec(w.ready[0])![1]);
  const zero = Number(/ zero=(0x[0-9a-f]+)/.exec(w.ready[0])![1]);
  const mapsBefore = readMaps(w.pid);

  const r = await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'leave-running' });
  t.is(r.processes, 1);
  t.is(r.threads, 1);
  t.is(r.frozen, null);

  const mark = w.logSize();
  await w.waitForLine(/verify ok pass=\d+/, 10_000, { since: mark });
  t.is(w.lastMatch(/verify FAILED/), undefined);

  const images = await readImages(join(dir, 'img'), { verifyPages: 'full' });
  const p = images.processes[0]!;
  t.is(p.pid, w.pid);
  t.is(p.core.comm, 'memhog');
  t.deepEqual(
    p.core.vmas.map((v) => [v.start, v.end]),
    mapsBefore.filter((v) => v.kind !== 'vsyscall').map((v) => [v.start, v.end]).concat(
      mapsBefore.filter((v) => v.kind === 'vsyscall').map((v) => [v.start, v.end]),
    ),
    'every VMA of /proc/PID/maps, in order',
  );
  const thread = p.core.threads[0]!;
  t.is(thread.tid, w.pid);
  t.is(thread.sigmask, readStatus(w.pid).sigBlk);
  t.true(thread.xstate.length >= 576);
  t.not(thread.rseq, null, 'glibc registers rseq');
  // SIGINT..SIGTERM handlers: memhog installs none, so all are SIG_DFL (0) or SIG_IGN (1).
  t.is(p.core.sigactions.length, 64);

  // The region's pages are present in the images and equal the live memory.
  const reader = await openPagesReader(images, p.pid);
  t.teardown(() => reader.close());
  const fromImages = await reader.read(region, size / PAGE_SIZE);
  const live = Buffer.alloc(size);
  processVmRead(w.pid, new Float64Array([region, size]), live);
  t.true(Buffer.compare(fromImages, live) === 0, 'pages file = process memory');
  // The read-only-touched region is the zero page: recorded, not stored.
  const z = p.pagemap.entries.find((e) => e.start <= zero && zero < e.start + e.pages * PAGE_SIZE);
  t.is(z?.kind, 'zero');
});

test('a lazy dump keeps anonymous pages out of the images and leaves the tree frozen', async (t) => {
  const dir = await tempDir(t);
  const w = await startWorkload('memhog', ['32', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const r = await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'lazy', pageServer: { address: '127.0.0.1', port: 1 } });
  t.teardown(() => r.frozen?.kill());
  t.not(r.frozen, null);
  t.true(r.pages.lazy >= (32 << 20) / PAGE_SIZE, `lazy pages ${r.pages.lazy}`);
  t.true(r.pages.present < 256, `only a few pages go eagerly (stack top, rseq, COW'd file pages): ${r.pages.present}`);
  t.true(existsSync(join(dir, 'img', TOKEN_FILE)));
  // Frozen: its log does not move while we wait for a pass that would normally come.
  const mark = w.logSize();
  await t.throwsAsync(w.waitForLine(/verify ok/, 300, { since: mark }));
  const images = await readImages(join(dir, 'img'));
  t.true(images.inventory.lazy);
  t.deepEqual(images.inventory.pageServer, { address: '127.0.0.1', port: 1 });
  r.frozen!.kill();
  const exit = await w.exited;
  t.is(exit.signal, 'SIGKILL');
});

/** Live (not zombie) processes named `comm` that are our children or grandchildren. */
function liveDescendants(comm: string): number[] {
  const parent = new Map<number, number>();
  const found: Array<{ pid: number; comm: string; state: string }> = [];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      parent.set(Number(e), Number(f[1]));
      found.push({ pid: Number(e), comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')), state: f[0]! });
    } catch {
      /* gone meanwhile */
    }
  }
  const ours = (pid: number): boolean => parent.get(pid) === process.pid || parent.get(parent.get(pid) ?? 0) === process.pid;
  return found.filter((p) => p.comm === comm && p.state !== 'Z' && ours(p.pid)).map((p) => p.pid);
}

/** `fn` with os.tmpdir() pointing at `dir` (tests using it are serial). */
async function withTmpdir<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const before = process.env['TMPDIR'];
  process.env['TMPDIR'] = dir;
  try {
    return await fn();
  } finally {
    if (before === undefined) delete process.env['TMPDIR'];
    else process.env['TMPDIR'] = before;
  }
}

// Serial: it points TMPDIR elsewhere for a moment.
test.serial('a lazy dump rehearses on a throwaway process first, which leaves nothing behind', async (t) => {
  const dir = await tempDir(t);
  stubBinary(); // built (when running from the sources) before TMPDIR moves
  const w = await startWorkload('memhog', ['8', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const scratch = join(dir, 'tmp');
  mkdirSync(scratch);
  const r = await withTmpdir(scratch, () =>
    dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'lazy', pageServer: { address: '127.0.0.1', port: 1 } }));
  t.teardown(() => r.frozen?.kill());
  t.true((r.phaseMs['pre-rehearsal'] ?? 0) > 0, 'it rehearsed');
  t.deepEqual(readdirSync(scratch), [], 'its temporary images are gone');
  // Its stub was killed: gone, or a zombie until Node reaps it.
  for (let i = 0; i < 100 && liveDescendants('lazymig-stub').length > 0; i++) await new Promise((res) => setTimeout(res, 20));
  t.deepEqual(liveDescendants('lazymig-stub'), [], 'no stub of ours is left alive');
  // The real dump is what it would have been without it.
  t.true(r.pages.lazy >= (8 << 20) / PAGE_SIZE);
  t.deepEqual((await readImages(join(dir, 'img'))).inventory.rootPid, w.pid);
});

/** True while `pid` exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

test('a rehearsal\'s stub dies with the lazymig that started it, even one killed with SIGKILL', async (t) => {
  const stubTs = new URL('../src/restore/stub.ts', import.meta.url).pathname;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', `
    import { startStub } from ${JSON.stringify(stubTs)};
    const s = await startStub({ stdio: 'ignore', throwaway: true });
    process.stdout.write(s.reaperPid + ' ' + s.pid + '\\n');
    setInterval(() => undefined, 1000);
  `], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => child.kill('SIGKILL'));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve(out.trim());
    });
    child.on('exit', (code) => reject(new Error(`the stub's starter exited ${code} before reporting`)));
  });
  const pids = line.split(' ').map(Number);
  t.teardown(() => pids.forEach((p) => alive(p) && process.kill(p, 'SIGKILL')));
  t.true(pids.every(alive), `stub processes ${line} running`);
  child.kill('SIGKILL');
  for (let i = 0; i < 250 && pids.some(alive); i++) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(pids.filter(alive), [], 'the reaper and the future root are gone with their starter');
});

test('multi-threaded and forking trees: every thread and process is in the images', async (t) => {
  const dir = await tempDir(t);
  const th = await startWorkload('threads', ['3']);
  t.teardown(() => th.kill());
  await th.waitForLine(/tick counter=2 /, 20_000);
  const r1 = await dump({ pid: th.pid, imagesDir: join(dir, 'threads'), mode: 'leave-running' });
  t.is(r1.threads, 4);
  const img1 = await readImages(join(dir, 'threads'));
  const tids = /tids=([\d,]+)/.exec(th.ready[0])![1]!.split(',').map(Number);
  t.deepEqual(img1.processes[0]!.core.threads.map((x) => x.tid).sort(), [th.pid, ...tids].sort());
  const mark = th.logSize();
  await th.waitForLine(/tick counter=\d+ /, 10_000, { since: mark });

  const fk = await startWorkload('forker', []);
  t.teardown(() => fk.kill());
  await fk.waitForLine(/child counter=2 /, 20_000);
  const child = Number(/child=(\d+)/.exec(fk.ready[0])![1]);
  const r2 = await dump({ pid: fk.pid, imagesDir: join(dir, 'forker'), mode: 'leave-running' });
  t.is(r2.processes, 2);
  const img2 = await readImages(join(dir, 'forker'));
  t.deepEqual(img2.inventory.tree.map((e) => [e.pid, e.children]), [[fk.pid, [child]], [child, []]]);
  t.is(img2.inventory.tree[1]!.ppid, fk.pid);
  const m2 = fk.logSize();
  await fk.waitForLine(/child counter=\d+ .*ppid=\d+/, 10_000, { since: m2 });
});

test('an open file is recorded with its flags and offset', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'out.txt');
  const w = await startWorkload('appender', [file, '--interval-ms', '20']);
  t.teardown(() => w.kill());
  await w.waitForLine(/appended counter=3 /, 20_000);
  const fd = Number(/append_fd=(\d+)/.exec(w.ready[0])![1]);
  const r = await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'leave-running' });
  t.is(r.processes, 1);
  const img = await readImages(join(dir, 'img'));
  const entry = img.processes[0]!.core.fds.find((f) => f.fd === fd)!;
  t.is(entry.kind, 'file');
  t.is(entry.path, file);
  t.truthy(entry.flags & 0o2000, 'O_APPEND');
  t.true(entry.offset > 0n);
});

test('a process with a socket is refused before anything changes, naming pid and fd', async (t) => {
  const dir = await tempDir(t);
  const py = spawn('python3', ['-c', 'import socket,time,sys\ns=socket.socket()\nprint("ready", flush=True)\ntime.sleep(60)'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.teardown(() => py.kill('SIGKILL'));
  await new Promise<void>((resolve) => py.stdout.once('data', () => resolve()));
  const err = await t.throwsAsync(dump({ pid: py.pid!, imagesDir: join(dir, 'img') }), { instanceOf: DumpRefusedError });
  t.regex(err.message, new RegExp(`^pid ${py.pid}: fd \\d+ -> socket:\\[\\d+\\]: sockets are not supported`));
  t.false(existsSync(join(dir, 'img')), 'no images dir');
  t.is(py.exitCode, null, 'still running');
  t.is(readStatus(py.pid!).tracerPid, 0, 'never traced');
});

/** A python3 running `code`, which prints one line when ready; that line is returned. */
async function python(t: { teardown(fn: () => unknown): void }, code: string): Promise<{ pid: number; line: string; alive: () => boolean }> {
  const py = spawn('python3', ['-c', code], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.teardown(() => py.kill('SIGKILL'));
  const line = await new Promise<string>((resolve) => py.stdout.once('data', (d: Buffer) => resolve(d.toString().trim())));
  return { pid: py.pid!, line, alive: () => py.exitCode === null && py.signalCode === null };
}

test('a tree with an unreaped child is refused, naming the zombie and its parent; a zombie itself too', async (t) => {
  const dir = await tempDir(t);
  const py = await python(t, 'import os,time\nc=os.fork()\nif c==0: os._exit(3)\ntime.sleep(0.2)\nprint(c, flush=True)\ntime.sleep(60)');
  const child = Number(py.line);
  const err = await t.throwsAsync(dump({ pid: py.pid, imagesDir: join(dir, 'img'), mode: 'leave-running' }), { instanceOf: DumpRefusedError });
  // The parent's own pipe to this test is refused too; the zombie comes first.
  t.is(err.refusals[0]?.message, `pid ${child} (python3): it has exited, and its parent (pid ${py.pid}) has not reaped it yet: a restored tree could not give the parent its exit status`);
  const self = await t.throwsAsync(dump({ pid: child, imagesDir: join(dir, 'img') }), { instanceOf: DumpRefusedError });
  t.regex(self.message, new RegExp(`^pid ${child} \\(python3\\): it has exited, .*: there is nothing to dump$`));
  t.false(existsSync(join(dir, 'img')), 'no images dir');
  t.true(py.alive(), 'the parent runs on');
  t.is(readStatus(py.pid).tracerPid, 0, 'never traced');
});

test('a process whose main thread called pthread_exit is refused, not met with EPERM', async (t) => {
  const dir = await tempDir(t);
  const py = await python(t, 'import threading,ctypes,time\nthreading.Thread(target=lambda: time.sleep(60)).start()\nprint("ready", flush=True)\nctypes.CDLL(None).pthread_exit(None)');
  // The leader turns zombie once its pthread_exit is through.
  for (let i = 0; i < 200 && !/\) Z /.test(readFileSync(`/proc/${py.pid}/stat`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 10));
  const err = await t.throwsAsync(dump({ pid: py.pid, imagesDir: join(dir, 'img') }), { instanceOf: DumpRefusedError });
  t.is(err.refusals[0]?.message, `pid ${py.pid} (python3): its main thread has exited (pthread_exit) while 1 other thread(s) run: not supported`);
  t.false(existsSync(join(dir, 'img')), 'no images dir');
  t.true(py.alive(), 'its other thread runs on');
});

test('a process another tracer holds is refused, naming the tracer', async (t) => {
  const dir = await tempDir(t);
  const target = await python(t, 'import time\nprint("ready", flush=True)\ntime.sleep(60)');
  // PTRACE_SEIZE (0x4206) from a second python3: a debugger, as far as dump can tell.
  const tracer = await python(t, `import ctypes,time\nprint(ctypes.CDLL(None).ptrace(0x4206, ${target.pid}, 0, 0), flush=True)\ntime.sleep(60)`);
  t.is(tracer.line, '0', 'the tracer seized it');
  const err = await t.throwsAsync(dump({ pid: target.pid, imagesDir: join(dir, 'img'), mode: 'leave-running' }), { instanceOf: DumpRefusedError });
  t.is(err.refusals[0]?.message, `pid ${target.pid} (python3): it is traced by pid ${tracer.pid} (python3): only one tracer at a time, detach that one first`);
  t.false(existsSync(join(dir, 'img')), 'no images dir');
  t.is(readStatus(target.pid).tracerPid, tracer.pid, 'still its tracer\'s');
});

test('a kernel thread is refused as one', async (t) => {
  const dir = await tempDir(t);
  // kthreadd, the parent of every kernel thread, where this test sees the kernel's pids.
  const stat = existsSync('/proc/2/stat') ? readFileSync('/proc/2/stat', 'utf8') : '';
  if (!/^2 \(kthreadd\) /.test(stat)) return t.pass('no kthreadd at pid 2 in this pid namespace');
  const err = await t.throwsAsync(dump({ pid: 2, imagesDir: join(dir, 'img') }), { instanceOf: DumpRefusedError });
  t.regex(err.message, /^pid 2 \(kthreadd\): it is a kernel thread: only user processes can be dumped/);
  t.false(existsSync(join(dir, 'img')), 'no images dir');
});

test('an unknown mode is refused before the process is touched', async (t) => {
  const dir = await tempDir(t);
  const w = await startWorkload('memhog', ['4', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const opts = { pid: w.pid, imagesDir: join(dir, 'img'), mode: 'eager' } as unknown as Parameters<typeof dump>[0];
  await t.throwsAsync(dump(opts), { message: /dump mode must be one of kill, leave-running, lazy, not "eager"/ });
  t.false(existsSync(join(dir, 'img')), 'no images dir');
  // Never frozen: it keeps counting at its own pace.
  await w.waitForLine(/verify ok/, 5_000, { since: w.logSize() });
});

test('a pid that does not exist is a clear error', async (t) => {
  const dir = await tempDir(t);
  await t.throwsAsync(dump({ pid: 4194303, imagesDir: join(dir, 'img') }), { message: /pid 4194303: no such process/ });
});
