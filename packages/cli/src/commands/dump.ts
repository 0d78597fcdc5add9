import { randomBytes } from 'node:crypto';
import { DEFAULT_CHUNK_PAGES, createLogger, dump, niced, type DumpResult } from '@lazymig/core-ts';
import { frozenTreeContent, PageServer, warmPageTransport } from '@lazymig/pageserver';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, phaseFields, plural, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';
import { CONGESTION_HELP, parseCongestion, parsePid, parsePort } from './parse.js';

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
    'tcp-congestion': { type: 'string' },
  },
  optionHelp: {
    tree: 'pid of the root of the tree to dump (required)',
    'images-dir': 'directory to write the images to; must not exist or be empty (required)',
    'leave-running': 'let the tree run on after the dump (default: kill it)',
    'lazy-pages': 'leave anonymous memory on the source, to be served by the page server',
    address: 'with --lazy-pages: address the page server listens on',
    port: 'with --lazy-pages: port the page server listens on',
    'tcp-congestion': `with --lazy-pages: ${CONGESTION_HELP}`,
  },
  async run({ values }) {
    if (typeof values.tree !== 'string') throw new UsageError('--tree <pid> is required');
    if (typeof values['images-dir'] !== 'string') throw new UsageError('--images-dir <dir> is required');
    const pid = parsePid(values.tree);
    const lazy = values['lazy-pages'] === true;
    if (lazy && values['leave-running']) throw new UsageError('--lazy-pages and --leave-running exclude each other');
    if (!lazy && (values.address !== undefined || values.port !== undefined || values['tcp-congestion'] !== undefined))
      throw new UsageError('--address, --port and --tcp-congestion go with --lazy-pages');
    let at: { address: string; port: number } | undefined;
    let server: PageServer | undefined;
    const token = randomBytes(32).toString('hex');
    if (lazy) {
      if (typeof values.address !== 'string' || typeof values.port !== 'string') throw new UsageError('--lazy-pages needs --address and --port');
      at = { address: values.address, port: parsePort(values.port) };
      const congestion = parseCongestion(values['tcp-congestion']);
      // Listening before the freeze: a page server that cannot listen fails the dump before
      // anything is frozen, and its set-up is not downtime. It welcomes nobody until open().
      server = await PageServer.listen({
        ...at, token, pageSize: PAGE_SIZE, streamBackground: true, ...(congestion !== undefined ? { congestion } : {}), log: createLogger('page-server'),
      });
      await server.selfCheck();
      // The first request the destination sends once its process runs should not also be the
      // first run of the page server's code: one page through a throwaway server and client
      // first (below the workload, which still runs). The dump rehearses its own part. And
      // the frames of the first background replies are faulted in now.
      const s = server;
      await niced(async () => {
        await warmPageTransport(PAGE_SIZE);
        s.prefill(DEFAULT_CHUNK_PAGES);
      }).catch(() => undefined);
    }

    const progress = new Progress();
    let result: DumpResult;
    try {
      result = await dump({
        pid,
        imagesDir: values['images-dir'],
        mode: lazy ? 'lazy' : values['leave-running'] ? 'leave-running' : 'kill',
        ...(at ? { pageServer: at, token } : {}),
        onProgress: (p) => {
          if (p.phase === 'pages') progress.update(`pid ${p.pid}: ${mib(p.bytes)} of pages written`);
          // For scripts: the images can be copied from here on (a lazy dump then checks them
          // before its page server welcomes anyone).
          else if (p.phase === 'written') {
            progress.done();
            process.stderr.write(`images written to ${p.dir}\n`);
          }
          // Timestamped: the start of the downtime, for benchmarks and post-mortems.
          else if (p.phase === 'frozen') createLogger('dump').info('tree frozen', { root: pid, processes: p.processes, threads: p.threads, freezeMs: +p.freezeMs.toFixed(2) });
        },
      });
    } catch (err) {
      await server?.close();
      throw err;
    }
    progress.done();
    createLogger('dump').debug('where the time went', phaseFields(result.phaseMs));
    process.stderr.write(dumpSummary(result) + '\n');
    if (!server || !at || !result.frozen) return EXIT.ok;
    server.open(frozenTreeContent(result.images, result.frozen, createLogger('page-server')));
    return servePages(result, server, at);
  },
};

/** A lazy dump goes on as the page server until the destination holds every page. */
async function servePages(result: DumpResult, server: PageServer, at: { address: string; port: number }): Promise<number> {
  const frozen = result.frozen!;
  process.stderr.write(`page server listening on ${at.address}:${at.port}; the tree stays frozen until the destination has every page\n`);
  const interrupted = new Promise<string>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.once(sig, () => resolve(sig));
  });
  const how = await Promise.race([server.done.then(() => 'done'), interrupted]);
  await server.close();
  if (how === 'done') {
    process.stderr.write(`migration complete: ${server.stats.pagesSent} pages served in ${server.stats.requests} requests; source tree killed\n`);
    return EXIT.ok;
  }
  if (server.stats.sessions === 0) {
    frozen.resume();
    process.stderr.write(`${how}: no destination ever connected; the tree runs on here\n`);
  } else {
    // A copy may be running on the destination: never resume this one.
    frozen.leaveStopped();
    process.stderr.write(`${how}: a destination connected, so the tree is left stopped (SIGSTOP): kill it, or 'kill -CONT' it if the copy is gone\n`);
  }
  return EXIT.failed;
}
