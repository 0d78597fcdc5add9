import { dump, type DumpResult } from '@lazymig/core-ts';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, plural, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';
import { parsePid, parsePort } from './parse.js';

export function dumpSummary(r: DumpResult): string {
  const p = r.pages;
  return (
    `dumped ${plural(r.processes, 'process')}, ${plural(r.threads, 'thread')}: ` +
    `${p.present} pages in images (${mib(p.present * PAGE_SIZE)}), ${p.lazy} lazy, ${p.zero} zero; ` +
    `freeze ${r.freezeMs.toFixed(1)} ms, frozen ${r.frozenMs.toFixed(0)} ms`
  );
}

export const dumpCommand: Command = {
  name: 'dump',
  summary: 'freeze a process tree and write its images',
  options: {
    tree: { type: 'string', short: 't' },
    'images-dir': { type: 'string', short: 'D' },
    'leave-running': { type: 'boolean', short: 'R' },
    'lazy-pages': { type: 'boolean' },
    address: { type: 'string' },
    port: { type: 'string' },
  },
  optionHelp: {
    tree: 'pid of the root of the tree to dump (required)',
    'images-dir': 'directory to write the images to; must not exist or be empty (required)',
    'leave-running': 'let the tree run on after the dump (default: kill it)',
    'lazy-pages': 'leave anonymous memory on the source, to be served by the page server',
    address: 'with --lazy-pages: address the page server listens on',
    port: 'with --lazy-pages: port the page server listens on',
  },
  async run({ values }) {
    if (typeof values.tree !== 'string') throw new UsageError('--tree <pid> is required');
    if (typeof values['images-dir'] !== 'string') throw new UsageError('--images-dir <dir> is required');
    const pid = parsePid(values.tree);
    const lazy = values['lazy-pages'] === true;
    if (lazy && values['leave-running']) throw new UsageError('--lazy-pages and --leave-running exclude each other');
    if (!lazy && (values.address !== undefined || values.port !== undefined))
      throw new UsageError('--address and --port go with --lazy-pages');
    if (lazy) throw new Error('--lazy-pages needs the page server, which this build does not have yet');

    const progress = new Progress();
    const result = await dump({
      pid,
      imagesDir: values['images-dir'],
      mode: values['leave-running'] ? 'leave-running' : 'kill',
      onProgress: (p) => {
        if (p.phase === 'pages') progress.update(`pid ${p.pid}: ${mib(p.bytes)} of pages written`);
      },
    });
    progress.done();
    process.stderr.write(dumpSummary(result) + '\n');
    return EXIT.ok;
  },
};
