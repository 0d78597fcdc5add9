/**
 * A fast local restore: an eager dump restored with --lazy-pages, its anonymous memory
 * served by lazy-pages from the local images (no --page-server), so the process runs
 * before its pages are all written.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startWorkload, waitForLogLine, type Workload } from '../../../tools/workloads/index.js';
import { lazymig, LAZYMIG } from './helpers.js';
import { alive } from './migrate-helpers.js';

/**
 * Dumps workload `w` eagerly, then restores it with --lazy-pages beside a lazy-pages serving
 * the local images; waits for the daemon to finish. Returns the restored pid, how many pages
 * restore left lazy, the daemon's JSON summary, and where `w`'s log stood before the restore.
 */
async function migrateLocally(t: ExecutionContext, dir: string, w: Workload): Promise<{ pid: number; lazyPages: number; restoreErr: string; mark: number }> {
  const images = join(dir, 'img');
  const d = await lazymig(['dump', '--tree', String(w.pid), '--images-dir', images]);
  t.is(d.code, 0, d.stderr);
  const mark = w.logSize();

  const daemon = spawn(process.execPath, [LAZYMIG, 'lazy-pages', '--images-dir', images, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  daemon.stdout.on('data', (b: Buffer) => (out += b.toString()));
  daemon.stderr.on('data', (b: Buffer) => (err += b.toString()));
  const daemonExit = new Promise<number | null>((r) => daemon.on('close', (c) => r(c)));
  t.teardown(() => daemon.kill('SIGKILL'));

  const pidfile = join(dir, 'pid');
  const r = await lazymig(['restore', '--images-dir', images, '--lazy-pages', '--restore-detached', '--pidfile', pidfile]);
  t.is(r.code, 0, r.stderr);
  const pid = Number((await readFile(pidfile, 'utf8')).trim());
  t.teardown(() => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  });
  const lazyPages = Number(/, (\d+) lazy/.exec(r.stderr)?.[1]);
  t.is(await daemonExit, 0, err);
  const summary = JSON.parse(out.trim().split('\n').pop()!) as { pagesTotal: number; remaining: number };
  t.is(summary.pagesTotal, lazyPages, 'the daemon served what restore left lazy');
  t.is(summary.remaining, 0);
  return { pid, lazyPages, restoreErr: r.stderr, mark };
}

/** Two whole verification passes of `w` after `mark`, none failed. */
async function verifiesTwice(t: ExecutionContext, w: Workload, line: RegExp, mark: number): Promise<void> {
  await waitForLogLine(w.logPath, line, 30_000, { since: mark });
  await waitForLogLine(w.logPath, line, 30_000, { since: w.logSize() });
  t.notRegex(w.readLog(), /verify FAILED/);
}

test('lazy-pages without --page-server serves an eager dump from the local images', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-local-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const w = await startWorkload('memhog', ['64', '--interval-ms', '20'], { logDir: dir });
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=2 /, 30_000);
  const m = await migrateLocally(t, dir, w);
  t.regex(m.restoreErr, /restored 1 process, 1 thread .*: \d+ pages written .*, (\d+) lazy/);
  t.true(m.lazyPages >= (64 << 20) / 4096, `the region's pages were left to the daemon (${m.lazyPages} lazy)`);
  await verifiesTwice(t, w, /verify ok pass=\d+ /, m.mark);
  t.true(alive(m.pid));
});

test('a process with 2,000 small mappings restores lazily: each is registered, every page arrives', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-local-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Thousands of lazy VMAs: more registrations than one trip of injected syscalls takes.
  const w = await startWorkload('mappings', ['2000', '--pages', '4', '--interval-ms', '20'], { logDir: dir });
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=2 /, 30_000);
  const m = await migrateLocally(t, dir, w);
  t.true(m.lazyPages >= 2000 * 4, `every mapping's pages were left to the daemon (${m.lazyPages} lazy)`);
  // The restored process checks all 8,000 pages itself.
  await verifiesTwice(t, w, /verify ok pass=\d+ pages=8000$/, m.mark);
  t.true(alive(m.pid));
});
