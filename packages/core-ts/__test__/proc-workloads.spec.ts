import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { startWorkload } from '../../../tools/workloads/index.js';
import type { Workload } from '../../../tools/workloads/index.js';

function counterAbove(w: Workload, re: RegExp, n: number, timeoutMs = 5000): Promise<number> {
  // Wait for a line whose counter exceeds n: proves the workload keeps going.
  return (async () => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = w.lastMatch(re);
      const c = m ? Number(m[1]) : -1;
      if (c > n) return c;
      if (Date.now() > deadline) throw new Error(`${w.name}: counter stuck at ${c}, wanted > ${n}\n${w.readLog().slice(-500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
}

test('memhog fills, verifies and keeps counting', async (t) => {
  const w = await startWorkload('memhog', ['16', '--interval-ms', '20']);
  t.teardown(() => w.kill());
  t.regex(w.readLog(), /^checksum value=0x[0-9a-f]{16} pages=4096$/m);
  t.regex(w.ready[0], /region=0x[0-9a-f]+ size=16777216 pages=4096/);
  await counterAbove(w, /^verify ok pass=\d+ counter=(\d+)/, 3);
  t.notRegex(w.readLog(), /FAILED/);
  // Only stdio may be open: inherited fds would end up in a dump.
  t.deepEqual(fs.readdirSync(`/proc/${w.pid}/fd`).map(Number).sort(), [0, 1, 2]);
});

test('memhog verifies 64 MiB quickly', async (t) => {
  const w = await startWorkload('memhog', ['64']);
  t.teardown(() => w.kill());
  const m = await w.waitForLine(/^verify ok pass=2 .* ms=([\d.]+)$/, 10_000);
  t.log(`64 MiB verify pass: ${m[1]} ms`);
  t.true(Number(m[1]) < 500);
});

test('appender appends numbered lines', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymig-test-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'out.txt');
  const w = await startWorkload('appender', [file, '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await counterAbove(w, /^appended counter=(\d+)/, 5);
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  lines.forEach((l, i) => t.is(l, `line ${i + 1}`));
});

test('threads: every thread counts', async (t) => {
  const w = await startWorkload('threads', ['3', '--interval-ms', '30']);
  t.teardown(() => w.kill());
  t.regex(w.ready[0], /threads=3 tids=\d+,\d+,\d+$/);
  const m = await w.waitForLine(/^tick counter=\d+ counts=([1-9]\d*),([1-9]\d*),([1-9]\d*)$/, 5000);
  t.truthy(m);
});

test('forker: parent and child both count, child knows its parent', async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '20']);
  t.teardown(() => w.kill());
  const child = Number(/child=(\d+)/.exec(w.ready[0])?.[1]);
  t.true(child > 0);
  t.truthy(await w.waitForLine(new RegExp(`^child counter=3 pid=${child} ppid=${w.pid}$`), 5000));
  t.truthy(await w.waitForLine(/^parent counter=3 /, 5000));
});

test('sleeper: long sleeps, ticks, and dies by SIGKILL when killed', async (t) => {
  const w = await startWorkload('sleeper', ['--sleep-ms', '100']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=2 slept_ms=(\d+)/, 5000);
  const state = fs.readFileSync(`/proc/${w.pid}/stat`, 'utf8').split(') ')[1]?.[0];
  t.is(state, 'S');
  w.kill();
  t.deepEqual(await w.exited, { code: null, signal: 'SIGKILL' });
});

test('sleeper: raw nanosleep mode', async (t) => {
  const w = await startWorkload('sleeper', ['--sleep-ms', '50', '--mode', 'nanosleep']);
  t.teardown(() => w.kill());
  await w.waitForLine(/^tick counter=2 /, 5000);
  t.pass();
});

test('a workload that exits reports its code, and waits fail fast', async (t) => {
  const w = await startWorkload('memhog', ['1', '--passes', '2', '--interval-ms', '1']);
  t.teardown(() => w.kill());
  t.deepEqual(await w.exited, { code: 0, signal: null });
  await t.throwsAsync(w.waitForLine(/never/, 5000), { message: /before it exited/ });
});

test('a bad command line fails startup with the log in the error', async (t) => {
  await t.throwsAsync(startWorkload('appender', [], { readyTimeoutMs: 5000 }), { message: /usage: appender/ });
});
