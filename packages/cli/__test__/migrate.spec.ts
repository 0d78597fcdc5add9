import test, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { startWorkload, waitForLogLine, type WorkloadName } from '../../../tools/workloads/index.js';
import { mkdir } from 'node:fs/promises';
import { alive, copyImages, guardsDone, lazymigIn, readPidfile, setUp, type Proc } from './migrate-helpers.js';

/**
 * Migrates a running workload with the four commands and returns what a user would look
 * at: the workload's log before and after, and the restored pid.
 */
async function migrate(t: ExecutionContext, name: WorkloadName, args: string[], progress: RegExp, opts: { armed?: boolean } = {}) {
  const env = await setUp(t);
  const { hosts, work, port } = env;
  const w = await startWorkload(name, args, { logDir: work });
  t.teardown(() => w.kill());
  await w.waitForLine(progress, 30_000);
  const srcImages = join(work, 'src');
  const dstImages = join(work, 'dst');
  const pidfile = join(work, 'restored.pid');
  const daemonArgs = ['lazy-pages', '--page-server', '--images-dir', dstImages];
  const restoreArgs = ['restore', '--images-dir', dstImages, '--lazy-pages', '--restore-detached', '--pidfile', pidfile];

  let daemon: Proc | undefined;
  let restorer: Proc | undefined;
  if (opts.armed) {
    // The destination first, waiting for images that do not exist yet (nor does their dir).
    const workDir = join(work, 'dst-work');
    await mkdir(workDir);
    const armed = ['--work-dir', workDir, '--wait-images', '60'];
    daemon = env.track(lazymigIn(hosts, hosts.dst, [...daemonArgs, ...armed]));
    restorer = env.track(lazymigIn(hosts, hosts.dst, [...restoreArgs, ...armed]));
    await Promise.all([daemon.waitForStderr(/waiting for the images/, 30_000), restorer.waitForStderr(/waiting up to 60 s for the images/, 30_000)]);
  }
  const dumper = env.track(
    lazymigIn(hosts, hosts.src, ['dump', '--tree', String(w.pid), '--images-dir', srcImages, '--lazy-pages', '--address', hosts.src.address, '--port', String(port)]),
  );
  await dumper.waitForStderr(/page server listening/, 60_000);
  const frozenAt = w.logSize();
  await copyImages(srcImages, dstImages);

  // Started together, as the README allows: restore waits for the daemon's socket.
  daemon ??= env.track(lazymigIn(hosts, hosts.dst, daemonArgs));
  restorer ??= env.track(lazymigIn(hosts, hosts.dst, restoreArgs));
  t.is(await restorer.exited, 0, restorer.stderr());
  const restoredPid = await readPidfile(pidfile);
  env.trackPid(restoredPid);

  t.is(await daemon.exited, 0, daemon.stderr());
  t.is(await dumper.exited, 0, dumper.stderr());
  t.regex(daemon.stderr(), /all \d+ lazy pages in .*; cpu \d+ ms/);
  t.regex(dumper.stderr(), /what="destination holds every page" .*cpuMs=\d+/);
  t.false(alive(w.pid), 'the source process is gone');
  t.true(alive(restoredPid), `the restored process runs; its log ends:\n${w.readLog().slice(-1500)}\nlazy-pages said:\n${daemon.stderr().slice(-3000)}`);
  return { w, restoredPid, frozenAt, daemon, dumper, env, workDir: opts.armed ? join(work, 'dst-work') : dstImages };
}

for (const armed of [false, true]) {
  const how = armed ? ' (lazy-pages and restore started first, waiting for the images)' : '';
  test(`a memhog migrates${how}: it verifies its whole memory on the destination and counts on`, async (t) => {
    const { w, frozenAt } = await migrate(t, 'memhog', ['64', '--interval-ms', '20'], /verify ok pass=3 /, { armed });
    const before = /verify ok pass=(\d+) counter=(\d+)/.exec(w.readLog().slice(0, frozenAt).trim().split('\n').reverse().find((l) => l.startsWith('verify ok'))!)!;
    // Two full passes after the migration: every page was read and checked against its pattern.
    const after = await waitForLogLine(w.logPath, new RegExp(`verify ok pass=${Number(before[1]) + 2} `), 30_000);
    t.truthy(after);
    t.notRegex(w.readLog(), /verify FAILED/);
  });
}

test('a multi-threaded workload migrates with every thread still working', async (t) => {
  const { w, frozenAt } = await migrate(t, 'threads', ['3', '--interval-ms', '20'], /tick counter=3 /);
  const counts = (line: string) => /counts=([\d,]+)/.exec(line)![1]!.split(',').map(Number);
  const last = w.readLog().slice(0, frozenAt).trim().split('\n').reverse().find((l) => l.startsWith('tick'))!;
  const c0 = counts(last);
  const m = await waitForLogLine(w.logPath, /tick counter=\d+ counts=[\d,]+/, 30_000, { since: frozenAt });
  await new Promise((r) => setTimeout(r, 200));
  const lastNow = w.readLog().trim().split('\n').reverse().find((l) => l.startsWith('tick'))!;
  const c1 = counts(lastNow);
  t.truthy(m);
  t.is(c1.length, c0.length);
  for (let i = 0; i < c0.length; i++) t.true(c1[i]! > c0[i]!, `thread ${i} counts on (${c0[i]} -> ${c1[i]})`);
});

test('armed ahead of the dump (--wait-images), a parent and its child migrate together, the child still the parent\'s', async (t) => {
  const { w, frozenAt, restoredPid, env } = await migrate(t, 'forker', ['--interval-ms', '20'], /child counter=3 /, { armed: true });
  const line = await waitForLogLine(w.logPath, /child counter=\d+ pid=(\d+) ppid=(\d+)/, 30_000, { since: frozenAt });
  env.trackPid(Number(line[1]));
  t.is(Number(line[2]), restoredPid, "the child's getppid() is the restored parent");
  await waitForLogLine(w.logPath, /parent counter=\d+/, 30_000, { since: frozenAt });
});

test('a small process whose pages are all in before its guard even starts keeps running', async (t) => {
  const { w, restoredPid, frozenAt, workDir } = await migrate(t, 'sleeper', ['--sleep-ms', '50'], /tick counter=3 /);
  // lazy-pages may be gone before the guard connects: the guard then finds its completion
  // file. Either way, once the guard is gone it has decided.
  await guardsDone(workDir, 15_000);
  t.true(alive(restoredPid), 'not killed by its guard');
  const m = w.logSize();
  await waitForLogLine(w.logPath, /tick counter=\d+ /, 10_000, { since: Math.max(m, frozenAt) });
  t.notRegex(w.readLog(), /FAILED/);
});
