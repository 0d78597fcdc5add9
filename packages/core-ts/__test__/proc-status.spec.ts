import fs from 'node:fs';
import test from 'ava';
import { buildWorkload, startWorkload } from '../../../tools/workloads/index.js';
import {
  AT,
  RLIM_INFINITY,
  parseLimits,
  parseStat,
  parseStatus,
  readAuxv,
  readCmdline,
  readComm,
  readCwd,
  readExe,
  readLimits,
  readMaps,
  readPersonality,
  readRoot,
  readStat,
  readStatus,
} from '../src/proc/index.js';

test('stat, status, auxv, limits, exe of a running memhog', async (t) => {
  const w = await startWorkload('memhog', ['4', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  const bin = await buildWorkload('memhog');

  const st = readStat(w.pid);
  t.is(st.pid, w.pid);
  t.is(st.comm, 'memhog');
  t.true(['R', 'S'].includes(st.state));
  t.is(st.numThreads, 1);
  // setsid() in the launcher: the workload leads its own session and group.
  t.is(st.session, w.pid);
  t.is(st.pgrp, w.pid);
  t.true(st.startCode > 0 && st.startCode < st.endCode);
  t.true(st.startData < st.endData && st.endData <= st.startBrk);
  t.true(st.argStart < st.argEnd && st.argEnd <= st.envStart && st.envStart < st.envEnd);
  t.true(st.startStack > 0 && st.startStack < st.argStart);
  t.is(st.exitCode, 0);
  t.is(readStat(w.pid, w.pid).startTime, st.startTime);

  const status = readStatus(w.pid);
  t.like(status, { name: 'memhog', tgid: w.pid, pid: w.pid, ppid: st.ppid, threads: 1, tracerPid: 0 });
  t.deepEqual(status.uid, { real: 0, effective: 0, saved: 0, fs: 0 });
  t.is(status.nsPid.at(-1), w.pid);
  t.is(typeof status.capEff, 'bigint');
  t.is(status.capEff, readStatus(process.pid).capEff);
  t.is(status.sigBlk, 0n);
  t.is(status.umask, process.umask());

  const auxv = readAuxv(w.pid);
  t.is(auxv.get(AT.PAGESZ), 4096n);
  t.is(auxv.raw.length, (auxv.entries.length + 1) * 16);
  const vdso = readMaps(w.pid).find((m) => m.kind === 'vdso');
  t.is(auxv.get(AT.SYSINFO_EHDR), BigInt(vdso?.start ?? -1));
  const entry = Number(auxv.get(AT.ENTRY));
  t.true(entry >= st.startCode && entry < st.endCode);

  const limits = readLimits(w.pid);
  t.is(limits.length, 16);
  t.deepEqual(
    limits.map((l) => [l.resource, l.soft, l.hard]),
    readLimits(process.pid).map((l) => [l.resource, l.soft, l.hard]),
  );
  t.is(limits[7]?.resource, 'RLIMIT_NOFILE');

  const exe = readExe(w.pid);
  const s = fs.statSync(bin, { bigint: true });
  t.like(exe, { path: bin, deleted: false, ino: s.ino, dev: s.dev, size: s.size, mtimeNs: s.mtimeNs });
  t.is(readComm(w.pid), 'memhog');
  t.is(readCwd(w.pid).path, process.cwd());
  t.is(readRoot(w.pid), '/');
  t.is(readPersonality(w.pid), 0);
  t.deepEqual(readCmdline(w.pid), [bin, '4', '--interval-ms', '20', '--lifetime-s', '600']);
});

test('stat: comm with spaces and parens, fields 45-52', (t) => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
  fields[0] = 'S';
  const st = parseStat(42, `42 (a) b (c)) ${fields.join(' ')}\n`);
  t.is(st.comm, 'a) b (c)');
  t.is(st.state, 'S');
  t.is(st.ppid, 4);
  t.is(st.startTime, 22);
  t.deepEqual(
    [st.startData, st.endData, st.startBrk, st.argStart, st.argEnd, st.envStart, st.envEnd, st.exitCode],
    [45, 46, 47, 48, 49, 50, 51, 52],
  );
  t.throws(() => parseStat(42, '42 (x) S 1 2'), { message: /^pid 42: \/proc\/42\/stat: only/ });
});

test('status: caps as bigint, groups, NSpid', (t) => {
  const text = [
    'Name:\tx\\ny',
    'Umask:\t0022',
    'State:\tS (sleeping)',
    'Tgid:\t10',
    'Pid:\t10',
    'PPid:\t1',
    'TracerPid:\t0',
    'Uid:\t1\t2\t3\t4',
    'Gid:\t5\t6\t7\t8',
    'Groups:\t5 27 ',
    'NSpid:\t10\t1',
    'Threads:\t1',
    'SigPnd:\t0000000000000000',
    'ShdPnd:\t0000000000000000',
    'SigBlk:\t0000000000010000',
    'SigIgn:\t0000000000001000',
    'SigCgt:\t0000000180000000',
    'CapInh:\t0000000000000000',
    'CapPrm:\t000001ffffffffff',
    'CapEff:\t000001ffffffffff',
    'CapBnd:\t000001ffffffffff',
    'CapAmb:\t0000000000000000',
  ].join('\n');
  const s = parseStatus(10, text);
  t.is(s.name, 'x\ny');
  t.is(s.umask, 0o22);
  t.deepEqual(s.gid, { real: 5, effective: 6, saved: 7, fs: 8 });
  t.deepEqual(s.groups, [5, 27]);
  t.deepEqual(s.nsPid, [10, 1]);
  t.is(s.capEff, 0x1ffffffffffn);
  t.is(s.sigBlk, 1n << 16n);
  t.throws(() => parseStatus(10, 'Name:\tx\n'), { message: /no Umask|no State/ });
});

test('limits: unlimited and labels with spaces', (t) => {
  const own = fs.readFileSync('/proc/self/limits', 'utf8');
  const lim = parseLimits(1, own);
  t.is(lim.length, 16);
  const l = parseLimits(
    1,
    own.replace(/^(Max open files\s+)\S+(\s+)\S+/m, (_m, a: string, b: string) => `${a}${'1024'.padEnd(20)}${b.slice(0, 1)}unlimited`),
  );
  t.is(l[7]?.soft, 1024n);
  t.is(l[7]?.hard, RLIM_INFINITY);
  t.throws(() => parseLimits(1, 'nope'), { message: /missing header/ });
});

test('errors name the pid and say ESRCH', (t) => {
  // pid_max is at most 2^22; this one cannot exist.
  const pid = 0x3ffffe;
  const check = (f: () => unknown): void => {
    const e = t.throws(f);
    t.is(e?.message, `pid ${pid}: no such process`);
    t.is((e as { code?: string } | undefined)?.code, 'ESRCH');
  };
  check(() => readStat(pid));
  check(() => readStatus(pid));
  check(() => readAuxv(pid));
  check(() => readLimits(pid));
  check(() => readExe(pid));
  check(() => readComm(pid));
  t.throws(() => readStat(-1), { message: /invalid pid/ });
});
