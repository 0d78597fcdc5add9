import { resolve } from 'node:path';
import {
  awaitImages, clearCompletion, writeCompletion, whenComplete,
  DEFAULT_CHUNK_PAGES, DEFAULT_MAX_WINDOW, ImagesPageSource, LazyPagesEngine, createLogger, lazyRanges, openPagesReader, readImages, serveControl,
  type LazySummary, type LoadedImages, type ServiceTimes, type Logger, type PageSource, type PagesReader, type ProcessImage,
} from '@lazymig/core-ts';
import { PageClient, readToken, warmPageTransport } from '@lazymig/pageserver';
import { PAGE_SIZE, Userfaultfd } from '@lazymig/uffd-rs';
import type { Command } from '../command.js';
import { mib, Progress } from '../ui/progress.js';
import { EXIT, UsageError } from '../usage-error.js';
import { parsePort, parseSeconds } from './parse.js';

function times(t: ServiceTimes): string {
  return `p50 ${t.p50.toFixed(0)} µs, p99 ${t.p99.toFixed(0)} µs`;
}

export function lazySummaryLine(s: LazySummary): string {
  // With no fault served there is no service time: a "p50 0 µs" would read as a measurement.
  let service = s.faultServiceUs.count > 0 ? `fault service ${times(s.faultServiceUs)}` : 'no fault served';
  // Waits for pages on their way and the rest are apart: when the waits are most of the
  // faults (a link slower than the workload), the overall p50 is one of them.
  if (s.waitedServiceUs.count > 0) {
    service += ` (${s.waitedServiceUs.count} waited for pages already on their way: ${times(s.waitedServiceUs)}; the other ${s.otherServiceUs.count}: ${times(s.otherServiceUs)})`;
  }
  return (
    `all ${s.pagesTotal} lazy pages in (${mib(s.bytes)}) in ${s.totalMs.toFixed(0)} ms: ` +
    `${s.pagesByFault} by fault, ${s.pagesByPrefetch} by prefetch, ${s.pagesByBackground} by background, ` +
    `${s.zeroFaults} zero-page faults; ${s.faults} faults; ${service}; cpu ${s.cpuMs.toFixed(0)} ms`
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
    'wait-images': { type: 'string' },
  },
  optionHelp: {
    'page-server': 'fetch pages from the page server of the source (default: from the local images)',
    address: 'page server address (default: the one recorded by dump)',
    port: 'page server port (default: the one recorded by dump)',
    'images-dir': 'the images (default: the current directory)',
    'work-dir': 'where lazy-pages.socket is made (default: the images dir)',
    json: 'print the summary as JSON on stdout',
    'max-rate': 'cap background transfer at this many MiB/s (faults are never held back)',
    'source-timeout': 'seconds to keep trying to reach the page server (at start, or once lost) before giving up (default 10)',
    'wait-images': 'seconds to wait for images still being copied into the images dir (see restore --wait-images)',
  },
  async run({ values }) {
    const imagesDir = resolve(typeof values['images-dir'] === 'string' ? values['images-dir'] : '.');
    const workDir = resolve(typeof values['work-dir'] === 'string' ? values['work-dir'] : imagesDir);
    const remote = values['page-server'] === true;
    if (!remote && (values.address !== undefined || values.port !== undefined)) throw new UsageError('--address and --port go with --page-server');
    const maxRate = values['max-rate'] === undefined ? undefined : Number(values['max-rate']);
    if (maxRate !== undefined && !(maxRate > 0)) throw new UsageError(`--max-rate must be a positive number of MiB/s, got ${String(values['max-rate'])}`);
    const sourceTimeout = values['source-timeout'] === undefined ? 10 : parseSeconds('--source-timeout', values['source-timeout']);
    const waitImages = values['wait-images'] === undefined ? undefined : parseSeconds('--wait-images', values['wait-images']);
    const address = typeof values.address === 'string' ? values.address : undefined;
    const port = typeof values.port === 'string' ? parsePort(values.port) : undefined;
    const log = createLogger('lazy-pages');
    const progress = new Progress();

    // The socket comes first: a restore started alongside connects at once, and its
    // hand-overs wait until the images are read and the page server answers.
    let ready!: Promise<Daemon>;
    let daemon: Daemon | null = null;
    const guards: Array<() => void> = [];
    const handedOver: number[] = [];
    const killAll = (why: string): void => {
      for (const pid of daemon?.engine.pids ?? []) {
        log.error('killing restored process: its memory cannot arrive', { pid, why });
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    };
    clearCompletion(workDir);
    const control = serveControl(workDir, {
      onProcess: async (pid, sourcePid, fd) => {
        const d = await ready;
        const p = d.byPid.get(sourcePid);
        if (!p) throw new Error(`pid ${sourcePid} is not in the images at ${imagesDir}`);
        const ranges = lazyRanges(d.images.inventory, p).filter((r) => (remote ? r.from === 'source' : r.from === 'images'));
        d.engine.add({ pid, sourcePid, uffd: Userfaultfd.adopt(fd), ranges });
        handedOver.push(pid);
      },
      onAllSent: (n) => {
        log.info('every process was handed over', { processes: n });
        daemon?.engine.seal();
      },
      onGuard: (notify) => guards.push(notify),
      onAbandoned: (n) => {
        const err = new Error(`restore went away after handing over ${n} process(es) but before it finished`);
        killAll(err.message);
        void daemon?.engine.abort(err);
      },
    });
    log.info('waiting for restore', { socket: `${workDir}/lazy-pages.socket` });
    try {
      ready = prepare({ imagesDir, remote, address, port, sourceTimeout, waitImages, maxRate, log, progress });
      daemon = await ready;
      const d = daemon;
      if (d.lost) {
        void d.lost.then(async (err) => {
          killAll(err.message);
          await d.engine.abort(err);
        });
      }
      try {
        const summary = await d.engine.done;
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
      }
    } finally {
      await control.close();
      await daemon?.source.close();
    }
  },
};

interface Daemon {
  images: LoadedImages;
  byPid: Map<number, ProcessImage>;
  source: PageSource;
  /** resolves if the page server is lost for good */
  lost: Promise<Error> | null;
  engine: LazyPagesEngine;
}

interface PrepareOptions {
  imagesDir: string;
  remote: boolean;
  address: string | undefined;
  port: number | undefined;
  sourceTimeout: number;
  waitImages: number | undefined;
  maxRate: number | undefined;
  log: Logger;
  progress: Progress;
}

/** The images (waiting for them with --wait-images), the page source, and the engine. */
async function prepare(o: PrepareOptions): Promise<Daemon> {
  // With --wait-images, each read is retried until its files have arrived and check out.
  const timeoutMs = (o.waitImages ?? 0) * 1000;
  const connect = async (address: string, port: number): Promise<PageClient> => {
    const read = (): Promise<string> => readToken(o.imagesDir);
    // Connected while the token is on its way: only the hello waits for it.
    const token = o.waitImages === undefined ? read() : whenComplete(o.imagesDir, read, { timeoutMs });
    token.catch(() => undefined); // PageClient.connect fails with it
    // Replies are installed as they arrive, on each connection's own threads.
    const client = await PageClient.connect({
      address, port, token, log: o.log, retryForMs: o.sourceTimeout * 1000,
      installBackground: true, maxBackgroundPages: DEFAULT_CHUNK_PAGES, installFaults: true, maxFaultPages: DEFAULT_MAX_WINDOW,
    });
    o.log.info('connected to the page server', { address, port });
    return client;
  };
  // Told where the page server is, the connection needs only the token: it is made while
  // the rest of the images arrive and are checked.
  const early = o.remote && o.address !== undefined && o.port !== undefined ? connect(o.address, o.port) : null;
  early?.catch(() => undefined); // awaited below
  let images: LoadedImages;
  try {
    images =
      o.waitImages === undefined
        ? await readImages(o.imagesDir)
        : await awaitImages(o.imagesDir, {
            timeoutMs,
            onWaiting: (why) => o.log.info('waiting for the images', { dir: o.imagesDir, why }),
            ...(o.remote
              ? {
                  // No reply comes through the pool: both lanes' receivers read into buffers of
                  // their own, made when they take their connections over.
                  warmUp: () => warmPageTransport(PAGE_SIZE),
                }
              : {}),
          });
  } catch (err) {
    void early?.then((c) => c.close(), () => undefined);
    throw err;
  }
  const inv = images.inventory;
  if (o.waitImages !== undefined) o.log.debug('the images are in', { dir: o.imagesDir, processes: images.processes.length });
  let source: PageSource;
  let lost: Promise<Error> | null = null;
  if (o.remote) {
    const address = o.address ?? inv.pageServer?.address;
    const port = o.port ?? inv.pageServer?.port;
    if (address === undefined || port === undefined) throw new UsageError('--address and --port are needed: the images do not record a page server');
    const client = await (early ?? connect(address, port));
    lost = client.lost;
    source = client;
  } else {
    const readers = new Map<number, PagesReader>();
    for (const p of images.processes) readers.set(p.pid, await openPagesReader(images, p.pid));
    source = new ImagesPageSource(readers);
  }
  const engine = new LazyPagesEngine(source, {
    pageSize: inv.pageSize,
    log: o.log,
    ...(o.maxRate !== undefined ? { maxBackgroundRate: o.maxRate * 2 ** 20 } : {}),
    onProgress: (s) => {
      if (s.pagesTotal > 0) o.progress.update(`lazy pages: ${s.pagesTotal - s.remaining}/${s.pagesTotal} in, ${s.faults} faults`);
    },
  });
  engine.start();
  return { images, byPid: new Map(images.processes.map((p) => [p.pid, p])), source, lost, engine };
}
