import test from 'ava';
import { startWorkload } from '../../../tools/workloads/index.js';
import { listTids, readComm, readStat, readTree } from '../src/proc/index.js';

test('readTree: forker parent and child with the right ppid', async (t) => {
  const w = await startWorkload('forker', ['--interval-ms', '20']);
  t.teardown(() => w.kill());
  const child = Number(/child=(\d+)/.exec(w.ready[0])?.[1]);
  await w.waitForLine(new RegExp(`^child counter=1 pid=${child} ppid=${w.pid}$`), 5000);
  const tree = readTree(w.pid);
  t.is(tree.root, w.pid);
  t.deepEqual(
    tree.processes.map((p) => [p.pid, p.children, p.tids]),
    [
      [w.pid, [child], [w.pid]],
      [child, [], [child]],
    ],
  );
  t.is(tree.processes[1]?.ppid, w.pid);
  // The child stays in its parent's session and group.
  t.is(tree.processes[1]?.sid, w.pid);
  t.is(tree.processes[1]?.pgid, w.pid);
  t.is(tree.processes[0]?.comm, 'forker');
});

test('threads workload has n+1 tids, matching what it printed', async (t) => {
  const w = await startWorkload('threads', ['4']);
  t.teardown(() => w.kill());
  const printed = (/tids=([\d,]+)/.exec(w.ready[0])?.[1] ?? '').split(',').map(Number);
  t.is(printed.length, 4);
  const tids = listTids(w.pid);
  t.is(tids.length, 5);
  t.is(tids[0], w.pid);
  t.deepEqual(tids.slice(1), [...printed].sort((a, b) => a - b));
  t.is(readStat(w.pid).numThreads, 5);
  for (const tid of tids) t.is(readStat(w.pid, tid).pid, tid);
  t.is(readComm(w.pid, printed[0]), 'threads');
  const tree = readTree(w.pid);
  t.is(tree.processes.length, 1);
  t.deepEqual(tree.processes[0]?.tids, tids);
});

test('readTree of a dead pid is ESRCH', async (t) => {
  const w = await startWorkload('sleeper');
  t.teardown(() => w.kill());
  w.kill();
  await w.exited;
  t.throws(() => readTree(w.pid), { message: `pid ${w.pid}: no such process` });
});
