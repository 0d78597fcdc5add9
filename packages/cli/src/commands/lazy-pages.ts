import { resolve } from 'node:path';
import {
  clearCompletion, writeCompletion,
  ImagesPageSource, LazyPagesEngine, createLogger, lazyRanges, openPagesReader, readImages, serveControl,
  type LazySummary, type PageSource, type PagesReader,
} from '@lazymig/core-ts';
import { PageClient, readToken } from '@lazymig/pageserver';
import { Userfaultfd } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';
import { parsePort } from './parse.js';

export function lazySummaryLine(s: LazySummary): string {
  return (
    `all ${s.pagesTotal} lazy pages in (${mib(s.bytes)}) in ${s.totalMs.toFixed(0)} ms: ` +
    `${s.pagesByFault} by fault, ${s.pagesByPrefetch} by prefetch, ${s.pagesByBackground} by background, ` +
    `${s.zeroFaults} zero-page faults; fault service p50 ${s.faultServiceUs.p50.toFixed(0)} µs, p99 ${s.faultServiceUs.p99.toFixed(0)} µs`
  );
}

export const lazyPagesCommand: Command = {
  name: 'lazy-pages',
  summary: 'serve the memory of processes restored with --lazy-pages, from the page server or the images',
  options: {
    'page-server': { type: 'boolean' },
    address: { type: 'string' },
    port: { type: 'string' },
    'images-dir': { type: 'string', short: 'D' },
    'work-dir': { type: 'string', short: 'W' },
    json: { type: 'boolean' },
    'max-rate': { type: 'string' },
    'source-timeout': { type: 'string' },
  },
  optionHelp: {
    'page-server': 'fetch pages from the page server of the source (default: from the local images)',
    address: 'page server address (default: the one recorded by dump)',
    port: 'page server port (default: the one recorded by dump)',
    'images-dir': 'the images (default: the current directory)',
    'work-dir': 'where lazy-pages.socket is made (default: the images dir)',
    json: 'print the summary as JSON on stdout',
    'max-rate': 'cap background transfer at this many MiB/s (faults are never held back)',
    'source-timeout': 'seconds to keep trying to reach a lost page server before giving up (default 10)',
  },
  async run({ values }) {
    const imagesDir = resolve(typeof values['images-dir'] === 'string' ? values['images-dir'] : '.');
    const workDir = resolve(typeof values['work-dir'] === 'string' ? values['work-dir'] : imagesDir);
    const remote = values['page-server'] === true;
    if (!remote && (values.address !== undefined || values.port !== undefined)) throw new UsageError('--address and --port go with --page-server');
    const maxRate = values['max-rate'] === undefined ? undefined : Number(values['max-rate']);
    if (maxRate !== undefined && !(maxRate > 0)) throw new UsageError(`--max-rate must be a positive number of MiB/s, got ${String(values['max-rate'])}`);
    const sourceTimeout = values['source-timeout'] === undefined ? 10 : Number(values['source-timeout']);
    if (!(sourceTimeout >= 0)) throw new UsageError(`--source-timeout must be a number of seconds, got ${String(values['source-timeout'])}`);
    const log = createLogger('lazy-pages');
    const images = await readImages(imagesDir);
    const inv = images.inventory;

    let source: PageSource;
    let lost: Promise<Error> | null = null;
    if (remote) {
      const address = typeof values.address === 'string' ? values.address : inv.pageServer?.address;
      const port = typeof values.port === 'string' ? parsePort(values.port) : inv.pageServer?.port;
      if (address === undefined || port === undefined) throw new UsageError('--address and --port are needed: the images do not record a page server');
      const client = await PageClient.connect({ address, port, token: await readToken(imagesDir), log, retryForMs: sourceTimeout * 1000 });
      lost = client.lost;
      source = client;
      log.info('connected to the page server', { address, port });
    } else {
      const readers = new Map<number, PagesReader>();
      for (const p of images.processes) readers.set(p.pid, await openPagesReader(images, p.pid));
      source = new ImagesPageSource(readers);
    }

    const progress = new Progress();
    const engine = new LazyPagesEngine(source, {
      pageSize: inv.pageSize,
      log,
      ...(maxRate !== undefined ? { maxBackgroundRate: maxRate * 2 ** 20 } : {}),
      onProgress: (s) => progress.update(`lazy pages: ${s.pagesTotal - s.remaining}/${s.pagesTotal} in, ${s.faults} faults`),
    });
    const killAll = (why: string): void => {
      for (const pid of engine.pids) {
        log.error('killing restored process: its memory cannot arrive', { pid, why });
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    };
    const byPid = new Map(images.processes.map((p) => [p.pid, p]));
    const guards: Array<() => void> = [];
    const handedOver: number[] = [];
    clearCompletion(workDir);
    const control = serveControl(workDir, {
      onProcess: (pid, sourcePid, fd) => {
        const p = byPid.get(sourcePid);
        if (!p) throw new Error(`pid ${sourcePid} is not in the images at ${imagesDir}`);
        const ranges = lazyRanges(inv, p).filter((r) => (remote ? r.from === 'source' : r.from === 'images'));
        engine.add({ pid, sourcePid, uffd: Userfaultfd.adopt(fd), ranges });
        handedOver.push(pid);
      },
      onAllSent: (n) => {
        log.info('every process was handed over', { processes: n });
        engine.seal();
      },
      onGuard: (notify) => guards.push(notify),
      onAbandoned: (n) => {
        const err = new Error(`restore went away after handing over ${n} process(es) but before it finished`);
        killAll(err.message);
        void engine.abort(err);
      },
    });
    log.info('waiting for restore', { socket: `${workDir}/lazy-pages.socket` });
    engine.start();

    if (lost) {
      void lost.then(async (err) => {
        killAll(err.message);
        await engine.abort(err);
      });
    }
    try {
      const summary = await engine.done;
      writeCompletion(workDir, handedOver);
      for (const notify of guards) notify();
      progress.done();
      if (values.json) process.stdout.write(JSON.stringify(summary) + '\n');
      else process.stderr.write(lazySummaryLine(summary) + '\n');
      return EXIT.ok;
    } catch (err) {
      progress.done();
      killAll((err as Error).message);
      throw err;
    } finally {
      await control.close();
      await source.close();
    }
  },
};
