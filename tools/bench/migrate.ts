// Lazy migration of a memhog across two network namespaces (veth), with an eager
// dump + copy + restore of the same size as the baseline measured in the same run.
//
//   node --import tsx tools/bench/migrate.ts [MiB...]          (default: 64 1024)
//        [--modes armed,lazy,eager] [--repeat N] [--interval-ms 20] [--json] [--timeline]
//        [--net veth|loopback] [--rate-mbit N] [--against OTHER/packages/cli/bin/lazymig]
//
// --net: the link between the two "hosts": a veth pair between two namespaces (default, as
// the tests), or one namespace's loopback (as CRIU's published figures). On this VM a veth
// of MTU 1500 moves TCP data at about half loopback's speed. --rate-mbit (veth only) caps
// each end's sending rate with a tbf qdisc, as a slower network would.
//
// Real `lazymig` commands, spawned the way a user types them (dump on the source host,
// images copied, lazy-pages + restore on the destination host). Modes:
//   lazy         CRIU's order: dump, copy, then lazy-pages and restore (side by side)
//   armed        lazy-pages and restore --wait-images started before the dump, waiting
//                for the images; then dump and copy
//   eager        dump, copy, restore: the baseline
// Per size and mode:
//   downtime     freeze to resumed: the `tree frozen` (dump) and `tree resumed` (restore)
//                log lines' timestamps; (copy) is the part the bench's copy of the images took
//   pause        the longest stop memhog itself saw (its `stall=` field, a per-page clock
//                check) from the migration until every page is in; `after` is the longest
//                stop that began after the resume (a fault waiting for its page)
//   slow pass    verify time of the slowest pass while pages were still coming, vs before
//   all in       resume until lazy-pages confirmed every page (its `totalMs`, counted from
//                the hand-over), and the throughput that makes
//   pages        by fault / prefetch (rest of a fault window) / background
//   fault p50/p99  fault service (fault read until the faulting page is installed)
//   wire         bytes received on the destination's link during the migration
// With --repeat N, each size and mode runs N times, then a line of min / median / max,
// and the ratios are of medians (one run on this noisy machine proves little).
// --against BIN: the same migrations with another build's lazymig too (another checkout,
// built: e.g. `git worktree add /tmp/base <commit> && (cd /tmp/base && bash tools/bootstrap)`),
// the two interleaved round by round, alternating which goes first; then this build's
// medians against the other's, and in how many rounds this one was faster. On a machine
// whose speed drifts from minute to minute, only runs side by side compare.
// Then ratios: lazy pause at the largest size vs the smallest; lazy vs eager pause; and
// the largest lazy transfer against this machine's transfer floor, measured in the same run
// (tools/workloads/src/transfer-floor.c: process_vm_readv -> TCP over the same link ->
// UFFDIO_COPY in plain C, no framing, no JS), once with nothing else running and once
// with the destination verifying the pages as they arrive, every --interval-ms as memhog
// does, faulting on those not in yet (the floor serves no fault: its in-order install wakes
// them). The second is what any transfer of this kind can do beside such a workload.
// Absolute numbers on a noisy 2-vCPU VM mean little; the ratios are measured in one run.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTwoHosts, type Host, type Link, type TwoHosts } from '../topology/index.js';
import { execFile } from 'node:child_process';
import { buildWorkload, startWorkload, waitForLogLine } from '../workloads/index.js';
import { DEFAULT_CONGESTION } from '../../packages/pageserver/src/index.js';

const LAZYMIG = fileURLToPath(new URL('../../packages/cli/bin/lazymig', import.meta.url));
const argv = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return undefined;
  const v = argv[i + 1];
  argv.splice(i, 2);
  return v;
};
const JSON_OUT = argv.includes('--json');
if (JSON_OUT) argv.splice(argv.indexOf('--json'), 1);
const INTERVAL = Number(flag('interval-ms') ?? 20);
// --timeline: every timestamped log line of the three commands, in ms from the freeze.
const TIMELINE = argv.includes('--timeline');
if (TIMELINE) {
  argv.splice(argv.indexOf('--timeline'), 1);
  process.env['LAZYMIG_LOG'] = 'debug';
}
type Mode = 'armed' | 'lazy' | 'eager';
const MODES = (flag('modes') ?? 'armed,lazy,eager').split(',') as Mode[];
for (const m of MODES) if (!['armed', 'lazy', 'eager'].includes(m)) throw new Error(`--modes: unknown mode ${m}`);
const REPEAT = Number(flag('repeat') ?? 1);
if (!Number.isInteger(REPEAT) || REPEAT < 1 || REPEAT > 100) throw new Error(`--repeat: 1..100, not ${REPEAT}`);
const NET = (flag('net') ?? 'veth') as Link;
if (NET !== 'veth' && NET !== 'loopback') throw new Error(`--net: veth or loopback, not ${String(NET)}`);
const AGAINST = flag('against');
const rateArg = flag('rate-mbit');
const RATE_MBIT = rateArg === undefined ? undefined : Number(rateArg);
if (RATE_MBIT !== undefined && (!(RATE_MBIT > 0) || NET !== 'veth')) throw new Error(`--rate-mbit: a positive number, with --net veth (not ${rateArg})`);
const USAGE =
  'usage: migrate.ts [MiB...] [--modes armed,lazy,eager] [--repeat N] [--interval-ms N] [--net veth|loopback] [--rate-mbit N] [--against BIN] [--json] [--timeline]';
if (argv.includes('--help') || argv.includes('-h')) {
  console.log(USAGE);
  process.exit(0);
}
// What is left are the sizes: anything else is an option this bench does not have.
const bad = argv.find((a) => !/^[1-9][0-9]*$/.test(a));
if (bad !== undefined) {
  console.error(`migrate.ts: ${bad.startsWith('-') ? 'unknown option' : 'not a size in MiB'}: ${bad}\n${USAGE}`);
  process.exit(2);
}
const SIZES = argv.length > 0 ? argv.map(Number) : [64, 1024];

/** A lazymig to run the commands with: this checkout's, or the one given with --against. */
interface Build {
  label: 'this' | 'against';
  bin: string;
}
const BUILDS: Build[] = [{ label: 'this', bin: LAZYMIG }];
if (AGAINST !== undefined) {
  const bin = resolve(AGAINST);
  try {
    accessSync(bin, constants.X_OK);
  } catch (err) {
    console.error(`migrate.ts: --against ${AGAINST}: not an executable lazymig (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    process.exit(2);
  }
  BUILDS.push({ label: 'against', bin });
}

interface Cmd {
  child: ChildProcess;
  out(): string;
  err(): string;
  exited: Promise<number>;
  waitErr(re: RegExp, timeoutMs: number): Promise<RegExpExecArray>;
}

function run(hosts: TwoHosts, host: Host, bin: string, args: string[]): Cmd {
  const child = hosts.spawnIn(host, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  // Checked as each chunk of stderr arrives, not by polling: the bench copies the images
  // the moment dump says they are written, as an orchestrating script would.
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    for (const w of [...waiters]) w();
  });
  const exited = new Promise<number>((r) => child.on('close', (code, sig) => r(code ?? (sig ? 128 : 1))));
  return {
    child,
    out: () => out,
    err: () => err,
    exited,
    waitErr: (re, timeoutMs) =>
      new Promise<RegExpExecArray>((resolve, reject) => {
        const done = (): void => {
          waiters.delete(check);
          clearTimeout(timer);
        };
        const check = (): void => {
          const m = re.exec(err);
          if (m) {
            done();
            resolve(m);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`lazymig ${args[0]}: no ${re} in ${timeoutMs} ms:\n${err}`));
        }, timeoutMs);
        void exited.then((code) => {
          if (waiters.has(check)) check();
          if (!waiters.has(check)) return;
          done();
          reject(new Error(`lazymig ${args[0]} exited ${code} before ${re}:\n${err}`));
        });
        waiters.add(check);
        check();
      }),
  };
}

/**
 * The images' copy (scp in real life, whose ssh start-up is not lazymig's): the files in
 * parallel, into a dir made for them.
 */
/**
 * The copy a user makes with scp, made as fast as this machine allows: synchronously, in this
 * process. Async copies spent 3-12 ms in thread-pool round trips on the busy 2-CPU machine,
 * time of the bench's, not lazymig's; what the copy takes is printed with each result.
 */
function copyDir(from: string, to: string): void {
  mkdirSync(to);
  for (const f of readdirSync(from)) copyFileSync(join(from, f), join(to, f));
}

function printTimeline(t0: number, cmds: Cmd[]): void {
  const lines = cmds
    .flatMap((c) => c.err().split('\n'))
    .map((l) => /^ts=(\S+) level=\w+ pid=\d+ comp=(\S+) what="([^"]*)"(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ t: Date.parse(m[1]!) - t0, line: `${m[2]}: ${m[3]}${m[4]!.length > 400 ? m[4]!.slice(0, 400) + '…' : m[4]}` }))
    .filter((x) => x.t > -50 && x.t < 2000)
    .sort((a, b) => a.t - b.t);
  for (const { t, line } of lines) console.log(`${t.toFixed(0).padStart(8)} ms  ${line}`);
}

async function mustExit(c: Cmd, what: string): Promise<void> {
  const rc = await c.exited;
  if (rc !== 0) throw new Error(`${what} exited ${rc}:\n${c.err()}`);
}

/** Epoch ms of the first log line of `what` in a command's stderr. */
function logTime(text: string, what: string): number {
  const m = new RegExp(`ts=(\\S+) .*what="${what}"`).exec(text);
  if (!m) throw new Error(`no "${what}" log line in:\n${text}`);
  return Date.parse(m[1]!);
}

/** A numeric field of a log line. */
function logNumber(text: string, what: string, field: string): number {
  const m = new RegExp(`what="${what}".* ${field}=(\\d+)`).exec(text);
  if (!m) throw new Error(`no ${field} in the "${what}" log line in:\n${text}`);
  return Number(m[1]);
}

async function rxBytes(hosts: TwoHosts, host: Host): Promise<number> {
  const dev = await hosts.execIn(host, ['cat', '/proc/net/dev']);
  let n = 0;
  for (const line of dev.split('\n').slice(2)) {
    const [name, rest] = line.split(':');
    // Over a veth, loopback traffic in the namespace is not the migration's.
    if (!rest || (hosts.link === 'veth' && name!.trim() === 'lo')) continue;
    n += Number(rest.trim().split(/\s+/)[0]);
  }
  return n;
}

interface Pass {
  pass: number;
  t: number;
  stall: number;
  stallAt: number;
  ms: number;
}

function passes(log: string): Pass[] {
  const out: Pass[] = [];
  const re = /^verify ok pass=(\d+) counter=\d+ rewritten=\d+ t=([\d.]+) stall=([\d.]+) stall_at=([\d.]+) ms=([\d.]+)$/gm;
  for (let m = re.exec(log); m; m = re.exec(log)) {
    out.push({ pass: Number(m[1]), t: Number(m[2]), stall: Number(m[3]), stallAt: Number(m[4]), ms: Number(m[5]) });
  }
  return out;
}

interface Result {
  build: Build['label'];
  mode: Mode;
  mib: number;
  downtimeMs: number;
  /** of the downtime: the bench's copy of the images */
  copyMs: number;
  pauseMs: number;
  pauseAfterResumeMs: number;
  normalPassMs: number;
  slowPassMs: number;
  allInMs: number;
  mibPerSec: number;
  pages: { fault: number; prefetch: number; background: number; zero: number };
  /** Faults lazy-pages read, and how many of them waited for a reply already on its way. */
  faults: { all: number; waited: number };
  faultP50Us: number;
  faultP99Us: number;
  /** p50 of the faults that did not wait for pages on their way (null: a build whose summary lacks it). */
  otherP50Us: number | null;
  wireMiB: number;
  /** CPU time, all threads, while pages moved: the page server's since its first welcome, lazy-pages' over `all in` */
  cpuMs: { source: number; destination: number };
}

async function migrate(mib: number, mode: Mode, build: Build): Promise<Result> {
  const hosts = await createTwoHosts({ link: NET, rateMbit: RATE_MBIT });
  const work = await mkdtemp(join(tmpdir(), 'lazymig-bench-migrate-'));
  const cmds: Cmd[] = [];
  const track = (c: Cmd): Cmd => (cmds.push(c), c);
  let restoredPid = 0;
  const hog = await startWorkload('memhog', [String(mib), '--interval-ms', String(INTERVAL)], { logDir: work });
  try {
    await hog.waitForLine(/verify ok pass=3 /, 120_000);
    const port = 20000 + Math.floor(Math.random() * 20000);
    const srcImages = join(work, 'src');
    const dstImages = join(work, 'dst');
    const rx0 = await rxBytes(hosts, hosts.dst);
    const lazy = mode !== 'eager';
    const pidfile = join(work, 'restored.pid');
    const restoreArgs = ['restore', '--images-dir', dstImages, '--restore-detached', '--pidfile', pidfile];
    const daemonArgs = ['lazy-pages', '--page-server', '--images-dir', dstImages, '--json'];
    if (lazy) restoreArgs.push('--lazy-pages');
    let daemon: Cmd | undefined;
    let restorer: Cmd | undefined;
    if (mode === 'armed') {
      // The destination is started first and waits for the images: its start-up is over
      // before the freeze. The socket lives in a work dir of its own, as the images dir
      // does not exist until the copy makes it.
      const workDir = join(work, 'dst-work');
      await mkdir(workDir);
      const armed = ['--work-dir', workDir, '--wait-images', '120'];
      // Told where the page server is, it connects as soon as the token has arrived.
      daemon = track(run(hosts, hosts.dst, build.bin, [...daemonArgs, ...armed, '--address', hosts.src.address, '--port', String(port)]));
      restorer = track(run(hosts, hosts.dst, build.bin, [...restoreArgs, ...armed]));
      await Promise.all([daemon.waitErr(/waiting for the images/, 60_000), restorer.waitErr(/waiting up to/, 60_000)]);
    }
    const logMark = hog.logSize();
    const dumpArgs = ['dump', '--tree', String(hog.pid), '--images-dir', srcImages];
    if (lazy) dumpArgs.push('--lazy-pages', '--address', hosts.src.address, '--port', String(port));
    const dumper = track(run(hosts, hosts.src, build.bin, dumpArgs));
    // Copied the moment dump says they are written (the page server opens a little later).
    if (lazy) await dumper.waitErr(/^images written to /m, 120_000);
    else await mustExit(dumper, 'dump');
    const copyStart = Date.now();
    copyDir(srcImages, dstImages);
    const copyEnd = Date.now();
    if (mode === 'lazy') {
      // Restore is started at once, not after the daemon says it is ready: restore waits
      // (up to 5 s) for lazy-pages.socket, so the two commands start up side by side.
      daemon = track(run(hosts, hosts.dst, build.bin, daemonArgs));
    }
    restorer ??= track(run(hosts, hosts.dst, build.bin, restoreArgs));
    await restorer.waitErr(/what="tree resumed"/, 120_000);
    const resumedAt = logTime(restorer.err(), 'tree resumed');
    const frozenAt = logTime(dumper.err(), 'tree frozen');
    await mustExit(restorer, 'restore');
    restoredPid = Number(readFileSync(pidfile, 'utf8').trim());
    let summary: {
      totalMs: number; bytes: number; pagesByFault: number; pagesByPrefetch: number; pagesByBackground: number; zeroFaults: number;
      faults: number; faultsWaited?: number;
      faultServiceUs: { p50: number; p99: number }; otherServiceUs?: { p50: number }; cpuMs: number;
    } | undefined;
    if (daemon) {
      await mustExit(daemon, 'lazy-pages');
      await mustExit(dumper, 'dump (page server)');
      summary = JSON.parse(daemon.out().trim().split('\n').pop()!);
    }
    const allInAt = resumedAt + (summary?.totalMs ?? 0);
    if (TIMELINE) {
      printTimeline(frozenAt, cmds);
      console.log(`(bench: images copied from ${copyStart - frozenAt} to ${copyEnd - frozenAt} ms)`);
    }
    const rx1 = await rxBytes(hosts, hosts.dst);
    // Two whole passes after every page is in: the workload's view is complete.
    const ps0 = passes(hog.readLog());
    const target = Math.max(...ps0.map((p) => p.pass)) + 2;
    // (the source process is gone after a lazy migration: the restored one logs on)
    await waitForLogLine(hog.logPath, new RegExp(`verify ok pass=${target} `), 120_000);
    const all = passes(hog.readLog());
    const before = passes(hog.readLog().slice(0, logMark));
    const normal = before.slice(-3).reduce((a, p) => a + p.ms, 0) / Math.min(3, before.length);
    // Passes that saw the migration: from the one that straddled the freeze until the first
    // one that started after every page was in.
    // The first pass to end after the freeze always counts: after an eager restore it is
    // the one that started late.
    const firstAfter = all.find((p) => p.t >= frozenAt);
    const during = all.filter((p) => p.t >= frozenAt && (p === firstAfter || p.t - p.ms <= allInAt + 1));
    // A freeze that falls in memhog's sleep between passes is no stall inside a pass: it
    // shows as a pass that started late.
    const late = (p: Pass): number => {
      const prev = all.find((q) => q.pass === p.pass - 1);
      return prev ? Math.max(0, p.t - p.ms - prev.t - INTERVAL) : 0;
    };
    const pause = Math.max(0, ...during.map((p) => Math.max(p.stall, late(p))));
    const after = Math.max(0, ...during.filter((p) => p.stallAt - p.stall > resumedAt + 1).map((p) => p.stall));
    const slow = Math.max(0, ...during.map((p) => p.ms));
    const pagesIn = summary ? summary.bytes / 2 ** 20 : mib;
    return {
      build: build.label,
      mode,
      mib,
      downtimeMs: resumedAt - frozenAt,
      copyMs: copyEnd - copyStart,
      pauseMs: pause,
      pauseAfterResumeMs: after,
      normalPassMs: normal,
      slowPassMs: slow,
      allInMs: summary?.totalMs ?? 0,
      mibPerSec: summary ? pagesIn / (summary.totalMs / 1000) : 0,
      pages: { fault: summary?.pagesByFault ?? 0, prefetch: summary?.pagesByPrefetch ?? 0, background: summary?.pagesByBackground ?? 0, zero: summary?.zeroFaults ?? 0 },
      faults: { all: summary?.faults ?? 0, waited: summary?.faultsWaited ?? 0 },
      faultP50Us: summary?.faultServiceUs.p50 ?? 0,
      faultP99Us: summary?.faultServiceUs.p99 ?? 0,
      otherP50Us: summary?.otherServiceUs?.p50 ?? null,
      wireMiB: (rx1 - rx0) / 2 ** 20,
      cpuMs: { source: daemon ? logNumber(dumper.err(), 'destination holds every page', 'cpuMs') : 0, destination: summary?.cpuMs ?? 0 },
    };
  } finally {
    for (const c of cmds) if (c.child.exitCode === null) c.child.kill('SIGKILL');
    await Promise.all(cmds.map((c) => c.exited));
    if (restoredPid > 0) {
      try {
        process.kill(restoredPid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    hog.kill();
    await hosts.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

const f = (n: number, d = 0): string => n.toFixed(d);
const results: Result[] = [];
console.log(`migrate bench: memhog ${SIZES.join(', ')} MiB (--interval-ms ${INTERVAL}), modes ${MODES.join(', ')}, over ${NET}${RATE_MBIT !== undefined ? ` at ${RATE_MBIT} Mbit/s` : ''}, node ${process.version}`);
if (AGAINST !== undefined) console.log(`against: ${BUILDS[1]!.bin}, interleaved round by round`);
const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const spread = (xs: number[]): string => `${f(Math.min(...xs))} / ${f(median(xs))} / ${f(Math.max(...xs))}`;
/** One build's runs of a size and mode, in the order they ran. */
const runsOf = (mib: number, mode: Mode, build: Build['label']): Result[] => results.filter((r) => r.mib === mib && r.mode === mode && r.build === build);
/** The first column of a result's lines: size, mode and, with --against, the build. */
const headOf = (mib: number, mode: Mode, build: Build['label']): string =>
  `${String(mib).padStart(5)} MiB ${mode.padEnd(5)}${AGAINST !== undefined ? ` ${build.padEnd(7)}` : ''}`;

function report(r: Result): void {
  const head = headOf(r.mib, r.mode, r.build);
  const common = `downtime ${f(r.downtimeMs).padStart(5)} ms (copy ${f(r.copyMs)} ms), pause ${f(r.pauseMs).padStart(5)} ms (after resume ${f(r.pauseAfterResumeMs)} ms), slowest pass ${f(r.slowPassMs)} ms (normal ${f(r.normalPassMs)} ms), wire ${f(r.wireMiB, 1)} MiB`;
  if (r.mode === 'eager') return console.log(`${head}  ${common}`);
  console.log(
    `${head}  ${common}\n${' '.repeat(head.length + 2)}all in ${f(r.allInMs)} ms after resume (${f(r.mibPerSec)} MiB/s); pages: ${r.pages.fault} fault, ${r.pages.prefetch} prefetch, ${r.pages.background} background, ${r.pages.zero} zero-faults; ${r.faults.all} faults (${r.faults.waited} waited for their reply); fault service p50 ${f(r.faultP50Us)} µs, p99 ${f(r.faultP99Us)} µs${r.otherP50Us === null ? '' : ` (p50 ${f(r.otherP50Us)} µs without the waits)`}; cpu: source ${f(r.cpuMs.source)} ms, destination ${f(r.cpuMs.destination)} ms`,
  );
}

for (const mib of SIZES) {
  for (const mode of MODES) {
    for (let run = 0; run < REPEAT; run++) {
      // Which build goes first alternates: a machine that slows down over a round favours neither.
      for (const build of run % 2 === 0 ? BUILDS : [...BUILDS].reverse()) {
        const r = await migrate(mib, mode, build);
        results.push(r);
        report(r);
      }
    }
    for (const build of REPEAT > 1 ? BUILDS : []) {
      const rs = runsOf(mib, mode, build.label);
      const allIn = mode === 'eager' ? '' : `, all in ${spread(rs.map((r) => r.allInMs))} ms, cpu source ${spread(rs.map((r) => r.cpuMs.source))} ms, destination ${spread(rs.map((r) => r.cpuMs.destination))} ms`;
      console.log(`${headOf(mib, mode, build.label)}  ${REPEAT} runs, min / median / max: downtime ${spread(rs.map((r) => r.downtimeMs))} ms, pause ${spread(rs.map((r) => r.pauseMs))} ms${allIn}`);
    }
  }
}
/**
 * The transfer floor of `mib` MiB on this machine, over the link the migrations used (see
 * the header): ms, MiB/s, each side's CPU. With `verifying`, the destination verifies the
 * pages as they arrive, every INTERVAL ms, as the migrated memhog does.
 */
async function transferFloor(mib: number, verifying = false): Promise<{ ms: number; mibPerSec: number; cpuMs: { source: number; destination: number } }> {
  const bin = await buildWorkload('transfer-floor');
  const hosts = await createTwoHosts({ link: NET, rateMbit: RATE_MBIT });
  // The same congestion control as the page server's: a floor that paced would be no floor.
  const args = [String(mib), '--source-netns', hosts.src.ns, '--dest-netns', hosts.dst.ns, '--address', hosts.src.address, '--congestion', DEFAULT_CONGESTION];
  if (verifying) args.push('--reader-interval-ms', String(INTERVAL));
  let out: string;
  try {
    out = await new Promise<string>((resolve, reject) =>
      execFile(bin, args, { timeout: 120_000 }, (err, stdout) => (err ? reject(new Error(`transfer-floor: ${err.message}\n${stdout}`)) : resolve(stdout))),
    );
  } finally {
    await hosts.destroy();
  }
  const m = /floor_ms=([\d.]+) mib_per_s=(\d+) bad_pages=0 src_cpu_ms=(\d+) dst_cpu_ms=(\d+)/.exec(out);
  if (!m) throw new Error(`transfer-floor: unexpected output: ${out}`);
  return { ms: Number(m[1]), mibPerSec: Number(m[2]), cpuMs: { source: Number(m[3]), destination: Number(m[4]) } };
}

/** This build's result of a size and mode (the other's, with `build`); with --repeat, its medians. */
const get = (mib: number, mode: Mode, build: Build['label'] = 'this'): Result | undefined => {
  const rs = runsOf(mib, mode, build);
  if (rs.length <= 1) return rs[0];
  return {
    ...rs[0]!,
    downtimeMs: median(rs.map((r) => r.downtimeMs)),
    pauseMs: median(rs.map((r) => r.pauseMs)),
    allInMs: median(rs.map((r) => r.allInMs)),
    cpuMs: { source: median(rs.map((r) => r.cpuMs.source)), destination: median(rs.map((r) => r.cpuMs.destination)) },
  };
};
const small = Math.min(...SIZES);
const big = Math.max(...SIZES);
const x = (a: number, b: number): string => `${(a / b).toFixed(2)}x`;
console.log(`\nratios (same run${REPEAT > 1 ? `, medians of ${REPEAT} runs` : ''}):`);
for (const mode of MODES.filter((m) => m !== 'eager')) {
  const [lb, ls] = [get(big, mode)!, get(small, mode)!];
  if (big !== small) console.log(`  ${mode} pause ${big} MiB / ${small} MiB: ${x(lb.pauseMs, ls.pauseMs)} (target <= 1.5x); downtime ${x(lb.downtimeMs, ls.downtimeMs)}`);
  for (const mib of SIZES) {
    const [l, e] = [get(mib, mode)!, get(mib, 'eager')];
    if (e) console.log(`  ${mib} MiB: ${mode} / eager pause ${x(l.pauseMs, e.pauseMs)}, downtime ${x(l.downtimeMs, e.downtimeMs)}`);
  }
  console.log(`  targets at ${big} MiB, ${mode}: pause ${f(lb.pauseMs)} ms (< 50), all in ${f(lb.allInMs)} ms (< 1000 for 1 GiB)`);
}
const lazyModes = MODES.filter((m) => m !== 'eager');
if (lazyModes.length > 0) {
  const floor = await transferFloor(big);
  const verifying = await transferFloor(big, true);
  for (const mode of lazyModes) {
    const l = get(big, mode)!;
    console.log(`  ${big} MiB ${mode}: all in ${f(l.allInMs)} ms vs transfer floor over ${NET} ${f(floor.ms)} ms (${f(floor.mibPerSec)} MiB/s, plain C): ${x(l.allInMs, floor.ms)}`);
    console.log(`  ${big} MiB ${mode}: all in ${f(l.allInMs)} ms vs the same floor with its destination verifying the pages as they arrive (every ${INTERVAL} ms) ${f(verifying.ms)} ms: ${x(l.allInMs, verifying.ms)}`);
    // With two vCPUs the transfer is bound by CPU time, and CPU time is the steadier figure.
    const { source: cs, destination: cd } = l.cpuMs;
    console.log(
      `  ${big} MiB ${mode}: cpu while pages moved: source ${f(cs)} ms vs the floor's ${f(floor.cpuMs.source)} ms (${x(cs, floor.cpuMs.source)}), ` +
        `destination ${f(cd)} ms vs ${f(floor.cpuMs.destination)} ms (${x(cd, floor.cpuMs.destination)})`,
    );
  }
}
if (AGAINST !== undefined) {
  console.log(`\nthis build against ${BUILDS[1]!.bin} (medians${REPEAT > 1 ? ` of ${REPEAT} interleaved rounds` : ''}; below 1x: this build takes less):`);
  const vs = (a: number, b: number, unit: string): string => `${f(a)} vs ${f(b)} ${unit} (${x(a, b)})`;
  for (const mib of SIZES) {
    for (const mode of MODES) {
      const [a, b] = [get(mib, mode, 'this')!, get(mib, mode, 'against')!];
      const [mine, theirs] = [runsOf(mib, mode, 'this'), runsOf(mib, mode, 'against')];
      const wins = (key: (r: Result) => number): string => `${mine.filter((r, i) => key(r) < key(theirs[i]!)).length} of ${mine.length} rounds`;
      const head = `  ${String(mib).padStart(5)} MiB ${mode.padEnd(5)}`;
      if (mode === 'eager') {
        console.log(`${head} pause ${vs(a.pauseMs, b.pauseMs, 'ms')}, downtime ${vs(a.downtimeMs, b.downtimeMs, 'ms')}`);
        continue;
      }
      console.log(
        `${head} all in ${vs(a.allInMs, b.allInMs, 'ms')}, less in ${wins((r) => r.allInMs)}; pause ${vs(a.pauseMs, b.pauseMs, 'ms')}; ` +
          `cpu source ${vs(a.cpuMs.source, b.cpuMs.source, 'ms')}, destination ${vs(a.cpuMs.destination, b.cpuMs.destination, 'ms')}, ` +
          `less in ${wins((r) => r.cpuMs.source + r.cpuMs.destination)}`,
      );
    }
  }
}
if (JSON_OUT) console.log(JSON.stringify(results));
