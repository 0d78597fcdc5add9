import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sampleImageSet, writeImages } from '@lazymig/core-ts';
import { descendants } from '../../../tools/workloads/index.js';
import { LAZYMIG, lazymig } from './helpers.js';
import { alive } from './migrate-helpers.js';

test('--help lists every command, and each command has its own help', async (t) => {
  const top = await lazymig(['--help']);
  t.is(top.code, 0);
  for (const name of ['check', 'dump', 'restore', 'lazy-pages', 'page-server', 'show']) t.regex(top.stdout, new RegExp(`^  ${name} `, 'm'));
  const dump = await lazymig(['dump', '--help']);
  t.is(dump.code, 0);
  t.regex(dump.stdout, /--tree <value>/);
  t.regex(dump.stdout, /--lazy-pages/);
});

test('bad invocations exit 2 with a one-line reason', async (t) => {
  const unknown = await lazymig(['frobnicate']);
  t.is(unknown.code, 2);
  t.regex(unknown.stderr, /unknown command 'frobnicate'/);
  const noTree = await lazymig(['dump', '--images-dir', '/tmp/x']);
  t.is(noTree.code, 2);
  t.regex(noTree.stderr.split('\n')[0]!, /^lazymig dump: --tree <pid> is required$/);
  const badPid = await lazymig(['dump', '--tree', '12abc', '--images-dir', '/tmp/x']);
  t.is(badPid.code, 2);
  t.regex(badPid.stderr, /not a pid: 12abc/);
  const badFlag = await lazymig(['show', '--bogus', 'x']);
  t.is(badFlag.code, 2);
  t.regex(badFlag.stderr, /Unknown option '--bogus'/);
  const badWait = await lazymig(['restore', '--images-dir', '/tmp/x', '--wait-images', 'soon']);
  t.is(badWait.code, 2);
  t.regex(badWait.stderr.split('\n')[0]!, /^lazymig restore: --wait-images must be a number of seconds, got soon$/);
  const congestionAlone = await lazymig(['dump', '--tree', '1', '--images-dir', '/tmp/x', '--tcp-congestion', 'reno']);
  t.is(congestionAlone.code, 2);
  t.regex(congestionAlone.stderr.split('\n')[0]!, /^lazymig dump: --address, --port and --tcp-congestion go with --lazy-pages$/);
  const badCongestion = await lazymig(['page-server', '--images-dir', '/tmp/x', '--address', '127.0.0.1', '--port', '1', '--tcp-congestion', 'Reno!']);
  t.is(badCongestion.code, 2);
  t.regex(badCongestion.stderr.split('\n')[0]!, /^lazymig page-server: --tcp-congestion: not an algorithm name: Reno!$/);
});

test('restore --wait-images on images that never arrive gives up after that long, naming the dir', async (t) => {
  const r = await lazymig(['restore', '--images-dir', '/tmp/lazymig-never-there', '--wait-images', '0.3']);
  t.is(r.code, 1);
  t.regex(r.stderr, /waiting up to 0\.3 s for the images in \/tmp\/lazymig-never-there/);
  t.regex(r.stderr, /lazymig restore: \/tmp\/lazymig-never-there: missing/);
});

test('restore --lazy-pages without its images says so, in one line, before looking for the daemon', async (t) => {
  const r = await lazymig(['restore', '--images-dir', '/tmp/lazymig-never-there', '--lazy-pages']);
  t.is(r.code, 1);
  t.is(r.stderr.trim(), "lazymig restore: /tmp/lazymig-never-there: missing (ENOENT: no such file or directory, scandir '/tmp/lazymig-never-there')");
});

test('restore --wait-images killed with SIGKILL while it waits leaves no process behind', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const child = spawn(process.execPath, [LAZYMIG, 'restore', '--images-dir', join(dir, 'images'), '--wait-images', '60'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let seen: number[] = [];
  t.teardown(() => {
    child.kill('SIGKILL');
    for (const p of seen) if (alive(p)) process.kill(p, 'SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (/waiting up to 60 s/.test(err)) resolve();
    });
    child.on('exit', (code) => reject(new Error(`restore exited ${code} before waiting:\n${err}`)));
  });
  // The early stub (its reaper and the future root) is up while restore waits.
  for (let i = 0; i < 250 && seen.length < 2; i++) {
    await new Promise((r) => setTimeout(r, 20));
    seen = descendants(child.pid!);
  }
  t.true(seen.length >= 2, `restore's processes while it waits: ${seen.join(', ')}`);
  child.kill('SIGKILL');
  for (let i = 0; i < 250 && seen.some(alive); i++) await new Promise((r) => setTimeout(r, 20));
  t.deepEqual(seen.filter(alive), [], 'nothing restore started outlives it');
});

test('dump of a pid that does not exist fails with one line naming it, and leaves no images', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Pids above pid_max never exist.
  const r = await lazymig(['dump', '--tree', '4194304', '--images-dir', join(dir, 'img')]);
  t.is(r.code, 1);
  t.is(r.stderr.trim().split('\n').length, 1, r.stderr);
  t.regex(r.stderr, /4194304/);
  const again = await lazymig(['show', join(dir, 'img')]);
  t.is(again.code, 1, 'no images dir was left behind');
});

test('check reports the kernel features lazymig needs and says yes on this host', async (t) => {
  const r = await lazymig(['check']);
  t.is(r.code, 0, r.stdout + r.stderr);
  for (const item of ['userfaultfd', 'userfaultfd events', 'pidfd_getfd', 'process_vm_readv', 'CAP_SYS_PTRACE']) {
    t.regex(r.stdout, new RegExp(`^ok\\s+${item}\\s`, 'm'));
  }
  const j = await lazymig(['check', '--json']);
  const report = JSON.parse(j.stdout) as { ok: boolean; probe: { userfaultfd: { features: string[] } } };
  t.true(report.ok);
  t.true(report.probe.userfaultfd.features.includes('eventFork'));
});

test('show prints images as JSON and as a summary table', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-cli-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const sample = sampleImageSet();
  await writeImages(join(dir, 'img'), sample.images, { pages: sample.pages });
  const json = await lazymig(['show', join(dir, 'img')]);
  t.is(json.code, 0, json.stderr);
  const parsed = JSON.parse(json.stdout) as { inventory: { rootPid: number } };
  t.is(parsed.inventory.rootPid, sample.images.inventory.rootPid);
  const summary = await lazymig(['show', '--summary', join(dir, 'img')]);
  t.is(summary.code, 0);
  t.regex(summary.stdout, new RegExp(String(sample.images.inventory.rootPid)));
  const bad = await lazymig(['show', join(dir, 'nothing-here')]);
  t.is(bad.code, 1);
  t.regex(bad.stderr, /nothing-here/);
});
