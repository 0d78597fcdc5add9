import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { startWorkload } from '../../../tools/workloads/index.js';
import { O, classifyFd, decodeOpenFlags, fdRefusalReason, findRefusals, parseMaps, readFd, readFds } from '../src/proc/index.js';
import type { ProcFdEntry } from '../src/proc/index.js';

test("appender's fds: flags, offsets and kinds", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymig-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'out.txt');
  const w = await startWorkload('appender', [file, '--interval-ms', '5']);
  t.teardown(() => w.kill());
  const appendFd = Number(/append_fd=(\d+)/.exec(w.ready[0])?.[1]);
  const roFd = Number(/ro_fd=(\d+)/.exec(w.ready[0])?.[1]);
  const roPath = /ro_path=(\S+)/.exec(w.ready[0])?.[1];
  await w.waitForLine(/^appended counter=3 /, 5000);

  // Stopped, the offset cannot move between our two reads.
  process.kill(w.pid, 'SIGSTOP');
  let fds: ProcFdEntry[];
  try {
    await waitStopped(w.pid);
    fds = readFds(w.pid);
    const a = fds.find((f) => f.fd === appendFd);
    t.truthy(a);
    t.like(a, { kind: 'file', path: file, deleted: false, target: file });
    t.is(a?.info.pos, fs.statSync(file).size);
    t.true(a?.flagNames.includes('O_APPEND') && a.flagNames.includes('O_WRONLY'));
    t.is((a?.info.flags ?? 0) & O.APPEND, O.APPEND);
    t.is(a?.stat?.ino, fs.statSync(file, { bigint: true }).ino);
    t.true((a?.info.mntId ?? 0) > 0);
  } finally {
    process.kill(w.pid, 'SIGCONT');
  }
  t.deepEqual(
    fds.map((f) => f.fd),
    [0, 1, 2, appendFd, roFd],
  );
  t.like(fds[0], { kind: 'dev_null', target: '/dev/null' });
  t.like(fds[1], { kind: 'file', path: w.logPath });
  t.true(fds[1]?.flagNames.includes('O_APPEND'));
  t.like(readFd(w.pid, roFd), { kind: 'file', path: roPath, info: { pos: 1 } });
  t.deepEqual(readFd(w.pid, roFd).flagNames.filter((f) => f !== 'O_LARGEFILE'), ['O_RDONLY']);
  t.deepEqual(findRefusals(w.pid), []);
  t.throws(() => readFd(w.pid, 99), { message: `pid ${w.pid}: /proc/${w.pid}/fd/99: no such file`, code: 'ENOENT' });
});

async function waitStopped(pid: number): Promise<void> {
  for (let i = 0; i < 200; i++) {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    if (st.slice(st.lastIndexOf(')') + 2).startsWith('T')) return;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`pid ${pid} did not stop`);
}

test('fd kinds of our own process', (t) => {
  // fd 0/1/2 of the test runner vary; open a few things whose kinds we know.
  const fdDir = fs.openSync(os.tmpdir(), 'r');
  const fdNull = fs.openSync('/dev/null', 'r+');
  t.teardown(() => {
    fs.closeSync(fdDir);
    fs.closeSync(fdNull);
  });
  const fds = readFds(process.pid);
  t.like(fds.find((f) => f.fd === fdDir), { kind: 'dir', path: fs.realpathSync(os.tmpdir()) });
  t.like(fds.find((f) => f.fd === fdNull), { kind: 'dev_null' });
  t.true(fds.find((f) => f.fd === fdNull)?.flagNames.includes('O_RDWR'));
  // node has its own epoll and eventfd
  t.true(fds.some((f) => f.kind === 'anon_inode' && f.anonType === 'eventpoll'));
  t.true(fds.some((f) => f.kind === 'pipe' || f.kind === 'anon_inode'));
});

test('fd classification and refusals', (t) => {
  t.like(classifyFd('pipe:[123]', undefined), { kind: 'pipe', objectIno: 123n });
  t.like(classifyFd('socket:[9]', undefined), { kind: 'socket', objectIno: 9n });
  t.like(classifyFd('anon_inode:[io_uring]', undefined), { kind: 'anon_inode', anonType: 'io_uring' });
  t.like(classifyFd('anon_inode:inotify', undefined), { kind: 'anon_inode', anonType: 'inotify' });
  t.like(classifyFd('/memfd:x (deleted)', undefined), { kind: 'memfd', path: '/memfd:x', deleted: true });
  const chr = (maj: number, min: number) => ({ dev: 0n, ino: 0n, mode: 0o020666, rdev: BigInt((maj << 8) | min), size: 0n, mtimeNs: 0n });
  t.is(classifyFd('/dev/pts/3', chr(136, 3)).kind, 'pty');
  t.is(classifyFd('/dev/tty', chr(5, 0)).kind, 'tty');
  t.is(classifyFd('/dev/null', chr(1, 3)).kind, 'dev_null');
  t.is(classifyFd('/dev/urandom', chr(1, 9)).kind, 'chr');
  const entry = (target: string): ProcFdEntry => ({
    fd: 5,
    target,
    ...classifyFd(target, undefined),
    stat: undefined,
    info: { pos: 0, flags: 2, mntId: 1, ino: undefined, extra: {} },
    flagNames: [],
  });
  t.regex(fdRefusalReason(entry('socket:[1]')) ?? '', /sockets/);
  t.regex(fdRefusalReason(entry('anon_inode:[io_uring]')) ?? '', /io_uring/);
  t.regex(fdRefusalReason(entry('/dev/shm/x')) ?? '', /POSIX shared memory/);
  t.is(fdRefusalReason(entry('anon_inode:[eventfd]')), undefined);
  t.deepEqual(decodeOpenFlags(0o2102001), ['O_WRONLY', 'O_APPEND', 'O_LARGEFILE', 'O_CLOEXEC']);
  const maps = parseMaps(3, '7f0000000000-7f0000001000 rw-s 00000000 00:01 5 /dev/zero (deleted)\n');
  const r = findRefusals(3, { maps, fds: [entry('socket:[77]')] });
  t.deepEqual(
    r.map((x) => x.message),
    [
      'pid 3: mapping 7f0000000000-7f0000001000 rw-s /dev/zero (deleted): shared anonymous memory is not supported',
      'pid 3: fd 5 -> socket:[77]: sockets are not supported',
    ],
  );
});
