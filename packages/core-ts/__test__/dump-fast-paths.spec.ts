// The shortcuts a lazy dump takes while the tree is frozen, each against the slow way it
// replaces: PAGEMAP_SCAN vs a pagemap read, pre-freeze VmFlags vs smaps (and the syscall watch
// that spares smaps again), the signals asked.
import test from 'ava';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync } from 'node:fs';
import { getThreadAffinity, setThreadAffinity } from '@lazymig/uffd-rs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startWorkload } from '../../../tools/workloads/index.js';
import { PM_FILE, PM_PRESENT, PM_SWAPPED, PM_ZERO, readMaps, readFlaggedVmas, readFlaggedVmasOffThread, readPagemap, readSmaps, readTree, scanPopulated } from '../src/proc/index.js';
import { sigactionsToAsk } from '../src/dump/ask-process.js';
import { frozenLayout, staleFlags } from '../src/dump/layout.js';
import { FlagSyscallWatch } from '../src/dump/flag-syscalls.js';
import { StaleFlagsError, dump } from '../src/dump/index.js';
import { vmaFlagBits, wholePopulatedAnon } from '../src/dump/memory.js';
import { freezeTree } from '../src/dump/freeze.js';
import { ImagesDirWriter, sampleImageSet } from '../src/image/index.js';

const hexField = (line: string, key: string): number => Number.parseInt(new RegExp(`${key}=0x([0-9a-f]+)`).exec(line)?.[1] ?? 'NaN', 16);

/** Page address -> our flags (only populated pages), from runs. */
function pageFlags(runs: Iterable<{ start: number; pages: number; flags: number }>, mask: number): Map<number, number> {
  const out = new Map<number, number>();
  for (const r of runs) {
    for (let i = 0; i < r.pages; i++) if (r.flags & (PM_PRESENT | PM_SWAPPED)) out.set(r.start + i * 4096, r.flags & mask);
  }
  return out;
}

test('PAGEMAP_SCAN finds the same populated, zero and file pages as a pagemap read', async (t) => {
  const w = await startWorkload('memhog', ['8', '--untouched-mib', '64', '--zero-mib', '1', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const frozen = freezeTree(w.pid);
  t.teardown(() => frozen.resume());
  const vmas = readMaps(w.pid).filter((v) => v.kind !== 'vsyscall' && v.kind !== 'vvar' && v.kind !== 'vvar_vclock' && !v.perms.shared);
  const scanned = scanPopulated(w.pid, vmas.map((v) => ({ start: v.start, end: v.end, file: v.kind === 'file' })));
  const mask = PM_PRESENT | PM_SWAPPED | PM_ZERO;
  for (const v of vmas) {
    const inVma = [...scanned].filter((r) => r.start >= v.start && r.start < v.end);
    t.true(inVma.every((r) => r.start + r.pages * 4096 <= v.end), 'no run crosses a VMA end');
    const want = pageFlags(readPagemap(w.pid, v.start, v.end), mask | (v.kind === 'file' ? PM_FILE : 0));
    const got = pageFlags(inVma, mask | (v.kind === 'file' ? PM_FILE : 0));
    t.deepEqual(got, want, `${v.start.toString(16)} ${v.path}`);
  }
  const zero = hexField(w.ready[0], 'zero');
  t.true([...scanned].some((r) => r.start <= zero && zero < r.start + r.pages * 4096 && r.flags & PM_ZERO), 'the zero-page region is found');
});

test('the pre-freeze VmFlags are reused only on an identical layout, and staleFlags catches a change of flags', async (t) => {
  const w = await startWorkload('memhog', ['4', '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const pre = readSmaps(w.pid);
  const frozen = freezeTree(w.pid);
  t.teardown(() => frozen.resume());
  const same = frozenLayout(w.pid, pre);
  t.is(same.flags, 'reused');
  t.deepEqual(same.vmas.map((v) => [v.start, v.end, v.vmFlagCodes]), pre.map((v) => [v.start, v.end, v.vmFlagCodes]));
  const after = await readFlaggedVmasOffThread(w.pid);
  t.deepEqual(after.map((v) => v.vmFlagCodes), readSmaps(w.pid).map((v) => v.vmFlagCodes), 'smaps read off the thread reads the same');
  t.deepEqual(readFlaggedVmas(w.pid), after, 'and so does the flags-only read');
  t.is(staleFlags(w.pid, same.vmas, after), undefined);

  // One VMA longer than it is now: a changed layout, read from smaps again.
  const grown = pre.map((v, i) => (i === 0 ? { ...v, end: v.end + 4096 } : v));
  t.is(frozenLayout(w.pid, grown).flags, 'smaps');
  t.is(frozenLayout(w.pid, undefined).flags, 'smaps');

  // As if a whole VMA had been madvise(MADV_DONTFORK)ed between the two reads.
  const region = hexField(w.ready[0], 'region');
  const wrong = same.vmas.map((v) => (v.start === region ? { ...v, madvise: [...v.madvise, 'MADV_DONTFORK'], vmFlagCodes: [...v.vmFlagCodes, 'dc'] } : v));
  t.regex(staleFlags(w.pid, wrong, after) ?? '', new RegExp(`^pid ${w.pid}: mapping ${region.toString(16)}-.*flags changed just before the freeze`));
});

test('sigactions asked: the caught signals and SIGCHLD', (t) => {
  t.deepEqual(sigactionsToAsk({ caught: 0n, ignored: 0n }), [17]);
  // SIGINT (2) and SIGUSR1 (10) caught, SIGPIPE (13) ignored: an ignored signal needs no question.
  t.deepEqual(sigactionsToAsk({ caught: (1n << 1n) | (1n << 9n), ignored: 1n << 12n }), [2, 10, 17]);
  t.deepEqual(sigactionsToAsk({ caught: 1n << 63n, ignored: 0n }), [17, 64]);
});

test('images dir writer: pages files of vanished pids are dropped, a non-durable commit and a retract', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'lazymig-fast-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const { images: set, pages } = sampleImageSet();
  const dir = join(root, 'img');
  const w = await ImagesDirWriter.create(dir);
  await w.pages(999_999, set.inventory.pageSize); // a process that exits before the freeze
  for (const [pid, data] of pages) await (await w.pages(pid, set.inventory.pageSize)).write(data);
  await w.keepPagesOf(set.inventory.tree.map((p) => p.pid));
  const images = await w.commit(set, { durable: false });
  t.deepEqual(images.inventory.tree.map((p) => p.pid), set.inventory.tree.map((p) => p.pid));
  t.false((await readdir(dir)).includes('pages-999999.img'));
  await w.retract();
  t.false(existsSync(dir));
  t.deepEqual((await readdir(root)).filter((n) => n.startsWith('.')), [], 'nothing left behind');
  await w.retract(); // idempotent
});

test('flag-syscall watch: quiet while the process only computes, not after a madvise or a new thread set', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-flagwatch-'));
  const trigger = join(dir, 'drop');
  const w = await startWorkload('memhog', ['4', '--interval-ms', '5', '--drop-trigger', trigger]);
  t.teardown(async () => {
    w.kill();
    await rm(dir, { recursive: true, force: true });
  });
  await w.waitForLine(/verify ok pass=2 /, 20_000);
  const watch = FlagSyscallWatch.open(readTree(w.pid));
  if (!watch) return t.fail('perf counters on the syscall-exit tracepoint are not available here');
  t.teardown(() => watch.close());
  // Passes of reading, writing, logging and sleeping: none of that can change a flag.
  await w.waitForLine(/verify ok pass=5 /, 20_000);
  t.true(watch.quiet(w.pid, [w.pid]));
  t.false(watch.quiet(w.pid, [w.pid, w.pid + 1]), 'another thread set is never quiet');
  await writeFile(trigger, '');
  await w.waitForLine(/dropped dontneed=/, 20_000);
  t.false(watch.quiet(w.pid, [w.pid]), 'madvise and munmap were counted');
});

test('a lazy dump of a process that keeps changing a mapping\'s flags: its images hold the flags it is frozen with, or it withdraws them and the process goes on', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-toggle-'));
  const w = await startWorkload('memhog', ['4', '--interval-ms', '0', '--toggle-dontfork', '1']);
  t.teardown(async () => {
    w.kill();
    await rm(dir, { recursive: true, force: true });
  });
  await w.waitForLine(/verify ok pass=3 /, 20_000);
  const region = hexField(w.ready[0], 'region');
  let dumped = 0;
  let withdrawn = 0;
  for (let i = 0; i < 6; i++) {
    let r: Awaited<ReturnType<typeof dump>>;
    try {
      r = await dump({ pid: w.pid, imagesDir: join(dir, `img${i}`), mode: 'lazy', pageServer: { address: '127.0.0.1', port: 1 } });
    } catch (err) {
      t.true(err instanceof StaleFlagsError, String(err));
      t.false(existsSync(join(dir, `img${i}`)), 'withdrawn images are gone');
      withdrawn++;
      continue;
    }
    try {
      // Still frozen: what the images say is what the kernel says now.
      const now = readSmaps(w.pid).find((v) => v.start === region)!;
      const imaged = r.images.processes[0]!.core.vmas.find((v) => v.start === region)!;
      t.is(imaged.madvise, vmaFlagBits(now).madvise, `dump ${i}: madvise bits of the region`);
      dumped++;
    } finally {
      r.frozen!.resume();
    }
  }
  t.log(`${dumped} dumps kept, ${withdrawn} withdrawn`);
  const since = w.logSize();
  await w.waitForLine(/verify ok /, 10_000, { since });
  t.notRegex(w.readLog(), /FAILED/);
});

test('wholly populated anonymous VMAs are found before the freeze; untouched and zero-page ones are not; a lazy dump records such a VMA as a scan of the frozen process would', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-whole-'));
  const w = await startWorkload('memhog', ['8', '--interval-ms', '10']);
  t.teardown(async () => {
    w.kill();
    await rm(dir, { recursive: true, force: true });
  });
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  const [region, untouched, zero] = ['region', 'untouched', 'zero'].map((k) => hexField(w.ready[0], k));
  const anon = readSmaps(w.pid).filter((v) => v.kind === 'anon');
  const whole = wholePopulatedAnon(w.pid, anon);
  t.true(whole.has(region!), 'the region memhog wrote is wholly populated');
  t.false(whole.has(untouched!), 'a VMA never touched is not');
  t.false(whole.has(zero!), 'a VMA only read (the zero page) is not');

  // A lazy dump (quiet: the region is not scanned while frozen) records what a scan of the
  // frozen process says: the region's every page, lazily.
  const r = await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'lazy', pageServer: { address: '127.0.0.1', port: 1 } });
  try {
    const end = region! + (8 << 20);
    const recorded = r.images.processes[0]!.pagemap.entries.filter((e) => e.start >= region! && e.start < end);
    const scanned = [...scanPopulated(w.pid, [{ start: region!, end, file: false }])];
    t.is(scanned.reduce((n, x) => n + x.pages, 0), (8 << 20) / 4096, 'the frozen region is wholly populated');
    t.deepEqual(recorded, [{ start: region!, pages: (8 << 20) / 4096, kind: 'lazy' }]);
  } finally {
    r.frozen!.resume();
  }
});

test('dump asks its questions with the threads on its own CPU, and gives every thread its CPU set back', async (t) => {
  const cpus = getThreadAffinity();
  if (cpus.length < 2) return t.pass('one CPU: nothing to move');
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-affinity-'));
  const w = await startWorkload('threads', ['3']);
  t.teardown(async () => {
    w.kill();
    await rm(dir, { recursive: true, force: true });
  });
  await w.waitForLine(/^ready /, 20_000);
  const tids = readdirSync(`/proc/${w.pid}/task`).map(Number).sort((a, b) => a - b);
  // Each thread a set of its own: the last CPU for one, all for the others.
  setThreadAffinity([cpus[cpus.length - 1]!], tids[1]!);
  const before = tids.map((tid) => getThreadAffinity(tid));
  await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'leave-running' });
  t.deepEqual(tids.map((tid) => getThreadAffinity(tid)), before);
  t.deepEqual(getThreadAffinity(), cpus, 'and ours');
});
