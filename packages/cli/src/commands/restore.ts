import { writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { attachUserfaultfd, ControlClient, createLogger, imagesDirNames, restore, startGuard, type LazyHook, type RestoreResult } from '@lazymig/core-ts';
import { closeFd, pidfdOpen } from '@lazymig/uffd-rs';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, phaseFields, plural, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';
import { parseSeconds } from './parse.js';

export function restoreSummary(r: RestoreResult): string {
  const p = r.pages;
  const dumpedRoot = r.pids.keys().next().value;
  const ns = r.pidNs ? `; in a new pid namespace with the dumped pids, root ${dumpedRoot} there, its init is pid ${r.pidNs.initPid}` : '';
  return (
    `restored ${plural(r.processes, 'process')}, ${plural(r.threads, 'thread')} (root pid ${r.rootPid}${ns}): ` +
    `${p.present} pages written (${mib(p.present * PAGE_SIZE)}), ${p.lazy} lazy, ${p.zero} zero; ` +
    `${r.injectedSyscalls} injected syscalls in ${r.injectionTrips} trips; ${r.ms.toFixed(1)} ms` +
    (r.pinnedCpu !== null ? ` (rebuilt on CPU ${r.pinnedCpu})` : '')
  );
}

export const restoreCommand: Command = {
  name: 'restore',
  summary: 'rebuild a process tree from its images',
  options: {
    'images-dir': { type: 'string', short: 'D' },
    'restore-detached': { type: 'boolean', short: 'd' },
    pidfile: { type: 'string' },
    'shell-job': { type: 'boolean', short: 'j' },
    'work-dir': { type: 'string', short: 'W' },
    'lazy-pages': { type: 'boolean' },
    'pid-ns': { type: 'boolean' },
    'wait-images': { type: 'string' },
  },
  optionHelp: {
    'images-dir': 'directory holding the images (required)',
    'restore-detached': 'return once the tree runs (default: wait for the root and exit with its status)',
    pidfile: "write the restored root's pid to this file (with --pid-ns: its pid as seen from here, not the dumped one it has inside)",
    'shell-job': "give the images' terminal fds this restore's terminal, and keep the tree in this session",
    'work-dir': 'directory for the lazy-pages socket (default: the images dir)',
    'lazy-pages': 'leave lazy pages to the lazy-pages daemon through a userfaultfd (waits up to 5 s for its socket)',
    'wait-images':
      'seconds to wait for images still being copied into the images dir (default: none, they must be complete). ' +
      'Start restore (and lazy-pages) before the dump with this, and their start-up is not part of the downtime',
    'pid-ns': "restore into a new pid namespace in which every process and thread has its dumped pid/tid (its pid 1 is lazymig's init: a dumped pid 1 is refused)",
  },
  async run({ values }) {
    if (typeof values['images-dir'] !== 'string') throw new UsageError('--images-dir <dir> is required');
    if (values['work-dir'] !== undefined && !values['lazy-pages']) throw new UsageError('--work-dir goes with --lazy-pages');
    const detached = values['restore-detached'] === true;
    const waitImages = values['wait-images'] === undefined ? undefined : parseSeconds('--wait-images', values['wait-images']);
    // Without --wait-images, images that are not there are the error, not a daemon that
    // may be waiting on them too (the handover waits up to 5 s for its socket).
    if (waitImages === undefined) imagesDirNames(values['images-dir']);
    const lazy = values['lazy-pages'] === true ? new LazyHandover(resolve(typeof values['work-dir'] === 'string' ? values['work-dir'] : values['images-dir'])) : null;

    const progress = new Progress();
    let total = 0;
    let result: RestoreResult;
    try {
      result = await restore({
        imagesDir: values['images-dir'],
        shellJob: values['shell-job'] === true,
        pidNs: values['pid-ns'] === true,
        ...(waitImages !== undefined ? { awaitImagesMs: waitImages * 1000 } : {}),
        onProgress: (p) => {
          if (p.phase === 'waiting') process.stderr.write(`lazymig restore: waiting up to ${waitImages} s for the images in ${values['images-dir']} (${p.reason})\n`);
          else if (p.phase === 'checked') total = p.presentPages * PAGE_SIZE;
          else if (p.phase === 'pages' && total >= 64 << 20)
            progress.update(`pid ${p.pid}: ${mib(p.bytes)} of ${mib(p.totalBytes)} written`);
        },
        onWarning: (m) => process.stderr.write(`lazymig restore: warning: ${m}\n`),
        ...(lazy ? { lazy: lazy.hook } : {}),
      });
      // Timestamped: the end of the downtime (every process runs), for benchmarks and post-mortems.
      const log = createLogger('restore');
      log.info('tree resumed', { root: result.rootPid, processes: result.processes, ms: +result.ms.toFixed(1) });
      log.debug('where the time went', phaseFields(result.phaseMs));
      lazy?.finish(result);
    } finally {
      lazy?.close();
    }
    progress.done();
    if (typeof values.pidfile === 'string') writeFileSync(values.pidfile, `${result.rootPid}\n`);
    process.stderr.write(restoreSummary(result) + '\n');
    if (detached) {
      result.detach();
      return EXIT.ok;
    }
    const end = await result.exited;
    if (end.code !== null) return end.code;
    if (end.signal !== null) {
      process.stderr.write(`lazymig restore: pid ${result.rootPid} was killed by signal ${end.signal}\n`);
      return 128 + end.signal;
    }
    process.stderr.write(`lazymig restore: lost track of pid ${result.rootPid}\n`);
    return EXIT.failed;
  },
};

/**
 * Hands each process's userfaultfd to the lazy-pages daemon before the process resumes,
 * then leaves a guard holding copies of them: if the daemon dies before every page is in,
 * the guard kills the processes rather than let their missing pages read as zeros.
 */
class LazyHandover {
  readonly #client: ControlClient;
  readonly #uffds: number[] = [];
  readonly #pids: number[] = [];
  /** Opened while each process is ours and stopped: the guard signals through them, never by a pid that may be reused. */
  readonly #pidfds: number[] = [];

  constructor(readonly workDir: string) {
    this.#client = ControlClient.connect(workDir);
  }

  readonly hook: LazyHook = (t) => {
    const fd = attachUserfaultfd(t.process, t.vmas);
    this.#uffds.push(fd);
    this.#pids.push(t.pid);
    this.#pidfds.push(pidfdOpen(t.pid));
    this.#client.sendProcess(t.pid, t.dumpedPid, fd);
  };

  /** Every process runs: tell the daemon, and hand our uffd copies to the guard. */
  finish(_r: RestoreResult): void {
    this.#client.allSent(this.#pids.length);
    if (this.#pids.length > 0) startGuard(this.workDir, this.#pids, this.#pidfds, this.#uffds);
  }

  close(): void {
    for (const fd of [...this.#uffds.splice(0), ...this.#pidfds.splice(0)]) closeFd(fd);
    this.#client.close();
  }
}
