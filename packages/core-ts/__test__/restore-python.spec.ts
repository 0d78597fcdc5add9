// A program nobody here wrote: CPython (Debian's, dynamically linked) keeping a large dict
// and printing a counter to a file. Dump, restore, and it goes on with the same dict.
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { waitForLogLine } from '../../../tools/workloads/index.js';
import { dump, restore } from '../src/index.js';
import { startProgram, tempDir, trackRestored } from './restore-helpers.js';

const PYTHON = '/usr/bin/python3';
const SCRIPT = `
import os, sys, time
N = 200000
d = {i: str(i) * 3 for i in range(N)}
out = open(sys.argv[1], 'a', buffering=1)
print(f'ready pid={os.getpid()} n={len(d)}', file=out)
n = 0
while True:
    n += 1
    k = (n * 7919) % N
    if d[k] != str(k) * 3:
        print(f'dict FAILED key={k}', file=out)
        sys.exit(1)
    d[N + n] = n
    print(f'count {n} len={len(d)}', file=out)
    time.sleep(0.02)
`;

/** Reaped, or a zombie: its stat may vanish between any two looks at it. */
function goneOrZombie(pid: number): boolean {
  try {
    return /\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

test.serial('python3 with a large dict goes on counting after a restore', async (t) => {
  if (!fs.existsSync(PYTHON)) return t.pass(`${PYTHON} is not installed`);
  const dir = tempDir(t, 'python');
  const script = path.join(dir, 'loop.py');
  fs.writeFileSync(script, SCRIPT);
  const out = path.join(dir, 'out.txt');
  const prog = await startProgram(t, [PYTHON, '-S', '-u', script, out], out, /^ready pid=(\d+) /);
  await waitForLogLine(out, /^count 20 /, 15_000);
  const images = path.join(dir, 'images');
  const d = await dump({ pid: prog.pid, imagesDir: images, mode: 'kill' });
  t.log(`dump: ${d.pages.present} pages (${(d.pages.present * 4096) >> 20} MiB)`);
  // the original is gone (its supervisor reaps it)
  for (let i = 0; i < 200 && !goneOrZombie(prog.pid); i++) await new Promise((r) => setTimeout(r, 10));
  const lines = fs.readFileSync(out, 'utf8').trim().split('\n');
  const last = Number(/^count (\d+) /.exec(lines[lines.length - 1]!)![1]);
  const since = fs.statSync(out).size;
  const r = await restore({ imagesDir: images });
  trackRestored(t, r);
  const m = await waitForLogLine(out, /^(?:count (\d+) len=(\d+)|dict FAILED.*)$/, 15_000, { since });
  t.is(Number(m[1]), last + 1, m[0]);
  t.is(Number(m[2]), 200000 + last + 1);
  await waitForLogLine(out, new RegExp(`^count ${last + 20} `), 15_000, { since });
  t.notRegex(fs.readFileSync(out, 'utf8'), /FAILED/);
  t.regex(fs.readlinkSync(`/proc/${r.rootPid}/exe`), /python3/);
});
