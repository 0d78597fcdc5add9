import { writeFileSync } from 'node:fs';
import { restore, type RestoreResult } from '@lazymig/core-ts';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, plural, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';

export function restoreSummary(r: RestoreResult): string {
  const p = r.pages;
  return (
    `restored ${plural(r.processes, 'process')}, ${plural(r.threads, 'thread')} (root pid ${r.rootPid}): ` +
    `${p.present} pages written (${mib(p.present * PAGE_SIZE)}), ${p.lazy} lazy, ${p.zero} zero; ` +
    `${r.injectedSyscalls} injected syscalls; ${r.ms.toFixed(1)} ms` +
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
  },
  optionHelp: {
    'images-dir': 'directory holding the images (required)',
    'restore-detached': 'return once the tree runs (default: wait for the root and exit with its status)',
    pidfile: "write the restored root's pid to this file",
    'shell-job': "give the images' terminal fds this restore's terminal, and keep the tree in this session",
    'work-dir': 'directory for the lazy-pages socket (default: the images dir)',
    'lazy-pages': 'leave lazy pages to the lazy-pages daemon (a userfaultfd)',
  },
  async run({ values }) {
    if (typeof values['images-dir'] !== 'string') throw new UsageError('--images-dir <dir> is required');
    if (values['lazy-pages']) throw new Error('--lazy-pages needs the lazy-pages daemon, which this build does not have yet');
    if (values['work-dir'] !== undefined && !values['lazy-pages']) throw new UsageError('--work-dir goes with --lazy-pages');
    const detached = values['restore-detached'] === true;

    const progress = new Progress();
    let total = 0;
    const result = await restore({
      imagesDir: values['images-dir'],
      shellJob: values['shell-job'] === true,
      onProgress: (p) => {
        if (p.phase === 'checked') total = p.presentPages * PAGE_SIZE;
        else if (p.phase === 'pages' && total >= 64 << 20)
          progress.update(`pid ${p.pid}: ${mib(p.bytes)} of ${mib(p.totalBytes)} written`);
      },
      onWarning: (m) => process.stderr.write(`lazymig restore: warning: ${m}\n`),
    });
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
