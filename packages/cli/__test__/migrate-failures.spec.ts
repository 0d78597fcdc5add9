/**
 * Lazy migrations that go wrong, or that the process makes hard: memory dropped while it
 * is still lazy, the daemon dying mid-transfer, the source becoming unreachable.
 * Background transfer is rate-limited (lazy-pages --max-rate) so that "mid-transfer" is a
 * wide window, not a race.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startWorkload, waitForLogLine } from '../../../tools/workloads/index.js';
import { alive, copyImages, lazymigIn, readPidfile, setUp } from './migrate-helpers.js';

async function waitUntil(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = performance.now() + timeoutMs;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A memhog dumped lazily and served by its page server. `idle`: it sleeps 4 s between
 * passes, so right after the restore it touches nothing and only the (rate-limited)
 * background moves pages: "mid-transfer" lasts seconds.
 */
async function frozenMemhog(t: Parameters<typeof setUp>[0], mib: number, opts: { idle?: boolean; extra?: string[] } = {}) {
  const env = await setUp(t);
  const { hosts, work, port } = env;
  const w = await startWorkload('memhog', [String(mib), '--interval-ms', opts.idle ? '4000' : '20', ...(opts.extra ?? [])], { logDir: work });
  t.teardown(() => w.kill());
  await w.waitForLine(opts.idle ? /verify ok pass=1 / : /verify ok pass=2 /, 60_000);
  const srcImages = join(work, 'src');
  const dumper = env.track(
    lazymigIn(hosts, hosts.src, ['dump', '--tree', String(w.pid), '--images-dir', srcImages, '--lazy-pages', '--address', hosts.src.address, '--port', String(port)]),
  );
  await dumper.waitForStderr(/page server listening/, 60_000);
  let attempt = 0;
  /** Copies the images, starts lazy-pages and restores: one attempt on the destination. */
  const attemptRestore = async (daemonArgs: string[] = [], beforeRestore?: () => Promise<void>) => {
    const dst = join(work, `dst${++attempt}`);
    await copyImages(srcImages, dst);
    const daemon = env.track(lazymigIn(hosts, hosts.dst, ['lazy-pages', '--page-server', '--images-dir', dst, ...daemonArgs]));
    await daemon.waitForStderr(/waiting for restore/, 30_000);
    await beforeRestore?.();
    const pidfile = join(work, `restored${attempt}.pid`);
    const restorer = env.track(lazymigIn(hosts, hosts.dst, ['restore', '--images-dir', dst, '--lazy-pages', '--restore-detached', '--pidfile', pidfile]));
    t.is(await restorer.exited, 0, restorer.stderr());
    const pid = await readPidfile(pidfile);
    env.trackPid(pid);
    return { daemon, pid };
  };
  return { env, w, dumper, attemptRestore };
}

test('memory dropped while still lazy (MADV_DONTNEED, munmap) never gets stale data installed', async (t) => {
  // memhog drops its memory at the first pass that finds this file: made just before restore.
  const trigger = join(tmpdir(), `lazymig-drop-${process.pid}-${randomBytes(4).toString('hex')}`);
  t.teardown(() => rm(trigger, { force: true }));
  const { w, dumper, attemptRestore } = await frozenMemhog(t, 128, { extra: ['--drop-trigger', trigger, '--drop-mib', '16'] });
  const mark = w.logSize();
  const { daemon } = await attemptRestore(['--max-rate', '64'], () => writeFile(trigger, 'go'));
  const dropped = await waitForLogLine(w.logPath, /dropped dontneed=\S+ size=(\d+) unmapped=\S+ size=(\d+) pass=(\d+)/, 30_000, { since: mark });
  t.is(Number(dropped[1]), 16 << 20);
  const pass = Number(dropped[3]);
  await waitForLogLine(w.logPath, new RegExp(`verify ok pass=${pass + 1} `), 30_000, { since: mark });
  t.is(await daemon.exited, 0, daemon.stderr());
  t.is(await dumper.exited, 0, dumper.stderr());
  await waitForLogLine(w.logPath, new RegExp(`verify ok pass=${pass + 3} `), 30_000, { since: mark });
  t.notRegex(w.readLog(), /verify FAILED/);
});

test('a fork and an mremap while pages are still lazy: the child gets its memory, the moved region keeps its own', async (t) => {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  const remap = join(tmpdir(), `lazymig-remap-${tag}`);
  const fork = join(tmpdir(), `lazymig-fork-${tag}`);
  t.teardown(() => Promise.all([rm(remap, { force: true }), rm(fork, { force: true })]));
  const { w, dumper, attemptRestore } = await frozenMemhog(t, 128, { extra: ['--remap-trigger', remap, '--fork-trigger', fork] });
  const mark = w.logSize();
  const { daemon } = await attemptRestore(['--max-rate', '32'], async () => {
    await writeFile(remap, 'go');
    await writeFile(fork, 'go');
  });
  const moved = await waitForLogLine(w.logPath, /remapped from=\S+ to=\S+ size=\d+ pass=(\d+)/, 30_000, { since: mark });
  const child = await waitForLogLine(w.logPath, /child verify (ok|FAILED)[^\n]*/, 60_000, { since: mark });
  t.is(child[1], 'ok', child[0]);
  await waitForLogLine(w.logPath, /child exited status=0/, 30_000, { since: mark });
  await waitForLogLine(w.logPath, new RegExp(`verify ok pass=${Number(moved[1]) + 2} `), 30_000, { since: mark });
  t.is(await daemon.exited, 0, daemon.stderr());
  t.is(await dumper.exited, 0, dumper.stderr());
  t.notRegex(w.readLog(), /FAILED/);
});

test('lazy-pages killed mid-transfer: the restored process dies, the source stays frozen, a second attempt completes', async (t) => {
  const { w, dumper, attemptRestore } = await frozenMemhog(t, 128, { idle: true });
  const frozenLog = w.logSize();
  const first = await attemptRestore(['--max-rate', '32']);
  first.daemon.child.kill('SIGKILL');
  t.is(await first.daemon.exited, 137);
  // The guard kills the process that can no longer get its memory.
  await waitUntil(`restored pid ${first.pid} to be killed`, () => !alive(first.pid), 10_000);
  t.true(alive(w.pid), 'the source tree is still there');
  t.is(dumper.child.exitCode, null, 'the page server still serves');
  t.notRegex(w.readLog().slice(frozenLog), /verify FAILED/, 'the killed copy never ran on zeros');

  const second = await attemptRestore();
  t.is(await second.daemon.exited, 0, second.daemon.stderr());
  t.is(await dumper.exited, 0, dumper.stderr());
  t.false(alive(w.pid), 'the source is gone once the destination holds every page');
  const after = w.logSize();
  await waitForLogLine(w.logPath, /verify ok pass=\d+ /, 30_000, { since: after });
  t.notRegex(w.readLog(), /verify FAILED/);
});

test('the source unreachable: lazy-pages gives up in bounded time, kills the restored process, names the cause', async (t) => {
  const { env, w, dumper, attemptRestore } = await frozenMemhog(t, 128, { idle: true });
  const first = await attemptRestore(['--max-rate', '32', '--source-timeout', '2']);
  await env.hosts.partition(true);
  t.is(await first.daemon.exited, 1, first.daemon.stderr());
  t.regex(first.daemon.stderr(), /page server unreachable|silent/);
  await waitUntil(`restored pid ${first.pid} to be killed`, () => !alive(first.pid), 10_000);
  t.true(alive(w.pid), 'the source is still frozen');
  // The network comes back: the same source serves a new attempt to the end.
  await env.hosts.partition(false);
  const second = await attemptRestore();
  t.is(await second.daemon.exited, 0, second.daemon.stderr());
  t.is(await dumper.exited, 0, dumper.stderr());
});
