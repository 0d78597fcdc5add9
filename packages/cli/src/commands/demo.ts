/**
 * `lazymig demo`: a real lazy migration on this one machine. Two network namespaces joined
 * by a veth pair play the source and destination hosts; a memhog that keeps verifying its
 * memory is migrated with the four commands a user would type, and its own log shows it
 * going on where it stopped.
 */
import type { ChildProcess } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lazymigBin } from '../bin-path.js';
import { createTwoHosts, type Host, type TwoHosts } from '@lazymig/tools/topology';
import { startWorkload, waitForLogLine, type Workload } from '@lazymig/tools/workloads';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../usage-error.js';

const LAZYMIG = lazymigBin();
const PORT = 27000;

interface Step {
  name: string;
  atMs: number;
}

function say(text: string): void {
  process.stdout.write(text + '\n');
}

/** Wall-clock times of the log events the timeline is built from (the daemons' own ts=). */
const seen = new Map<string, number>();

function noteEvents(line: string): void {
  const m = /^ts=(\S+) .*what="(tree frozen|tree resumed)"/.exec(line);
  if (m) seen.set(m[2]!, Date.parse(m[1]!));
}

interface HostCommand {
  child: ChildProcess;
  exited: Promise<number>;
  /** Resolves with the first stderr line matching `re`; rejects if the command ends first. */
  line(re: RegExp, timeoutMs: number): Promise<string>;
}

/** A lazymig command inside one of the hosts, its stderr shown with a prefix. */
function inHost(hosts: TwoHosts, host: Host, label: string, args: string[]): HostCommand {
  const child = hosts.spawnIn(host, [LAZYMIG, ...args], { stdio: ['ignore', 'inherit', 'pipe'] });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let buf = '';
  child.stderr?.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.search(/[\n\r]/)) >= 0) {
      const line = buf.slice(0, i).replace(/\x1b\[K/g, '');
      buf = buf.slice(i + 1);
      if (line.trim()) say(`  [${label}] ${line}`);
      noteEvents(line);
      lines.push(line);
    }
    for (const w of [...waiters]) w();
  });
  const exited = new Promise<number>((resolve) => child.on('close', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
  const line = (re: RegExp, timeoutMs: number): Promise<string> =>
    new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`${label}: no line matching ${re} within ${timeoutMs} ms`)), timeoutMs);
      const check = (): void => {
        const l = lines.find((x) => re.test(x));
        if (l !== undefined) done(null, l);
      };
      const done = (err: Error | null, l?: string): void => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve(l!);
      };
      waiters.add(check);
      void exited.then((rc) => done(new Error(`${label} exited ${rc}`)));
      check();
    });
  return { child, exited, line };
}

/**
 * `armed`: the destination's two commands first, waiting for the images (the shortest
 * pause); `criu`: CRIU's order, dump, copy, then lazy-pages and restore.
 */
export type DemoOrder = 'armed' | 'criu';

export async function runDemo(mib: number, order: DemoOrder = 'armed'): Promise<number> {
  const work = await mkdtemp(join(tmpdir(), 'lazymig-demo-'));
  const workDir = join(work, 'dst-work');
  const srcImages = join(work, 'src-images');
  const dstImages = join(work, 'dst-images');
  const pidfile = join(work, 'restored.pid');
  let hosts: TwoHosts | undefined;
  let hog: Workload | undefined;
  const children: ChildProcess[] = [];
  let restoredPid: number | undefined;
  let interrupted = false;
  const onSignal = (): void => {
    interrupted = true;
    say('\ninterrupted: cleaning up');
    for (const c of children) c.kill('SIGTERM');
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const steps: Step[] = [];
  const t0 = performance.now();
  const mark = (name: string): void => {
    steps.push({ name, atMs: performance.now() - t0 });
  };

  try {
    say(`lazymig demo: migrating a ${mib} MiB memhog from one network namespace to another (${order === 'armed' ? 'destination armed first' : "CRIU's order"})\n`);
    hosts = await createTwoHosts();
    say(`source host ${hosts.src.address} (netns ${hosts.src.ns}), destination host ${hosts.dst.address} (netns ${hosts.dst.ns})`);
    hog = await startWorkload('memhog', [String(mib), '--interval-ms', '20'], { logDir: work });
    say(`memhog pid ${hog.pid} filled ${mib} MiB and verifies it every pass; log: ${hog.logPath}`);
    await hog.waitForLine(/verify ok pass=3 /, 30_000);

    const at = ['--address', hosts.src.address, '--port', String(PORT)];
    const daemonArgs = ['lazy-pages', '--page-server', ...at, '--images-dir', dstImages];
    const restoreArgs = ['restore', '--images-dir', dstImages, '--lazy-pages', '--restore-detached', '--pidfile', pidfile];
    let daemon: HostCommand | undefined;
    let restorer: HostCommand | undefined;
    if (order === 'armed') {
      // The destination first: both commands start up and wait for the images, so Node's
      // start-up and restore's preparations are over before the freeze. The socket lives in
      // a work dir of its own: the images dir does not exist until the copy makes it.
      const armed = ['--work-dir', workDir, '--wait-images', '120'];
      say(`\n[dst]# mkdir ${workDir}`);
      await mkdir(workDir);
      say(`[dst]# ${['lazymig', ...daemonArgs, ...armed].join(' ')} &`);
      daemon = inHost(hosts, hosts.dst, 'dst lazy-pages', [...daemonArgs, ...armed]);
      children.push(daemon.child);
      say(`[dst]# ${['lazymig', ...restoreArgs, ...armed].join(' ')} &`);
      restorer = inHost(hosts, hosts.dst, 'dst restore', [...restoreArgs, ...armed]);
      children.push(restorer.child);
      await Promise.all([daemon.line(/waiting for the images/, 60_000), restorer.line(/waiting up to/, 60_000)]);
      mark('destination armed');
    }

    say(`\n[src]# lazymig dump --tree ${hog.pid} --images-dir ${srcImages} --lazy-pages ${at.join(' ')}`);
    mark('dump started');
    const dumper = inHost(hosts, hosts.src, 'src dump', ['dump', '--tree', String(hog.pid), '--images-dir', srcImages, '--lazy-pages', ...at]);
    children.push(dumper.child);
    // Copied the moment dump says they are written, as a script would.
    await dumper.line(/^images written to /, 60_000);
    mark('frozen, images written');

    say(`\n[src]# scp -r ${srcImages} dst:${dstImages}      (here: cp -r)`);
    const logBefore = (await readFile(hog.logPath, 'utf8')).length;
    await cp(srcImages, dstImages, { recursive: true });
    mark('images copied');

    if (order === 'criu') {
      say(`\n[dst]# lazymig ${daemonArgs.join(' ')} &`);
      daemon = inHost(hosts, hosts.dst, 'dst lazy-pages', daemonArgs);
      children.push(daemon.child);
      // No need to wait for the daemon: restore waits (up to 5 s) for its socket, so the two
      // start up side by side and the process is frozen for less time.
      say(`[dst]# lazymig ${restoreArgs.join(' ')}`);
      restorer = inHost(hosts, hosts.dst, 'dst restore', restoreArgs);
      children.push(restorer.child);
    }
    const rc = await restorer!.exited;
    if (rc !== 0) throw new Error(`restore failed (exit ${rc})`);
    mark('resumed on the destination');
    restoredPid = Number((await readFile(pidfile, 'utf8')).trim());
    say(`restored memhog runs as pid ${restoredPid}`);

    const [daemonRc, dumpRc] = await Promise.all([daemon!.exited, dumper.exited]);
    mark('all pages in, source gone');
    if (daemonRc !== 0) throw new Error(`lazy-pages exited ${daemonRc}`);
    if (dumpRc !== 0) throw new Error(`the source's page server exited ${dumpRc}`);

    const after = await waitForLogLine(hog.logPath, /verify ok pass=\d+ .*/, 30_000, { since: logBefore });
    mark('memhog verified its whole memory on the destination');
    say(`\nmemhog's own log around the migration:`);
    const log = (await readFile(hog.logPath, 'utf8')).split('\n');
    const cut = (await readFile(hog.logPath, 'utf8')).slice(0, logBefore).split('\n').length - 1;
    for (const l of log.slice(Math.max(0, cut - 3), cut)) say(`  before | ${l}`);
    for (const l of log.slice(cut, cut + 4)) if (l) say(`  after  | ${l}`);

    say('\ntimeline:');
    for (const s of steps) say(`  ${s.atMs.toFixed(0).padStart(7)} ms  ${s.name}`);
    const frozen = seen.get('tree frozen');
    const resumed = seen.get('tree resumed');
    const stall = /stall=([\d.]+)/.exec(after[0] ?? '');
    if (frozen !== undefined && resumed !== undefined) {
      say(`\ndowntime, from the source's freeze to the destination's resume: ${resumed - frozen} ms`);
    }
    if (stall) say(`longest stop memhog itself saw in its first pass after the migration: ${Number(stall[1]).toFixed(0)} ms`);
    return EXIT.ok;
  } catch (err) {
    if (interrupted) return 130;
    say(`demo failed: ${(err as Error).message}`);
    return EXIT.failed;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
    if (restoredPid) {
      try {
        process.kill(restoredPid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    hog?.kill();
    await hosts?.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

export const demoCommand: Command = {
  name: 'demo',
  summary: 'migrate a memhog between two network namespaces on this machine, and show the timeline',
  options: { mib: { type: 'string' }, 'criu-order': { type: 'boolean' } },
  optionHelp: {
    mib: 'memhog size in MiB (default 256)',
    'criu-order': "dump, copy, then lazy-pages and restore (default: the destination's commands first, waiting for the images)",
  },
  async run({ values }) {
    const mib = values.mib === undefined ? 256 : Number(values.mib);
    if (!Number.isInteger(mib) || mib < 1 || mib > 8192) throw new UsageError(`--mib must be 1..8192, got ${String(values.mib)}`);
    return runDemo(mib, values['criu-order'] === true ? 'criu' : 'armed');
  },
};
