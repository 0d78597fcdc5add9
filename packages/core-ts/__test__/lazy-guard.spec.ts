// The lazy restore's guard (guard/guard.c) against a real control socket: it lets the
// restored processes be when the daemon says every page is in (or said so in its
// completion file before the guard came), and kills them when the daemon goes away first.
import { spawn, type ChildProcess } from 'node:child_process';
import test, { type ExecutionContext } from 'ava';
import { closeFd, pidfdOpen } from '@lazymig/uffd-rs';
import { guardBinary, serveControl, writeCompletion } from '../src/index.js';
import { tempDir } from './restore-helpers.js';

/** A process standing in for a restored one, killed on teardown if the guard did not. */
function victim(t: ExecutionContext): ChildProcess & { pid: number } {
  const v = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => {
    if (v.exitCode === null && v.signalCode === null) v.kill('SIGKILL');
  });
  if (v.pid === undefined) throw new Error('sleep did not start');
  return v as ChildProcess & { pid: number };
}

function ended(c: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve({ code: c.exitCode, signal: c.signalCode });
  return new Promise((res) => c.once('exit', (code, signal) => res({ code, signal })));
}

/**
 * Runs the guard to its end, as restore starts it: the pids (comma-separated) as an argument,
 * a pidfd of each of `victims` as fds 3 and up. `connectMs` bounds its wait for a daemon
 * that is not there; a guard still running after `giveUpMs` is killed (code null).
 */
async function guard(
  workDir: string,
  pids: string,
  victims: ReadonlyArray<{ pid: number }>,
  connectMs = 200,
  giveUpMs = 30_000,
): Promise<{ code: number | null; stderr: string }> {
  const pidfds = victims.map((v) => pidfdOpen(v.pid));
  let g: ChildProcess;
  try {
    g = spawn(guardBinary(), [workDir, pids, String(connectMs)], { stdio: ['ignore', 'ignore', 'pipe', ...pidfds] });
  } finally {
    for (const fd of pidfds) closeFd(fd);
  }
  let stderr = '';
  g.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const watchdog = setTimeout(() => {
    stderr += `(the guard still ran after ${giveUpMs} ms: killed by the test)\n`;
    g.kill('SIGKILL');
  }, giveUpMs);
  // 'close', not 'exit': stderr is read to its end.
  const code = await new Promise<number | null>((res) => g.once('close', (c) => res(c)));
  clearTimeout(watchdog);
  return { code, stderr };
}

test('the daemon says every page is in: the guard exits 0 and the processes run on', async (t) => {
  const dir = tempDir(t, 'guard');
  const v = victim(t);
  const server = serveControl(dir, {
    onProcess: () => undefined,
    onAllSent: () => undefined,
    onGuard: (notify) => setTimeout(notify, 50),
    onAbandoned: () => undefined,
  });
  t.teardown(() => server.close());
  const r = await guard(dir, `${v.pid}`, [v]);
  t.is(r.code, 0, r.stderr);
  t.is(v.exitCode, null);
  t.is(v.signalCode, null, 'not killed');
});

test('the daemon goes away before every page is in: the guard kills each process and says so', async (t) => {
  const dir = tempDir(t, 'guard');
  const a = victim(t);
  const b = victim(t);
  let server: ReturnType<typeof serveControl> | undefined;
  server = serveControl(dir, {
    onProcess: () => undefined,
    onAllSent: () => undefined,
    // The guard is connected and waiting: the daemon dies.
    onGuard: () => void server?.close(),
    onAbandoned: () => undefined,
  });
  t.teardown(() => server?.close());
  const r = await guard(dir, `${a.pid},${b.pid}`, [a, b]);
  t.is(r.code, 1);
  t.is((await ended(a)).signal, 'SIGKILL');
  t.is((await ended(b)).signal, 'SIGKILL');
  t.regex(r.stderr, new RegExp(`went away before every page was in: killed pid ${a.pid}\\n`));
  t.regex(r.stderr, new RegExp(`killed pid ${b.pid}\\n`));
});

test('a guard that comes after the daemon finished reads the completion file and leaves its processes be, at once', async (t) => {
  const dir = tempDir(t, 'guard');
  const v = victim(t);
  writeCompletion(dir, [1, v.pid]);
  // A connect timeout far beyond the test's: the guard must not wait for a daemon that has
  // finished (it would hold the uffd copies open meanwhile).
  const r = await guard(dir, `${v.pid}`, [v], 600_000, 10_000);
  t.is(r.code, 0, r.stderr);
  t.is(v.signalCode, null, 'not killed');
});

test('no daemon and no completion of these pids: the guard kills them after its connect timeout', async (t) => {
  const dir = tempDir(t, 'guard');
  const v = victim(t);
  // Another restore's completion: not ours.
  writeCompletion(dir, [v.pid + 1]);
  const r = await guard(dir, `${v.pid}`, [v]);
  t.is(r.code, 1);
  t.is((await ended(v)).signal, 'SIGKILL');
});

test('the guard kills through the pidfds it was handed, not by pid number (a pid may have been reused)', async (t) => {
  const dir = tempDir(t, 'guard');
  const handed = victim(t);
  const named = victim(t);
  // The pid named on the command line is another process than the pidfd's.
  const r = await guard(dir, `${named.pid}`, [handed]);
  t.is(r.code, 1);
  t.is((await ended(handed)).signal, 'SIGKILL');
  t.is(named.signalCode, null, 'the process that merely has the pid is left alone');
});

test('a pid without its pidfd: exit 2 naming it, nothing killed', async (t) => {
  const dir = tempDir(t, 'guard');
  const v = victim(t);
  const r = await guard(dir, `${v.pid},${v.pid + 1}`, [v]);
  t.is(r.code, 2);
  t.regex(r.stderr, new RegExp(`no pidfd for pid ${v.pid + 1} at fd 4`));
  t.is(v.signalCode, null);
});

test('bad arguments: exit 2 with the usage, nothing killed', async (t) => {
  const dir = tempDir(t, 'guard');
  const v = victim(t);
  for (const pids of ['', `${v.pid},x`, '-1']) {
    const r = await guard(dir, pids, [v]);
    t.is(r.code, 2, `pids ${JSON.stringify(pids)}`);
    t.regex(r.stderr, /^usage: lazymig-guard /);
  }
  t.is(v.signalCode, null);
});
