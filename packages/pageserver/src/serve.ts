/**
 * The two things a page server can serve: the frozen tree a lazy dump left behind, or the
 * pages of an images directory on disk.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  FrozenProcessReader, ImagesReader, TOKEN_FILE, lazyRanges, openPagesReader, silentLogger,
  type FrozenTree, type LoadedImages, type Logger, type PagesReader,
} from '@lazymig/core-ts';
import { LazyRanges } from './protocol/lazy-ranges.js';
import { PageServer, type CongestionChoice, type PageServerContent } from './server.js';

/**
 * The token of an images dir. Read synchronously (it is a few bytes): an armed destination
 * says hello the moment it is there, not after thread-pool round trips queued behind the
 * images being read.
 */
export async function readToken(imagesDir: string): Promise<string> {
  const path = join(imagesDir, TOKEN_FILE);
  try {
    // The newline is the token's end: a file still being copied is not taken for a short token.
    const m = /^([0-9a-f]{32,128})\n$/.exec(readFileSync(path, 'utf8'));
    if (!m) throw new Error('not a token (or not all of it yet)');
    return m[1]!;
  } catch (err) {
    throw new Error(`${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing (was the dump made with --lazy-pages?)' : (err as Error).message}`);
  }
}

function rangesOf(images: LoadedImages): LazyRanges {
  const all = images.processes.flatMap((p) => lazyRanges(images.inventory, p).map((r) => ({ pid: p.pid, start: r.start, pages: r.pages })));
  return new LazyRanges(all, images.inventory.pageSize);
}

export interface ServeFrozenOptions {
  images: LoadedImages;
  frozen: FrozenTree;
  token: string;
  address: string;
  port: number;
  /** As PageServerOptions.congestion. */
  congestion?: CongestionChoice | null;
  log?: Logger;
}

/** What a lazy dump's page server serves: the frozen tree's lazy pages; then it kills the tree. */
export function frozenTreeContent(images: LoadedImages, frozen: FrozenTree, log: Logger = silentLogger): PageServerContent {
  return {
    ranges: rangesOf(images),
    reader: new FrozenProcessReader(),
    onComplete: () => {
      log.info('killing the source tree: the destination holds every page', { root: frozen.root });
      frozen.sendKill();
    },
    // Reaping waits for the kernel to free the tree's memory: the destination has its
    // answer (the tree is SIGKILLed and never runs again) without waiting for that.
    afterBye: () => frozen.kill(),
  };
}

/** Serves a lazy dump's frozen tree until the destination holds every page, then kills the tree. */
export async function serveFrozenTree(o: ServeFrozenOptions): Promise<PageServer> {
  const log = o.log ?? silentLogger;
  return PageServer.listen({
    address: o.address,
    port: o.port,
    token: o.token,
    pageSize: o.images.inventory.pageSize,
    content: frozenTreeContent(o.images, o.frozen, log),
    streamBackground: true,
    ...(o.congestion !== undefined ? { congestion: o.congestion } : {}),
    log,
  });
}

export interface ServeImagesOptions {
  images: LoadedImages;
  address: string;
  port: number;
  /** As PageServerOptions.congestion. */
  congestion?: CongestionChoice | null;
  log?: Logger;
}

/**
 * Serves the pages of an images dir (`lazymig page-server`). Uses the dir's token, or
 * makes one (mode 0600) for an eager dump that has none: copy it along with the images.
 */
export async function serveImages(o: ServeImagesOptions): Promise<{ server: PageServer; close: () => Promise<void> }> {
  let token: string;
  try {
    token = await readToken(o.images.dir);
  } catch {
    token = randomBytes(32).toString('hex');
    await writeFile(join(o.images.dir, TOKEN_FILE), token + '\n', { mode: 0o600, flag: 'wx' });
  }
  const readers = new Map<number, PagesReader>();
  for (const p of o.images.processes) readers.set(p.pid, await openPagesReader(o.images, p.pid));
  const server = await PageServer.listen({
    address: o.address,
    port: o.port,
    token,
    pageSize: o.images.inventory.pageSize,
    content: { ranges: rangesOf(o.images), reader: new ImagesReader(readers), onComplete: () => undefined },
    ...(o.congestion !== undefined ? { congestion: o.congestion } : {}),
    log: o.log ?? silentLogger,
  });
  return {
    server,
    close: async () => {
      await server.close();
      for (const r of readers.values()) await r.close();
    },
  };
}
