import fs from 'node:fs';
import test from 'ava';
import { buildWorkload, startWorkload } from '../../../tools/workloads/index.js';
import {
  PM_EXCLUSIVE,
  PM_FILE,
  PM_PRESENT,
  PM_SWAPPED,
  PM_ZERO,
  PagemapReader,
  describePageFlags,
  findVma,
  parseMaps,
  parseFlaggedVmas,
  parseSmaps,
  readMaps,
  readPagemap,
  readSmaps,
} from '../src/proc/index.js';

const hexField = (line: string, key: string): number => Number.parseInt(new RegExp(`${key}=0x([0-9a-f]+)`).exec(line)?.[1] ?? 'NaN', 16);
const numField = (line: string, key: string): number => Number(new RegExp(`${key}=(\\d+)`).exec(line)?.[1] ?? NaN);

test('maps and pagemap agree with what memhog knows about its memory', async (t) => {
  const w = await startWorkload('memhog', ['16', '--untouched-mib', '1024', '--zero-mib', '2']);
  t.teardown(() => w.kill());
  const line = w.ready[0];
  const region = hexField(line, 'region');
  const size = numField(line, 'size');
  const untouched = hexField(line, 'untouched');
  const untouchedSize = numField(line, 'untouched_size');
  const zero = hexField(line, 'zero');
  const zeroSize = numField(line, 'zero_size');

  const maps = readMaps(w.pid);
  const v = findVma(maps, region);
  t.truthy(v);
  t.like(v, { start: region, end: region + size, permsText: 'rw-p', kind: 'anon', path: '', inode: 0n, offset: 0 });
  t.like(findVma(maps, untouched), { start: untouched, end: untouched + untouchedSize, kind: 'anon' });
  // The guard pages around each region.
  t.like(findVma(maps, region - 4096), { permsText: '---p', end: region });

  const bin = await buildWorkload('memhog');
  const text = maps.filter((m) => m.path === bin);
  t.true(text.length >= 2);
  t.true(text.every((m) => m.kind === 'file' && m.inode === BigInt(fs.statSync(bin).ino)));
  for (const k of ['stack', 'vdso', 'vvar', 'heap'] as const) t.true(maps.some((m) => m.kind === k), k);

  const r = new PagemapReader(w.pid);
  t.teardown(() => r.close());
  const filled = r.read(region, region + size);
  t.is(filled.count, 1, [...filled].map((x) => `${x.pages}:${describePageFlags(x.flags)}`).join(' '));
  t.deepEqual(filled.run(0), { start: region, pages: size / 4096, flags: PM_PRESENT | PM_EXCLUSIVE });

  const t0 = performance.now();
  const none = r.read(untouched, untouched + untouchedSize);
  const ms = performance.now() - t0;
  t.log(`pagemap of 1 GiB untouched: ${ms.toFixed(1)} ms`);
  t.deepEqual([...none], [{ start: untouched, pages: untouchedSize / 4096, flags: 0 }]);
  t.true(ms < 1000);

  const zeros = r.read(zero, zero + zeroSize);
  t.deepEqual([...zeros], [{ start: zero, pages: zeroSize / 4096, flags: PM_PRESENT | PM_ZERO }]);

  // Text pages of the binary are page cache pages: present and "file", never ours to save.
  const tx = text.find((m) => m.perms.exec);
  t.truthy(tx);
  if (tx) {
    const runs = readPagemap(w.pid, tx.start, tx.end);
    t.true(runs.countPages(PM_PRESENT) > 0);
    t.is(runs.countPages(PM_PRESENT | PM_FILE, PM_PRESENT), 0);
  }
});

test('smaps reports usage and VmFlags of memhog regions', async (t) => {
  const w = await startWorkload('memhog', ['8', '--untouched-mib', '1', '--zero-mib', '1']);
  t.teardown(() => w.kill());
  const region = hexField(w.ready[0], 'region');
  const smaps = readSmaps(w.pid);
  const v = findVma(smaps, region);
  t.truthy(v);
  if (!v) return;
  t.is(v.stats['Rss'], 8 << 20);
  t.is(v.stats['Anonymous'], 8 << 20);
  t.is(v.stats['Swap'], 0);
  t.true(v.vmFlags.mayShare === false && v.vmFlags.shared === false && v.vmFlags.hugetlb === false);
  t.true(v.vmFlagCodes.includes('rd') && v.vmFlagCodes.includes('wr'));
  t.deepEqual(v.madvise, []);
  const stack = smaps.find((m) => m.kind === 'stack');
  t.true(stack?.vmFlags.growsDown);
  // smaps and maps list the same VMAs.
  t.deepEqual(
    smaps.map((m) => [m.start, m.end]),
    readMaps(w.pid).map((m) => [m.start, m.end]),
  );
});

test('forker: COW pages still shared after fork are not exclusive, and not zero', async (t) => {
  const w = await startWorkload('forker', ['--kib', '256', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  const child = numField(w.ready[0], 'child');
  const region = hexField(w.ready[0], 'region');
  const size = numField(w.ready[0], 'size');
  await w.waitForLine(/^child counter=2 /, 5000);
  const half = size / 2 / 4096;
  for (const pid of [w.pid, child]) {
    const runs = readPagemap(pid, region, region + size);
    const desc = [...runs].map((x) => `${x.pages}:${describePageFlags(x.flags)}`).join(' ');
    // The child rewrote the first half (its own copies now, and the parent's too);
    // the second half is one physical copy mapped by both.
    t.deepEqual(
      [...runs].map((x) => [x.pages, x.flags]),
      [
        [half, PM_PRESENT | PM_EXCLUSIVE],
        [half, PM_PRESENT],
      ],
      `pid ${pid}: ${desc}`,
    );
  }
});

test('pagemap rejects bad ranges and dead pids clearly', async (t) => {
  const w = await startWorkload('sleeper', ['--sleep-ms', '1000']);
  t.teardown(() => w.kill());
  t.throws(() => readPagemap(w.pid, 4095, 8192), { message: new RegExp(`^pid ${w.pid}: /proc/${w.pid}/pagemap: bad range`) });
  w.kill();
  await w.exited;
  t.throws(() => readPagemap(w.pid, 0, 4096), { message: `pid ${w.pid}: no such process`, code: 'ESRCH' });
  t.throws(() => readMaps(w.pid), { message: `pid ${w.pid}: no such process` });
});

test('maps classification of special and shared mappings', (t) => {
  const text = [
    '00400000-00401000 r-xp 00000000 fe:00 1234                               /usr/bin/with space (deleted)',
    '01000000-01021000 rw-p 00000000 00:00 0                                  [heap]',
    '7f0000000000-7f0000001000 rw-s 00000000 00:01 5                          /dev/zero (deleted)',
    '7f0000001000-7f0000002000 rw-s 00000000 00:01 32768                      /SYSV0000abcd (deleted)',
    '7f0000002000-7f0000003000 rw-s 00000000 00:01 7                          /memfd:buf (deleted)',
    '7f0000003000-7f0000004000 rw-s 00000000 00:1a 8                          /dev/shm/seg',
    '7f0000004000-7f0000005000 rw-p 00000000 00:00 0                          [anon:my name]',
    '7f0000005000-7f0000006000 rw-p 00000000 00:05 4                          /dev/zero',
    '7f0000006000-7f0000007000 rw-p 00000000 00:00 0 ',
    '7f0000007000-7f0000008000 rw-s 00000000 00:01 9                          [anon_shmem:sh]',
    '7f0000008000-7f0000009000 rw-p 00000000 fe:00 10                         /tmp/new\\012line',
    '7ffc00000000-7ffc00004000 r--p 00000000 00:00 0                          [vvar]',
    '7ffc00004000-7ffc00006000 r--p 00000000 00:00 0                          [vvar_vclock]',
    '7ffc00006000-7ffc00008000 r-xp 00000000 00:00 0                          [vdso]',
    '7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]',
    '7ffe00000000-7ffe00001000 r-xp 00000000 00:00 0                          [uprobes]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
  ].join('\n');
  const v = parseMaps(1, text);
  t.deepEqual(
    v.map((m) => [m.kind, m.shmem ?? '', m.path, m.deleted]),
    [
      ['file', '', '/usr/bin/with space', true],
      ['heap', '', '[heap]', false],
      ['shmem', 'anon_shared', '/dev/zero', true],
      ['shmem', 'sysv', '/SYSV0000abcd', true],
      ['shmem', 'memfd', '/memfd:buf', true],
      ['shmem', 'posix_shm', '/dev/shm/seg', false],
      ['anon', '', '[anon:my name]', false],
      ['anon', '', '/dev/zero', false],
      ['anon', '', '', false],
      ['shmem', 'anon_shmem_named', '[anon_shmem:sh]', false],
      ['file', '', '/tmp/new\nline', false],
      ['vvar', '', '[vvar]', false],
      ['vvar_vclock', '', '[vvar_vclock]', false],
      ['vdso', '', '[vdso]', false],
      ['stack', '', '[stack]', false],
      ['special', '', '[uprobes]', false],
      ['vsyscall', '', '[vsyscall]', false],
    ],
  );
  t.is(v[0]?.devMajor, 0xfe);
  t.is(v[6]?.anonName, 'my name');
  t.is(v.at(-1)?.start, 0xffffffffff600000);
  t.throws(() => parseMaps(7, '1000-0 rw-p 00000000 00:00 0'), { message: /^pid 7: \/proc\/7\/maps: bad range/ });
  t.throws(() => parseMaps(7, '900000000000-900000001000 rw-p 00000000 00:00 0'), { message: /outside x86-64 user space/ });
  t.throws(() => parseMaps(7, 'garbage'), { message: /cannot parse line/ });
});

test('smaps VmFlags decoding', (t) => {
  const text = [
    '7f0000000000-7f0000001000 rw-p 00000000 00:00 0 ',
    'Size:                  4 kB',
    'Rss:                   4 kB',
    'THPeligible:    0',
    'VmFlags: rd wr mr mw me dd wf dc mg ht sd um uw ac ',
  ].join('\n');
  const [v] = parseSmaps(1, text);
  t.truthy(v);
  if (!v) return;
  t.is(v.stats['Rss'], 4096);
  t.is(v.extra['THPeligible'], '0');
  t.like(v.vmFlags, { dontDump: true, wipeOnFork: true, dontCopy: true, mergeable: true, hugetlb: true, softDirty: true, uffdMissing: true, uffdWp: true, shared: false });
  t.deepEqual(v.madvise, ['MADV_DONTDUMP', 'MADV_WIPEONFORK', 'MADV_DONTFORK', 'MADV_MERGEABLE']);
});

test('the flags-only smaps read gives every VMA its own VmFlags, as the full parse does', (t) => {
  const vma = (start: string, flags: string): string[] => [
    `${start}-${(parseInt(start, 16) + 0x1000).toString(16)} rw-p 00000000 00:00 0 `,
    'Size:                  4 kB',
    'Rss:                   4 kB',
    'ProtectionKey:         0',
    `VmFlags: ${flags}`,
  ];
  const text = [...vma('7f0000000000', 'rd wr mr mw me ac '), ...vma('7f0000002000', 'rd wr mr mw me dc ac '), ...vma('7f0000004000', 'rd wr mr mw me ac ')].join('\n') + '\n';
  const full = parseSmaps(1, text);
  const flagged = parseFlaggedVmas(1, text);
  t.deepEqual(
    flagged,
    full.map(({ stats: _s, extra: _e, ...v }) => v),
  );
  t.deepEqual(flagged.map((v) => v.madvise), [[], ['MADV_DONTFORK'], []]);
  t.is(flagged[0]!.vmFlags, flagged[2]!.vmFlags, 'the same flags are decoded once');
  t.throws(() => parseFlaggedVmas(1, 'VmFlags: rd\n'), { message: /VmFlags before any mapping/ });
});
