/**
 * An images dir: inventory.img, and for each process core-<pid>.img, pagemap-<pid>.img and
 * pages-<pid>.img. Written into a hidden temporary sibling directory and renamed into place
 * once complete (inventory.img is the last file written), so a failed or interrupted dump never
 * leaves a directory at the target path, let alone one that looks valid.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc, closeSync, openSync, readFileSync, readdirSync, renameSync, rmdirSync, statSync, writeSync } from 'node:fs';
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { MAX_MSGPACK_FILE, checkMagic, decodeCoreFile, decodeInventoryFile, decodePagemapFile, frame, kindOfTag, withFile } from './codec.js';
import { asImageError, FieldError, ImageError } from './errors.js';
import { PagesReader, PagesWriter, readPagesInfo, type PagesVerify } from './pages.js';
import {
  FILE_NAMES, type CoreImage, type ImageSet, type Inventory, type Pagemap, type PagesFileInfo, type ProcessImage,
} from './types.js';
import {
  checkPagemapInPagesFile, checkPagemapInVmas, checkVmas, decodeCore, decodeInventory, normalizePagemap, pagemapToWire,
} from './validate.js';

export interface LoadedImages extends ImageSet {
  dir: string;
  /** header/footer-validated pages files, by pid */
  pages: Map<number, PagesFileInfo>;
}

export type ImageFile =
  | { kind: 'inventory'; path: string; inventory: Inventory }
  | { kind: 'core'; path: string; core: CoreImage }
  | { kind: 'pagemap'; path: string; pagemap: Pagemap }
  | { kind: 'pages'; path: string; pages: PagesFileInfo };

const IMAGE_NAME = /^(core|pagemap|pages)-(\d+)\.img$/;

/* ------------------------------------------------------------------ reading */

/**
 * Synchronous: msgpack image files are a few KiB, and the thread-pool round trips of an
 * async read (open, stat, read, close) cost more than the reads; a destination reads them
 * while the migrated tree is frozen, on a machine that is busy just then.
 */
function readSmallFile(path: string): Buffer {
  let size: number;
  try {
    size = statSync(path).size;
  } catch (err) {
    throw asImageError(path, err);
  }
  if (size > MAX_MSGPACK_FILE) throw new ImageError(path, `malformed: ${size} bytes, larger than any valid image file (${MAX_MSGPACK_FILE})`, 'malformed');
  try {
    return readFileSync(path);
  } catch (err) {
    throw asImageError(path, err);
  }
}

/** Read and fully validate one image file of any kind (for a pages file: header and footer). */
export async function readImageFile(path: string, opts: { verifyPages?: PagesVerify } = {}): Promise<ImageFile> {
  let head: Buffer;
  try {
    const fh = await open(path, 'r');
    try {
      head = Buffer.alloc(12);
      const { bytesRead } = await fh.read(head, 0, 12, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (err) {
    throw asImageError(path, err);
  }
  checkMagic(path, head);
  const kind = kindOfTag(head.subarray(4, 8).toString('latin1'));
  if (kind === 'pages') return { kind, path, pages: await readPagesInfo(path, { verify: opts.verifyPages ?? 'full' }) };
  const buf = readSmallFile(path);
  // an unknown kind is reported by the decoders (after the checksum)
  if (kind === 'pagemap') return { kind, path, pagemap: decodePagemapFile(path, buf) };
  if (kind === 'core') return { kind, path, core: decodeCoreFile(path, buf) };
  return { kind: 'inventory', path, inventory: decodeInventoryFile(path, buf) };
}

function layout(file: string, fn: () => void): void {
  try {
    fn();
  } catch (err) {
    if (err instanceof FieldError) throw new ImageError(file, err.message, 'layout', { cause: err });
    throw err;
  }
}

/** Cross-file consistency: processes vs tree, page sizes, pagemap vs VMAs and pages files. */
function checkSet(dir: string, set: ImageSet, pages: ReadonlyMap<number, PagesFileInfo>): void {
  const inv = set.inventory;
  const invFile = join(dir, FILE_NAMES.inventory);
  if (set.processes.length !== inv.tree.length)
    throw new ImageError(invFile, `the tree lists ${inv.tree.length} processes, ${set.processes.length} were given`, 'layout');
  inv.tree.forEach((t, i) => {
    const p = set.processes[i]!;
    const coreFile = join(dir, FILE_NAMES.core(t.pid));
    const pmFile = join(dir, FILE_NAMES.pagemap(t.pid));
    if (p.pid !== t.pid) throw new ImageError(invFile, `process ${i} is pid ${p.pid}, the tree lists pid ${t.pid} there`, 'layout');
    if (p.core.pid !== t.pid) throw new ImageError(coreFile, `holds pid ${p.core.pid}, expected ${t.pid}`, 'layout');
    if (p.pagemap.pid !== t.pid) throw new ImageError(pmFile, `holds pid ${p.pagemap.pid}, expected ${t.pid}`, 'layout');
    const tids = p.core.threads.map((th) => th.tid);
    if (tids.join(',') !== t.tids.join(','))
      throw new ImageError(coreFile, `threads [${tids.join(', ')}] differ from the inventory's tids [${t.tids.join(', ')}]`, 'layout');
    layout(coreFile, () => checkVmas(p.core.vmas, inv.pageSize));
    if (p.pagemap.pageSize !== inv.pageSize)
      throw new ImageError(pmFile, `page size ${p.pagemap.pageSize}, the inventory says ${inv.pageSize}`, 'layout');
    layout(pmFile, () => checkPagemapInVmas(p.pagemap, p.core.vmas));
    if (!inv.lazy) {
      const lazy = p.pagemap.entries.find((e) => e.kind === 'lazy');
      if (lazy) throw new ImageError(pmFile, `lazy range at 0x${lazy.start.toString(16)} in a dump that is not lazy`, 'layout');
    }
    const info = pages.get(t.pid);
    const pagesFile = join(dir, FILE_NAMES.pages(t.pid));
    if (!info) throw new ImageError(pagesFile, 'missing', 'missing');
    if (info.pid !== t.pid) throw new ImageError(pagesFile, `pages file of pid ${info.pid}, expected ${t.pid}`, 'layout');
    if (info.pageSize !== inv.pageSize) throw new ImageError(pagesFile, `page size ${info.pageSize}, the inventory says ${inv.pageSize}`, 'layout');
    layout(pmFile, () => checkPagemapInPagesFile(p.pagemap, info.pageCount));
  });
  const treePids = new Set(inv.tree.map((t) => t.pid));
  for (const pid of pages.keys()) {
    if (!treePids.has(pid)) throw new ImageError(join(dir, FILE_NAMES.pages(pid)), `pid ${pid} is not in the inventory's process tree`, 'layout');
  }
}

/**
 * The names in images dir `dir`, which must exist and hold an inventory: the first thing
 * readImages checks, for a caller that has to know before it starts anything else.
 */
export function imagesDirNames(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    throw asImageError(dir, err);
  }
  if (!names.includes(FILE_NAMES.inventory))
    throw new ImageError(join(dir, FILE_NAMES.inventory), `missing: ${dir} is not a complete images dir (no ${FILE_NAMES.inventory})`, 'missing');
  return names;
}

/**
 * Read and validate a whole images dir. Pages files are checked through their header and
 * footer ('footer', default; each page is then checked when read) or completely ('full').
 */
export async function readImages(dir: string, opts: { verifyPages?: PagesVerify } = {}): Promise<LoadedImages> {
  const invFile = join(dir, FILE_NAMES.inventory);
  const names = imagesDirNames(dir);
  const inventory = decodeInventoryFile(invFile, readSmallFile(invFile));
  const pids = new Set(inventory.tree.map((t) => t.pid));
  for (const name of names) {
    const m = IMAGE_NAME.exec(name);
    if (m && !pids.has(Number(m[2]))) throw new ImageError(join(dir, name), `pid ${m[2]} is not in the inventory's process tree`, 'layout');
  }
  const processes: ProcessImage[] = [];
  const pages = new Map<number, PagesFileInfo>();
  for (const t of inventory.tree) {
    const coreFile = join(dir, FILE_NAMES.core(t.pid));
    const pmFile = join(dir, FILE_NAMES.pagemap(t.pid));
    const pagesFile = join(dir, FILE_NAMES.pages(t.pid));
    const core = decodeCoreFile(coreFile, readSmallFile(coreFile));
    const pagemap = decodePagemapFile(pmFile, readSmallFile(pmFile));
    pages.set(t.pid, await readPagesInfo(pagesFile, { verify: opts.verifyPages ?? 'footer' }));
    processes.push({ pid: t.pid, core, pagemap });
  }
  const set: ImageSet = { inventory, processes };
  checkSet(dir, set, pages);
  return { dir, inventory, processes, pages };
}

/** Open the pages file of `pid` in loaded images, checked against its pagemap. */
export async function openPagesReader(images: LoadedImages, pid: number, opts: { verifyReads?: boolean } = {}): Promise<PagesReader> {
  const p = images.processes.find((x) => x.pid === pid);
  if (!p) throw new ImageError(images.dir, `pid ${pid} is not in the images`, 'missing');
  return PagesReader.open(join(images.dir, FILE_NAMES.pages(pid)), {
    pagemap: p.pagemap,
    pid,
    pageSize: images.inventory.pageSize,
    ...(opts.verifyReads === undefined ? {} : { verifyReads: opts.verifyReads }),
  });
}

/* ------------------------------------------------------------------ writing */

/**
 * Create `path` with `data`; not yet durable: see syncFile. Synchronous: the files are
 * small, and while a tree is frozen a thread-pool round trip per open, write and close
 * costs more than the writes themselves.
 */
function writeNew(path: string, data: Uint8Array, mode = 0o600): void {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'wx', mode);
    let done = 0;
    while (done < data.length) done += writeSync(fd, data, done, data.length - done, done);
  } catch (err) {
    throw asImageError(path, err);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** fsync a file written earlier (through another fd: fsync flushes the inode, whichever fd). */
async function syncFile(path: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(path, 'r');
    await fh.sync();
  } catch (err) {
    throw asImageError(path, err);
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

async function fsyncDir(path: string): Promise<void> {
  const fh = await open(path, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Synchronous, like the renames around it: a few cheap syscalls, in a frozen tree's downtime. */
function targetState(dir: string): 'absent' | 'empty' | 'images' | 'other' {
  try {
    const st = statSync(dir);
    if (!st.isDirectory()) return 'other';
    const names = readdirSync(dir);
    if (names.length === 0) return 'empty';
    return names.includes(FILE_NAMES.inventory) || names.some((n) => IMAGE_NAME.test(n)) ? 'images' : 'other';
  } catch (err) {
    if ((err as { code?: unknown }).code === 'ENOENT') return 'absent';
    throw asImageError(dir, err);
  }
}

export interface ImagesDirWriterOptions {
  /** replace an existing images dir at the target (default: refuse anything but an absent or empty dir) */
  overwrite?: boolean;
}

/**
 * Builds an images dir in a hidden temporary sibling of `dir`:
 *
 *   const w = await ImagesDirWriter.create(dir);
 *   const pw = await w.pages(pid, pageSize);            // stream pages in
 *   const entry = await pw.addRange(start, bytes);       // → a present PagemapEntry
 *   await w.commit(images);                              // validate, write, rename into place
 *
 * On any failure call `abort()` (commit does so itself): the temporary dir is removed and
 * nothing appears at `dir`.
 */
export class ImagesDirWriter {
  private readonly writers = new Map<number, PagesWriter>();
  /** Files written but not yet fsynced: commit syncs them all at once, before the rename. */
  private readonly unsynced: string[] = [];
  private done = false;
  /** commit() renamed the images into place (and retract() has not taken them back). */
  private committed = false;

  private constructor(
    readonly dir: string,
    readonly tmpDir: string,
    private readonly overwrite: boolean,
  ) {}

  static async create(dir: string, opts: ImagesDirWriterOptions = {}): Promise<ImagesDirWriter> {
    const state = targetState(dir);
    if (state === 'other') throw new ImageError(dir, 'exists and is not an empty directory or an images dir: refusing to replace it', 'exists');
    if (state === 'images' && !opts.overwrite) throw new ImageError(dir, 'an images dir already exists here (pass overwrite to replace it)', 'exists');
    const tmpDir = join(dirname(dir), `.${basename(dir)}.lazymig-tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await mkdir(tmpDir, { mode: 0o700 });
    } catch (err) {
      throw asImageError(tmpDir, err);
    }
    return new ImagesDirWriter(dir, tmpDir, opts.overwrite ?? false);
  }

  private live(): void {
    if (this.done) throw new ImageError(this.dir, 'images dir writer already committed or aborted', 'io');
  }

  /** The streaming pages writer of `pid` (created on first use). */
  async pages(pid: number, pageSize: number): Promise<PagesWriter> {
    this.live();
    const existing = this.writers.get(pid);
    if (existing) {
      if (existing.pageSize !== pageSize) throw new ImageError(existing.path, `page size ${pageSize}, it was opened with ${existing.pageSize}`, 'schema');
      return existing;
    }
    const w = await PagesWriter.create(join(this.tmpDir, FILE_NAMES.pages(pid)), { pid, pageSize });
    this.writers.set(pid, w);
    return w;
  }

  /** Add a non-image file to the dir (e.g. the page server's auth token). */
  async writeExtraFile(name: string, data: Uint8Array | string, mode = 0o600): Promise<void> {
    this.live();
    if (name !== basename(name) || name.startsWith('.') || name === FILE_NAMES.inventory || IMAGE_NAME.test(name))
      throw new ImageError(join(this.tmpDir, name), 'not a valid extra file name (reserved or not a plain name)', 'schema');
    const path = join(this.tmpDir, name);
    writeNew(path, typeof data === 'string' ? Buffer.from(data) : data, mode);
    this.unsynced.push(path);
  }

  /**
   * Removes the pages files opened for any pid not in `pids` (processes that exited between
   * the opening of their pages file and the freeze): a pages file outside the tree is refused.
   */
  async keepPagesOf(pids: readonly number[]): Promise<void> {
    this.live();
    const keep = new Set(pids);
    for (const [pid, w] of [...this.writers]) {
      if (keep.has(pid)) continue;
      this.writers.delete(pid);
      await w.abort();
    }
  }

  /**
   * Validate `images` against the pages written, write everything, and rename into place.
   * With `durable: false` nothing is fsynced: the images still appear whole or not at all
   * for anyone reading them while this machine runs, but may be lost or damaged by a crash
   * of it (see the lazy dump: images worthless without the source process).
   */
  async commit(images: ImageSet, opts: { onPhase?: (name: string) => void; durable?: boolean } = {}): Promise<LoadedImages> {
    this.live();
    const lap = opts.onPhase ?? (() => undefined);
    const durable = opts.durable ?? true;
    try {
      // errors name the final paths: that is what the user asked for
      const invFile = join(this.dir, FILE_NAMES.inventory);
      // 1. validate and normalise everything in memory before writing a byte of it
      const inventory = withFile(invFile, () => decodeInventory(images.inventory));
      if (!Array.isArray(images.processes)) throw new ImageError(invFile, 'processes must be an array', 'schema');
      const processes: ProcessImage[] = images.processes.map((p, i) => {
        const pid = inventory.tree[i]?.pid ?? (p as { pid?: unknown }).pid;
        const core = withFile(join(this.dir, FILE_NAMES.core(Number(pid))), () => decodeCore(p.core));
        const pagemap = withFile(join(this.dir, FILE_NAMES.pagemap(Number(pid))), () => normalizePagemap(p.pagemap));
        return { pid: p.pid, core, pagemap };
      });
      lap('commit-validate');
      // 2. finish the pages files (empty ones for processes without pages)
      const pages = new Map<number, PagesFileInfo>();
      const toSync = [...this.unsynced];
      for (const [pid, w] of this.writers) {
        pages.set(pid, await w.close({ sync: false }));
        toSync.push(w.path);
      }
      for (const t of inventory.tree) {
        if (!pages.has(t.pid)) {
          const w = await PagesWriter.create(join(this.tmpDir, FILE_NAMES.pages(t.pid)), { pid: t.pid, pageSize: inventory.pageSize });
          pages.set(t.pid, await w.close({ sync: false }));
          toSync.push(w.path);
        }
      }
      lap('commit-pages-close');
      const set: ImageSet = { inventory, processes };
      checkSet(this.dir, set, pages);
      lap('commit-validate');
      // 3. write core and pagemap files, the inventory last (framed as they are: validated in 1.)
      const writes: Array<[string, Uint8Array]> = [];
      for (const p of processes) {
        writes.push([join(this.tmpDir, FILE_NAMES.core(p.pid)), frame('core', p.core)]);
        writes.push([join(this.tmpDir, FILE_NAMES.pagemap(p.pid)), frame('pagemap', pagemapToWire(p.pagemap))]);
      }
      for (const [path, data] of writes) writeNew(path, data);
      const invPath = join(this.tmpDir, FILE_NAMES.inventory);
      writeNew(invPath, frame('inventory', inventory));
      toSync.push(...writes.map(([path]) => path), invPath);
      lap('commit-write');
      // 4. make everything durable before the rename: every file and the dir's entries, all
      // at once (concurrent fsyncs on one filesystem share journal commits). The order of
      // the files inside the dir does not matter: only the rename makes any of them visible.
      if (durable) {
        await settleAll([...toSync.map(syncFile), fsyncDir(this.tmpDir)]);
        lap('commit-fsync');
      }
      // 5. rename into place
      await this.install(durable);
      lap('commit-rename');
      this.done = true;
      this.committed = true;
      return { dir: this.dir, inventory, processes, pages: new Map([...pages].map(([pid, info]) => [pid, { ...info, path: join(this.dir, FILE_NAMES.pages(pid)) }])) };
    } catch (err) {
      await this.abort();
      throw asImageError(this.dir, err);
    }
  }

  private async install(durable: boolean): Promise<void> {
    const state = targetState(this.dir);
    if (state === 'other') throw new ImageError(this.dir, 'exists and is not an empty directory or an images dir: refusing to replace it', 'exists');
    if (state === 'images' && !this.overwrite) throw new ImageError(this.dir, 'an images dir already exists here (pass overwrite to replace it)', 'exists');
    if (state === 'images') {
      const old = join(dirname(this.dir), `.${basename(this.dir)}.lazymig-old-${process.pid}-${randomBytes(4).toString('hex')}`);
      renameSync(this.dir, old);
      try {
        renameSync(this.tmpDir, this.dir);
      } catch (err) {
        try {
          renameSync(old, this.dir);
        } catch {
          /* the old images stay under the hidden name; the error below says what failed */
        }
        throw err;
      }
      await rm(old, { recursive: true, force: true });
    } else {
      if (state === 'empty') {
        try {
          rmdirSync(this.dir); // rename(2) also replaces an empty dir; this keeps it explicit
        } catch {
          /* gone or filled meanwhile: the rename below says which */
        }
      }
      try {
        renameSync(this.tmpDir, this.dir);
      } catch (err) {
        const code = (err as { code?: unknown }).code;
        if (code === 'ENOTEMPTY' || code === 'EEXIST') throw new ImageError(this.dir, 'appeared while the dump was written: not replacing it', 'exists');
        throw err;
      }
    }
    if (durable) await fsyncDir(dirname(this.dir)).catch(() => undefined);
  }

  /**
   * Takes committed images back (a dump that failed after its commit, before anything used
   * them): renamed away first, so they disappear at once, then removed.
   */
  async retract(): Promise<void> {
    if (!this.committed) return this.abort();
    this.committed = false;
    const away = join(dirname(this.dir), `.${basename(this.dir)}.lazymig-retracted-${process.pid}-${randomBytes(4).toString('hex')}`);
    try {
      await rename(this.dir, away);
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ENOENT') return;
      throw asImageError(this.dir, err);
    }
    await rm(away, { recursive: true, force: true });
  }

  /** Remove the temporary dir and everything in it. Safe to call more than once. */
  async abort(): Promise<void> {
    if (this.done) return;
    this.done = true;
    for (const w of this.writers.values()) await w.abort().catch(() => undefined);
    await rm(this.tmpDir, { recursive: true, force: true });
  }
}

/** Promise.all that waits for every promise before rejecting (nothing may still run on abort). */
async function settleAll(ps: Array<Promise<unknown>>): Promise<void> {
  const rs = await Promise.allSettled(ps);
  const failed = rs.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

export type PagesData = Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

export interface WriteImagesOptions extends ImagesDirWriterOptions {
  /**
   * Page contents per pid, in pages-file order (present entries' offsets refer to it: the first
   * page written is at offset pageSize). A byte array, or chunks streamed from an (async) iterable.
   */
  pages?: ReadonlyMap<number, PagesData>;
  /** extra non-image files (name → contents), e.g. an auth token */
  extraFiles?: ReadonlyMap<string, Uint8Array | string>;
}

/** Write a complete images dir atomically (temporary dir + rename). */
export async function writeImages(dir: string, images: ImageSet, opts: WriteImagesOptions = {}): Promise<LoadedImages> {
  const w = await ImagesDirWriter.create(dir, opts.overwrite === undefined ? {} : { overwrite: opts.overwrite });
  try {
    const pageSize = images.inventory.pageSize;
    for (const [pid, data] of opts.pages ?? []) {
      const pw = await w.pages(pid, pageSize);
      if (data instanceof Uint8Array) {
        if (data.length > 0) await pw.write(data);
      } else {
        for await (const chunk of data) if (chunk.length > 0) await pw.write(chunk);
      }
    }
    for (const [name, data] of opts.extraFiles ?? []) await w.writeExtraFile(name, data);
  } catch (err) {
    await w.abort();
    throw asImageError(dir, err);
  }
  return w.commit(images);
}
