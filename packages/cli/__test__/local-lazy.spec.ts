/**
 * A fast local restore: an eager dump restored with --lazy-pages, its anonymous memory
 * served by lazy-pages from the local images (no --page-server), so the process runs
 * before its pages are all written.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startWorkload, waitForLogLine } from '../../../tools/workloads/index.js';
import { lazymig, LAZYMIG } from './helpers.js';
import { alive } from './migrate-helpers.js';

test('lazy-pages without --page-server serves an eager dump from the local images', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-local-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const w = await startWorkload('memhog', ['64', '--interval-ms', '20'], { logDir: dir });
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=2 /, 30_000);
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
  t.regex(r.stderr, /restored 1 process, 1 thread .*: \d+ pages written .*, (\d+) lazy/);
  const lazyPages = Number(/, (\d+) lazy/.exec(r.stderr)![1]);
  t.true(lazyPages >= (64 << 20) / 4096, `the region's pages were left to the daemon (${lazyPages} lazy)`);

  t.is(await daemonExit, 0, err);
  const summary = JSON.parse(out.trim().split('\n').pop()!) as { pagesTotal: number; remaining: number };
  t.is(summary.pagesTotal, lazyPages);
  t.is(summary.remaining, 0);
  await waitForLogLine(w.logPath, /verify ok pass=\d+ /, 30_000, { since: mark });
  const again = w.logSize();
  await waitForLogLine(w.logPath, /verify ok pass=\d+ /, 30_000, { since: again });
  t.notRegex(w.readLog(), /verify FAILED/);
  t.true(alive(pid));
});

test('a process with 2,000 small mappings restores lazily: each is registered, every page arrives', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-local-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Thousands of lazy VMAs: more registrations than one trip of injected syscalls takes.
  const w = await startWorkload('mappings', ['2000', '--pages', '4', '--interval-ms', '20'], { logDir: dir });
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=2 /, 30_000);
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
  t.true(lazyPages >= 2000 * 4, `every mapping's pages were left to the daemon (${lazyPages} lazy)`);
  t.is(await daemonExit, 0, err);
  const summary = JSON.parse(out.trim().split('\n').pop()!) as { pagesTotal: number; remaining: number };
  t.is(summary.pagesTotal, lazyPages);
  t.is(summary.remaining, 0);
  // The restored process checks all 8,000 pages itself, twice.
  await waitForLogLine(w.logPath, /verify ok pass=\d+ pages=8000$/, 30_000, { since: mark });
  const again = w.logSize();
  await waitForLogLine(w.logPath, /verify ok pass=\d+ pages=8000$/, 30_000, { since: again });
  t.notRegex(w.readLog(), /verify FAILED/);
  t.true(alive(pid));
});
