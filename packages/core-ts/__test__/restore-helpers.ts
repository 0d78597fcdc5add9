// Helpers for the restore specs (not a spec itself): images dirs, restored processes that
// are killed on teardown (by pid, only while they are still the processes we restored),
// programs started under the workloads' supervisor, and "what is still running" checks.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import { buildWorkload, descendants, waitForLogLine } from '../../../tools/workloads/index.js';

export { descendants };
import type { RestoreResult, StubExit } from '../src/index.js';

export function tempDir(t: ExecutionContext, prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `lazymig-${prefix}-`));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

export function startTime(pid: number): string | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    return f[0] === 'Z' ? undefined : f[19];
  } catch {
    return undefined;
  }
}

export function ppidOf(pid: number): number | undefined {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms))),
  ]);
}

/** Kills the restored processes on teardown; returns a bounded wait for the root's end. */
export function trackRestored(t: ExecutionContext, r: RestoreResult): { kill(): void; exited(ms?: number): Promise<StubExit> } {
  const known = [...r.pids.values()].map((pid) => ({ pid, start: startTime(pid) }));
  const kill = (): void => {
    for (const { pid, start } of known) {
      if (start !== undefined && startTime(pid) === start) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  };
  t.teardown(async () => {
    kill();
    await withTimeout(r.exited, 5000, 'restored root exit').catch(() => undefined);
  });
  return { kill, exited: (ms = 5000) => withTimeout(r.exited, ms, `pid ${r.rootPid} exit`) };
}

/** Waits (bounded) until this process has no descendants but `allowed`; returns the extra ones left. */
export async function strayDescendants(allowed: readonly number[], timeoutMs = 3000): Promise<number[]> {
  const ok = new Set(allowed);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const extra = descendants(process.pid).filter((p) => !ok.has(p) && startTime(p) !== undefined);
    if (extra.length === 0 || Date.now() > deadline) return extra;
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Program {
  pid: number;
  logPath: string;
  kill(): void;
}

/**
 * Starts argv[0] under the workloads' supervisor (own session, stdin /dev/null, stdout and
 * stderr into the log, fds above 2 closed); resolves when the log has a line matching `ready`
 * whose first group is the pid.
 */
export async function startProgram(t: ExecutionContext, argv: string[], logPath: string, ready: RegExp): Promise<Program> {
  const sup = await buildWorkload('supervise' as never);
  const log = fs.openSync(logPath, 'a');
  const child = spawn(sup, [`${logPath}.exit`, ...argv], { stdio: ['ignore', log, log] });
  fs.closeSync(log);
  child.unref();
  const supPid = child.pid!;
  let pid = 0;
  let start: string | undefined;
  const kill = (): void => {
    const victims = pid ? [pid] : descendants(supPid);
    for (const v of victims) {
      if (pid && startTime(v) !== start) continue;
      try {
        process.kill(v, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
  };
  t.teardown(kill);
  const m = await waitForLogLine(logPath, ready, 15_000);
  pid = Number(m[1]);
  start = startTime(pid);
  return { pid, logPath, kill };
}
