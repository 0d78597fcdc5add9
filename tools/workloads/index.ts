// Test workloads: small C programs built with the machine's gcc at test time, started
// under a tiny supervisor so tests (which may ptrace them from this very process) never
// share a parent with node's child-process machinery. See src/*.c for each program's
// arguments and output lines.
import { execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export type WorkloadName = 'memhog' | 'appender' | 'threads' | 'forker' | 'sleeper' | 'mappings';
export const WORKLOAD_NAMES: readonly WorkloadName[] = ['memhog', 'appender', 'threads', 'forker', 'sleeper', 'mappings'];
// transfer-floor is no workload: a benchmark's baseline (tools/bench/migrate.ts).
type ProgramName = WorkloadName | 'supervise' | 'transfer-floor';

// The C sources sit beside this file; the compiled copy of it runs from tools/dist/workloads.
const HERE = path.dirname(fileURLToPath(import.meta.url));
const SRC_DIR = fs.existsSync(path.join(HERE, 'src')) ? path.join(HERE, 'src') : path.join(HERE, '..', '..', 'workloads', 'src');
const CFLAGS = ['-O2', '-g', '-pthread', '-Wall', '-Wextra'];
const BUILD_TIMEOUT_MS = 60_000;

let cacheDirMemo: string | undefined;
const builds = new Map<ProgramName, Promise<string>>();

/** Directory the binaries are cached in: keyed by a hash of every source and the flags,
 * so an edited source never runs stale and unchanged sources compile once per machine. */
export function workloadCacheDir(): string {
  if (cacheDirMemo === undefined) {
    const h = createHash('sha256');
    h.update(CFLAGS.join(' '));
    for (const f of fs.readdirSync(SRC_DIR).sort()) {
      if (!/\.[ch]$/.test(f)) continue;
      h.update(`\0${f}\0`);
      h.update(fs.readFileSync(path.join(SRC_DIR, f)));
    }
    cacheDirMemo = path.join(os.tmpdir(), `lazymig-workloads-${h.digest('hex').slice(0, 16)}`);
  }
  return cacheDirMemo;
}

function execFileP(file: string, args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${file} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      } else {
        resolve({ stdout, stderr });
      }
    });
  });
}

/** Compiles a workload (or the supervisor) if needed; returns the binary's path. */
export function buildWorkload(name: ProgramName): Promise<string> {
  let p = builds.get(name);
  if (!p) {
    p = build(name);
    builds.set(name, p);
    // A failed build must not be cached: the next call retries (e.g. after a fix).
    p.catch(() => builds.delete(name));
  }
  return p;
}

async function build(name: ProgramName): Promise<string> {
  const src = path.join(SRC_DIR, `${name}.c`);
  if (!fs.existsSync(src)) throw new Error(`unknown workload ${JSON.stringify(name)}: no ${src}`);
  const dir = workloadCacheDir();
  const out = path.join(dir, name);
  if (fs.existsSync(out)) return out;
  fs.mkdirSync(dir, { recursive: true });
  // Concurrent test processes each compile to their own name; rename is atomic, so
  // nobody ever execs a half-written binary and the last writer wins harmlessly.
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    await execFileP('gcc', [...CFLAGS, '-o', tmp, src], BUILD_TIMEOUT_MS);
    fs.renameSync(tmp, out);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
  return out;
}

export interface WorkloadExit {
  /** Exit status, or null when killed by a signal or when the outcome is unknown. */
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface WaitOptions {
  /** Only consider log bytes from this offset on (see `logSize()`). */
  since?: number;
}

export interface Workload {
  readonly name: WorkloadName;
  readonly pid: number;
  readonly logPath: string;
  /** The match of the `ready pid=...` line, for workload-specific fields. */
  readonly ready: RegExpExecArray;
  readLog(): string;
  logSize(): number;
  /** Last line of the log matching `re` right now, or undefined. */
  lastMatch(re: RegExp): RegExpExecArray | undefined;
  /** First line (from `since`) matching `re`; rejects after timeoutMs or if the workload exits. */
  waitForLine(re: RegExp, timeoutMs?: number, opts?: WaitOptions): Promise<RegExpExecArray>;
  /** SIGKILL the workload and its descendants, if they are still ours. Idempotent. */
  kill(): void;
  readonly exited: Promise<WorkloadExit>;
  /** Set once the supervisor has reported the exit. */
  exitInfo(): WorkloadExit | undefined;
}

export interface StartOptions {
  /** Directory for the log (default: a fresh temp dir). */
  logDir?: string;
  /** Exact log path; overrides logDir. Opened for append. */
  logPath?: string;
  readyTimeoutMs?: number;
  /** Passed as --lifetime-s so an orphan stops by itself; 0 disables. Default 600. */
  lifetimeS?: number;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
}

const live = new Set<Workload>();
/** Log dirs we created; removed when the test process exits unless LAZYMIG_KEEP_LOGS=1. */
const ownLogDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const w of live) w.kill();
    if (process.env['LAZYMIG_KEEP_LOGS'] === '1') return;
    for (const d of ownLogDirs) fs.rmSync(d, { recursive: true, force: true });
  });
}

/** `waitForLine` on any log file, e.g. one a restored process keeps appending to. */
export async function waitForLogLine(
  logPath: string,
  re: RegExp,
  timeoutMs: number,
  opts: WaitOptions & { abortReason?: () => string | undefined; what?: string } = {},
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  const lineRe = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
  let offset = opts.since ?? 0;
  let partial = '';
  for (;;) {
    let chunk = '';
    try {
      const fd = fs.openSync(logPath, 'r');
      try {
        const size = fs.fstatSync(fd).size;
        if (size > offset) {
          const buf = Buffer.alloc(size - offset);
          const n = fs.readSync(fd, buf, 0, buf.length, offset);
          offset += n;
          chunk = buf.subarray(0, n).toString('utf8');
        }
      } finally {
        fs.closeSync(fd);
      }
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    if (chunk) {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        const m = lineRe.exec(line);
        if (m) return m;
      }
    }
    const abort = opts.abortReason?.();
    const what = opts.what ?? logPath;
    if (abort !== undefined || Date.now() >= deadline) {
      const tail = tailOf(logPath, 8);
      const why = abort ?? `within ${timeoutMs} ms`;
      throw new Error(`${what}: no line matching ${String(re)} ${why}; log tail:\n${tail}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function tailOf(logPath: string, lines: number): string {
  try {
    return fs.readFileSync(logPath, 'utf8').split('\n').slice(-lines - 1).join('\n');
  } catch {
    return '(no log)';
  }
}

function signalName(n: number): NodeJS.Signals | null {
  for (const [name, num] of Object.entries(os.constants.signals)) {
    if (num === n) return name as NodeJS.Signals;
  }
  return null;
}

/** Start time (clock ticks since boot) of a pid, to tell our process from a recycled pid. */
function startTimeOf(pid: number): string | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); starttime is field 22.
    return rest[0] === 'Z' ? undefined : rest[19];
  } catch {
    return undefined;
  }
}

/** Every process's parent, from one scan of /proc (CONFIG_PROC_CHILDREN is off on this kernel). */
function parents(): Map<number, number> {
  const parent = new Map<number, number>();
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // raced with an exit
    }
  }
  return parent;
}

function childrenOf(pid: number): number[] {
  return [...parents()].filter(([, pp]) => pp === pid).map(([p]) => p);
}

/** Every descendant of `pid` right now (children, their children, ...). */
export function descendants(pid: number): number[] {
  const parent = parents();
  const out: number[] = [];
  const want = new Set([pid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [p, pp] of parent) {
      if (want.has(pp) && !want.has(p)) {
        want.add(p);
        out.push(p);
        grew = true;
      }
    }
  }
  return out;
}

/**
 * Builds (if needed) and starts a workload. stdin is /dev/null, stdout and stderr go to
 * the log (opened O_APPEND), fds above 2 are closed, and the promise resolves once the
 * workload printed `ready pid=<pid> ...`.
 */
export async function startWorkload(
  name: WorkloadName,
  args: readonly string[] = [],
  opts: StartOptions = {},
): Promise<Workload> {
  const [bin, supervisor] = await Promise.all([buildWorkload(name), buildWorkload('supervise')]);
  let logDir = opts.logDir;
  if (opts.logPath === undefined && logDir === undefined) {
    logDir = fs.mkdtempSync(path.join(os.tmpdir(), `lazymig-${name}-`));
    ownLogDirs.add(logDir);
    installExitHook();
  }
  const logPath = opts.logPath ?? path.join(logDir ?? os.tmpdir(), `${name}.log`);
  const statusPath = `${logPath}.exit`;
  fs.rmSync(statusPath, { force: true });
  const lifetime = opts.lifetimeS ?? 600;
  const fullArgs = [...args, ...(lifetime > 0 ? ['--lifetime-s', String(lifetime)] : [])];
  const logFd = fs.openSync(logPath, 'a');
  // A reused log already holds an earlier run's lines: look for this run's only.
  const logStart = fs.fstatSync(logFd).size;
  let sup;
  try {
    sup = spawn(supervisor, [statusPath, bin, ...fullArgs], {
      stdio: ['ignore', logFd, logFd],
      cwd: opts.cwd,
      env: opts.env ?? process.env,
    });
  } finally {
    fs.closeSync(logFd);
  }
  sup.unref();
  const supPid = sup.pid;

  let exitInfo: WorkloadExit | undefined;
  const exited = new Promise<WorkloadExit>((resolve) => {
    const finish = (): void => {
      let info: WorkloadExit = { code: null, signal: null };
      try {
        const m = /code=(-?\d+) signal=(\d+)/.exec(fs.readFileSync(statusPath, 'utf8'));
        if (m) {
          const code = Number(m[1]);
          const sig = Number(m[2]);
          info = { code: code >= 0 ? code : null, signal: sig ? signalName(sig) : null };
        }
      } catch {
        // supervisor died before writing: outcome unknown
      }
      exitInfo = info;
      resolve(info);
    };
    sup.once('exit', finish);
    sup.once('error', finish);
  });

  const desc = `workload ${name} (supervisor pid ${supPid ?? '?'})`;
  const readyTimeout = opts.readyTimeoutMs ?? 10_000;
  let ready: RegExpExecArray;
  try {
    ready = await waitForLogLine(logPath, /^ready pid=(\d+)(?: .*)?$/, readyTimeout, {
      since: logStart,
      what: desc,
      abortReason: () => (exitInfo ? `before it exited (${JSON.stringify(exitInfo)})` : undefined),
    });
  } catch (e) {
    if (supPid !== undefined && !exitInfo) {
      // The workload never became ready: take down what we started.
      for (const c of childrenOf(supPid)) process.kill(c, 'SIGKILL');
    }
    throw e;
  }
  const pid = Number(ready[1]);
  const startTime = startTimeOf(pid);

  let killed = false;
  const w: Workload = {
    name,
    pid,
    logPath,
    ready,
    readLog: () => fs.readFileSync(logPath, 'utf8'),
    logSize: () => {
      try {
        return fs.statSync(logPath).size;
      } catch {
        return 0;
      }
    },
    lastMatch: (re) => {
      const lineRe = new RegExp(re.source, re.flags.replace(/[gy]/g, ''));
      const lines = fs.readFileSync(logPath, 'utf8').split('\n');
      for (let i = lines.length - 1; i >= 0; i--) {
        const m = lineRe.exec(lines[i] ?? '');
        if (m) return m;
      }
      return undefined;
    },
    waitForLine: (re, timeoutMs = 5000, wopts = {}) =>
      waitForLogLine(logPath, re, timeoutMs, {
        ...wopts,
        what: `workload ${name} pid ${pid}`,
        abortReason: () => (exitInfo ? `before it exited (${JSON.stringify(exitInfo)})` : undefined),
      }),
    kill: () => {
      if (killed) return;
      killed = true;
      live.delete(w);
      if (exitInfo || startTime === undefined || startTimeOf(pid) !== startTime) return;
      sup.ref();
      // Collect descendants first: once the parent dies they are reparented away.
      const victims = [pid];
      for (let i = 0; i < victims.length && i < 1024; i++) victims.push(...childrenOf(victims[i] ?? -1));
      for (const v of victims) {
        try {
          process.kill(v, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    },
    // The supervisor is unref'd so a forgotten workload cannot hold the test process open;
    // whoever awaits the exit needs the event loop to stay alive until it comes.
    get exited() {
      sup.ref();
      return exited;
    },
    exitInfo: () => exitInfo,
  };
  live.add(w);
  installExitHook();
  void exited.then(() => live.delete(w));
  return w;
}
