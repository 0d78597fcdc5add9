/**
 * The pages file (pages-<pid>.img): raw page contents, readable with one pread per range.
 *
 *   [0, P)                 header page (P = page size):
 *                            0 "LZMG", 4 "PAGE", 8 u16 version, 10 u16 reserved (0),
 *                            12 u32 page size, 16 u32 pid, the rest zero
 *   [P, P + n·P)           n data pages; page i is at byte offset P·(1 + i)
 *   [P + n·P, +4n)         CRC32C of each data page, u32 LE, in order
 *   last 16 bytes          trailer: 0 "PEND", 4 u32 n, 8 u32 fileCrc, 12 u32 footerCrc
 *
 * fileCrc   = CRC32C of every byte before it (header page, data, CRC table, "PEND", n): the
 *             whole-file checksum, checked by a full verify (streams the file once).
 * footerCrc = CRC32C(header page ‖ CRC table ‖ trailer[0..12)), the last 4 bytes of the file:
 *             checked whenever the file is opened (cheap: no data page is read). It covers every
 *             byte that is not page data, and through the CRC table every page, which is checked
 *             against its own CRC whenever it is read.
 * All integers little endian.
 */
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { pageAlignedBuffer } from '../host/page-aligned.js';
import { checkKindVersion, checkMagic } from './codec.js';
import { crc32c, crc32cPages, crc32cUpdate } from './crc32c.js';
import { asImageError, FieldError, ImageError } from './errors.js';
import { FORMAT_VERSION, type Pagemap, type PagemapEntry, type PagesFileInfo, type PresentRange } from './types.js';
import { checkPagemapInPagesFile } from './validate.js';

export const PAGES_TRAILER_SIZE = 16;
/**
 * PagesWriter starts writeback to disk in the background after this many bytes (an fdatasync
 * nobody waits for; measured on a 1 GiB eager dump: the final fsync went from ~500 ms to ~2 ms
 * and the dump got 0.3-0.7 s shorter). 0 turns it off.
 */
export const DEFAULT_WRITEBACK_BYTES = 64 << 20;
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
const TRAILER_MAGIC = Buffer.from('PEND', 'latin1');
/** Largest number of pages in one pages file (u32 count). */
export const MAX_PAGES = 0xffffffff;

function hex(n: number): string {
  return '0x' + n.toString(16);
}

function validPageSize(n: number): boolean {
  return n >= 4096 && n <= 1 << 30 && (n & (n - 1)) === 0;
}

function headerPage(pid: number, pageSize: number): Buffer {
  const h = Buffer.alloc(pageSize);
  h.write('LZMG', 0, 'latin1');
  h.write('PAGE', 4, 'latin1');
  h.writeUInt16LE(FORMAT_VERSION, 8);
  h.writeUInt16LE(0, 10);
  h.writeUInt32LE(pageSize, 12);
  h.writeUInt32LE(pid, 16);
  return h;
}

async function readFully(fh: FileHandle, file: string, buf: Buffer, off: number, len: number, pos: number): Promise<void> {
  let done = 0;
  while (done < len) {
    const { bytesRead } = await fh.read(buf, off + done, len - done, pos + done);
    if (bytesRead === 0) throw new ImageError(file, `truncated: unexpected end of file at byte ${pos + done} (the file shrank?)`, 'truncated');
    done += bytesRead;
  }
}

/**
 * readFully for the few small parts a pages file is validated by (header, footer, CRC table):
 * synchronous, because each thread-pool round trip costs more than such a read, and a
 * destination reads them while the migrated tree is frozen.
 */
function readSmallPart(fd: number, file: string, buf: Buffer, off: number, len: number, pos: number): void {
  let done = 0;
  while (done < len) {
    const n = readSync(fd, buf, off + done, len - done, pos + done);
    if (n === 0) throw new ImageError(file, `truncated: unexpected end of file at byte ${pos + done} (the file shrank?)`, 'truncated');
    done += n;
  }
}

async function writeFully(fh: FileHandle, data: Uint8Array, pos: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, pos + done);
    done += bytesWritten;
  }
}

/* ------------------------------------------------------------------ writer */

/**
 * Streams pages into a pages file. Pages are appended in call order; each `write` returns the
 * byte offset of its first page (what a present pagemap entry records). Only the per-page CRC
 * table (4 bytes a page) is kept in memory. The caller must not modify a buffer until its
 * write has resolved. `close()` writes the footer and fsyncs; until then the file has no valid
 * footer and is refused by readers.
 */
export class PagesWriter {
  private crcs = new Uint32Array(1024);
  private count = 0;
  private fileCrc: number;
  private readonly headerCrc: number;
  private chain: Promise<void> = Promise.resolve();
  private failed: unknown = undefined;
  /** Bytes written since the last early-writeback kick (see kickWriteback). */
  private unflushed = 0;
  private writeback: Promise<void> | undefined;
  private state: 'open' | 'closed' | 'aborted' = 'open';

  private constructor(
    private readonly fh: FileHandle,
    readonly path: string,
    readonly pid: number,
    readonly pageSize: number,
    header: Buffer,
    private readonly writebackBytes: number,
  ) {
    this.headerCrc = crc32c(header);
    this.fileCrc = this.headerCrc;
  }

  static async create(path: string, opts: { pid: number; pageSize: number; writebackBytes?: number }): Promise<PagesWriter> {
    if (!validPageSize(opts.pageSize)) throw new ImageError(path, `invalid page size ${opts.pageSize}`, 'schema');
    if (!Number.isInteger(opts.pid) || opts.pid <= 0 || opts.pid > 0xffffffff) throw new ImageError(path, `invalid pid ${opts.pid}`, 'schema');
    let fh: FileHandle;
    try {
      fh = await open(path, 'wx', 0o600);
    } catch (err) {
      throw asImageError(path, err);
    }
    const header = headerPage(opts.pid, opts.pageSize);
    try {
      await writeFully(fh, header, 0);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw asImageError(path, err);
    }
    return new PagesWriter(fh, path, opts.pid, opts.pageSize, header, opts.writebackBytes ?? DEFAULT_WRITEBACK_BYTES);
  }

  /** Pages written (or queued) so far. */
  get pageCount(): number {
    return this.count;
  }

  /** Byte offset where the next page will go. */
  get nextOffset(): number {
    return (this.count + 1) * this.pageSize;
  }

  /** Append whole pages; resolves to the byte offset of the first one. */
  write(data: Uint8Array): Promise<number> {
    if (this.state !== 'open') return Promise.reject(new ImageError(this.path, `pages writer is ${this.state}`, 'io'));
    const P = this.pageSize;
    if (data.length % P !== 0)
      return Promise.reject(new ImageError(this.path, `write of ${data.length} bytes is not a whole number of ${P}-byte pages`, 'schema'));
    const n = data.length / P;
    if (this.count + n > MAX_PAGES) return Promise.reject(new ImageError(this.path, 'too many pages for one pages file', 'schema'));
    if (this.crcs.length < this.count + n) {
      let cap = this.crcs.length;
      while (cap < this.count + n) cap *= 2;
      const grown = new Uint32Array(cap);
      grown.set(this.crcs.subarray(0, this.count));
      this.crcs = grown;
    }
    const offset = this.nextOffset;
    // Every page's CRC into the table and the running file CRC, in one native call.
    this.fileCrc = crc32cPages(data, P, this.crcs, this.count, this.fileCrc);
    this.count += n;
    const p = this.chain.then(async () => {
      if (this.failed !== undefined) throw this.failed;
      try {
        await writeFully(this.fh, data, offset);
      } catch (err) {
        this.failed = asImageError(this.path, err);
        throw this.failed;
      }
      this.kickWriteback(data.length);
    });
    this.chain = p.catch(() => undefined);
    return p.then(() => offset);
  }

  /**
   * Starts writing dirty pages to disk early, in the background, every `writebackBytes`: the
   * fsync in close() then has little left to do, and the disk works while the dump goes on
   * instead of after it. Not a durability point (close's fsync is); a failure here is
   * reported by close().
   */
  private kickWriteback(bytes: number): void {
    if (this.writebackBytes <= 0) return;
    this.unflushed += bytes;
    if (this.unflushed < this.writebackBytes || this.writeback) return;
    this.unflushed = 0;
    this.writeback = this.fh.datasync().then(
      () => {
        this.writeback = undefined;
      },
      (err: unknown) => {
        this.writeback = undefined;
        this.failed ??= asImageError(this.path, err);
      },
    );
  }

  /** Append the pages of one present range starting at `start` and return its pagemap entry. */
  async addRange(start: number, data: Uint8Array): Promise<PresentRange> {
    const offset = await this.write(data);
    return { start, pages: data.length / this.pageSize, kind: 'present', offset };
  }

  /**
   * Write the CRC table and trailer, fsync and close. With `sync: false` the fsync is left to
   * the caller (ImagesDirWriter.commit syncs every file of the dir at once).
   */
  async close(opts: { sync?: boolean } = {}): Promise<PagesFileInfo> {
    if (this.state !== 'open') throw new ImageError(this.path, `pages writer is ${this.state}`, 'io');
    this.state = 'closed';
    try {
      await this.chain;
      await this.writeback;
      if (this.failed !== undefined) throw this.failed;
      const n = this.count;
      const table = Buffer.alloc(n * 4);
      // u32 LE: a straight copy on little-endian hosts
      if (LITTLE_ENDIAN) table.set(new Uint8Array(this.crcs.buffer, 0, n * 4));
      else for (let i = 0; i < n; i++) table.writeUInt32LE(this.crcs[i]!, i * 4);
      const trailer = Buffer.alloc(PAGES_TRAILER_SIZE);
      TRAILER_MAGIC.copy(trailer, 0);
      trailer.writeUInt32LE(n, 4);
      const fileCrc = crc32cUpdate(crc32cUpdate(this.fileCrc, table), trailer.subarray(0, 8));
      trailer.writeUInt32LE(fileCrc, 8);
      const footerCrc = crc32cUpdate(crc32cUpdate(this.headerCrc, table), trailer.subarray(0, 12));
      trailer.writeUInt32LE(footerCrc, 12);
      const pos = (n + 1) * this.pageSize;
      // Synchronously, on the handle's fd (every queued write has completed): one thread-pool
      // round trip less while the dumped tree is frozen, for at most 4 bytes a page.
      const tail = Buffer.concat([table, trailer]);
      for (let done = 0; done < tail.length; ) done += writeSync(this.fh.fd, tail, done, tail.length - done, pos + done);
      if (opts.sync ?? true) await this.fh.sync();
      await this.fh.close();
      return { path: this.path, pid: this.pid, pageSize: this.pageSize, pageCount: n, size: pos + table.length + PAGES_TRAILER_SIZE, fileCrc };
    } catch (err) {
      await this.fh.close().catch(() => undefined);
      throw asImageError(this.path, err);
    }
  }

  /** Give up: close and delete the file. */
  async abort(): Promise<void> {
    if (this.state === 'aborted') return;
    const wasOpen = this.state === 'open';
    this.state = 'aborted';
    await this.chain;
    await this.writeback;
    if (wasOpen) await this.fh.close().catch(() => undefined);
    await rm(this.path, { force: true });
  }
}

/* ------------------------------------------------------------------ reader */

export type PagesVerify = 'footer' | 'full';

/**
 * Validate a pages file's header and footer (and with 'full' the whole-file checksum), and
 * return what it holds. Does not keep the file open.
 */
export async function readPagesInfo(path: string, opts: { verify?: PagesVerify } = {}): Promise<PagesFileInfo> {
  if (opts.verify === 'full') {
    const r = await PagesReader.open(path, { verify: 'full' });
    await r.close();
    return r.info;
  }
  // Only small parts are read: synchronously, like the other image files (dir.ts).
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw asImageError(path, err);
  }
  try {
    return PagesReader.validateFooter(fd, path).info;
  } finally {
    closeSync(fd);
  }
}

export interface PagesReaderOptions {
  /** the process's pagemap: enables `read(address, …)` and is checked against the file */
  pagemap?: Pagemap;
  /** refuse a file whose header names another pid / page size */
  pid?: number;
  pageSize?: number;
  /** 'footer' (default): header, CRC table and trailer; 'full': also every byte (reads the whole file) */
  verify?: PagesVerify;
  /** check each page read against its CRC (default true) */
  verifyReads?: boolean;
}

export class PagesReader {
  private constructor(
    private readonly fh: FileHandle,
    readonly info: PagesFileInfo,
    private readonly crcs: Uint32Array,
    readonly pagemap: Pagemap | undefined,
    private readonly verifyReads: boolean,
  ) {}

  get path(): string {
    return this.info.path;
  }
  get pageSize(): number {
    return this.info.pageSize;
  }

  static async open(path: string, opts: PagesReaderOptions = {}): Promise<PagesReader> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (err) {
      throw asImageError(path, err);
    }
    try {
      const { info, crcs } = await PagesReader.validate(fh, path, opts.verify ?? 'footer');
      if (opts.pid !== undefined && info.pid !== opts.pid)
        throw new ImageError(path, `pages file of pid ${info.pid}, expected pid ${opts.pid}`, 'layout');
      if (opts.pageSize !== undefined && info.pageSize !== opts.pageSize)
        throw new ImageError(path, `page size ${info.pageSize}, the images use ${opts.pageSize}`, 'layout');
      if (opts.pagemap) {
        if (opts.pagemap.pageSize !== info.pageSize)
          throw new ImageError(path, `page size ${info.pageSize}, the pagemap uses ${opts.pagemap.pageSize}`, 'layout');
        try {
          checkPagemapInPagesFile(opts.pagemap, info.pageCount);
        } catch (err) {
          if (err instanceof FieldError) throw new ImageError(path, `pagemap ${err.message}`, 'layout');
          throw err;
        }
      }
      return new PagesReader(fh, info, crcs, opts.pagemap, opts.verifyReads ?? true);
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw asImageError(path, err);
    }
  }

  private static async validate(fh: FileHandle, file: string, verify: PagesVerify): Promise<{ info: PagesFileInfo; crcs: Uint32Array }> {
    const v = PagesReader.validateFooter(fh.fd, file);
    if (verify === 'full') await PagesReader.checkWholeFile(fh, file, v.info.size, v.info.fileCrc);
    return v;
  }

  /** Every byte against the file's CRC32C (reads the whole file). */
  private static async checkWholeFile(fh: FileHandle, file: string, size: number, fileCrc: number): Promise<void> {
    const chunk = Buffer.alloc(Math.min(8 << 20, size));
    let crc = 0;
    for (let pos = 0; pos < size - 8; ) {
      const len = Math.min(chunk.length, size - 8 - pos);
      await readFully(fh, file, chunk, 0, len, pos);
      crc = crc32cUpdate(crc, chunk.subarray(0, len));
      pos += len;
    }
    if (crc !== fileCrc)
      throw new ImageError(file, `checksum mismatch: stored file CRC32C ${hex(fileCrc)}, contents give ${hex(crc)} (page data corrupted)`, 'checksum');
  }

  /** Header, footer and CRC table, read synchronously (small parts of the file). */
  static validateFooter(fd: number, file: string): { info: PagesFileInfo; crcs: Uint32Array } {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(size, 20));
    readSmallPart(fd, file, head, 0, head.length, 0);
    checkMagic(file, head);
    if (size < 20 + PAGES_TRAILER_SIZE) throw new ImageError(file, `truncated: ${size} bytes, too short for a pages file`, 'truncated');
    const P = head.readUInt32LE(12);
    const trailer = Buffer.alloc(PAGES_TRAILER_SIZE);
    readSmallPart(fd, file, trailer, 0, PAGES_TRAILER_SIZE, size - PAGES_TRAILER_SIZE);
    if (!trailer.subarray(0, 4).equals(TRAILER_MAGIC))
      throw new ImageError(file, `truncated or unfinished: no pages footer at the end of the ${size}-byte file`, 'truncated');
    if (!validPageSize(P)) throw new ImageError(file, `corrupt header: page size ${P} is not a power of two in 4096..2^30`, 'malformed');
    const n = trailer.readUInt32LE(4);
    const expected = (n + 1) * P + n * 4 + PAGES_TRAILER_SIZE;
    if (size < expected)
      throw new ImageError(file, `truncated: ${size} bytes, its footer declares ${n} pages of ${P} bytes (${expected} bytes in all)`, 'truncated');
    if (size > expected)
      throw new ImageError(file, `malformed: ${size} bytes, its footer declares ${n} pages of ${P} bytes (${expected} bytes in all)`, 'malformed');
    const header = Buffer.alloc(P);
    readSmallPart(fd, file, header, 0, P, 0);
    const table = Buffer.alloc(n * 4);
    readSmallPart(fd, file, table, 0, table.length, (n + 1) * P);
    const footerCrc = crc32cUpdate(crc32cUpdate(crc32c(header), table), trailer.subarray(0, 12));
    if (footerCrc !== trailer.readUInt32LE(12))
      throw new ImageError(file, `checksum mismatch in the header or footer: stored CRC32C ${hex(trailer.readUInt32LE(12))}, contents give ${hex(footerCrc)}`, 'checksum');
    checkKindVersion(file, header, 'pages');
    if (header.readUInt16LE(10) !== 0) throw new ImageError(file, 'malformed: reserved header field is not 0', 'malformed');
    if (header.subarray(20).some((b) => b !== 0)) throw new ImageError(file, 'malformed: header padding is not zero', 'malformed');
    const pid = header.readUInt32LE(16);
    const fileCrc = trailer.readUInt32LE(8);
    const crcs = new Uint32Array(n);
    if (LITTLE_ENDIAN) new Uint8Array(crcs.buffer).set(table);
    else for (let i = 0; i < n; i++) crcs[i] = table.readUInt32LE(i * 4);
    return { info: { path: file, pid, pageSize: P, pageCount: n, size, fileCrc }, crcs };
  }

  private checkRead(offset: number, pages: number, into: Buffer | undefined): { first: number; buf: Buffer } {
    const P = this.info.pageSize;
    if (!Number.isSafeInteger(offset) || offset % P !== 0 || !Number.isSafeInteger(pages) || pages < 0)
      throw new ImageError(this.path, `bad read: offset ${offset}, ${pages} pages`, 'schema');
    const first = offset / P - 1;
    if (first < 0 || first + pages > this.info.pageCount)
      throw new ImageError(this.path, `read of ${pages} pages at offset ${offset} is outside the ${this.info.pageCount} data pages`, 'not-present');
    const buf = into ?? pageAlignedBuffer(pages * P);
    if (buf.length < pages * P) throw new ImageError(this.path, `buffer of ${buf.length} bytes too small for ${pages} pages`, 'schema');
    return { first, buf };
  }

  private verifyPages(buf: Buffer, first: number, pages: number, offset: number): void {
    if (!this.verifyReads) return;
    const P = this.info.pageSize;
    const got = new Uint32Array(pages);
    crc32cPages(buf.subarray(0, pages * P), P, got, 0);
    for (let i = 0; i < pages; i++) {
      if (got[i] !== this.crcs[first + i])
        throw new ImageError(this.path, `checksum mismatch in data page ${first + i} (file offset ${offset + i * P})`, 'checksum');
    }
  }

  /** Read `pages` pages stored at byte `offset` of the file (a present entry's offset). */
  async readAt(offset: number, pages: number, into?: Buffer): Promise<Buffer> {
    const { first, buf } = this.checkRead(offset, pages, into);
    await readFully(this.fh, this.path, buf, 0, pages * this.info.pageSize, offset);
    this.verifyPages(buf, first, pages, offset);
    return buf;
  }

  /** `readAt` with a synchronous pread (no thread-pool round trip: for a latency-bound fault path). */
  readAtSync(offset: number, pages: number, into?: Buffer): Buffer {
    const { first, buf } = this.checkRead(offset, pages, into);
    const len = pages * this.info.pageSize;
    for (let done = 0; done < len; ) {
      const n = readSync(this.fh.fd, buf, done, len - done, offset + done);
      if (n === 0) throw new ImageError(this.path, `truncated: unexpected end of file at byte ${offset + done} (the file shrank?)`, 'truncated');
      done += n;
    }
    this.verifyPages(buf, first, pages, offset);
    return buf;
  }

  /** The pagemap entry that contains `address`, if any. */
  find(address: number): PagemapEntry | undefined {
    const es = this.pagemap?.entries;
    if (!es) return undefined;
    const P = this.info.pageSize;
    let lo = 0;
    let hi = es.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const e = es[mid]!;
      if (e.start + e.pages * P <= address) lo = mid + 1;
      else hi = mid;
    }
    const e = es[lo];
    return e && e.start <= address ? e : undefined;
  }

  /** Split [address, address + pages) into pagemap runs; throws 'not-present' for lazy or unmapped pages. */
  private plan(address: number, pages: number, into: Buffer | undefined): { buf: Buffer; runs: Array<{ dst: Buffer; offset: number; n: number } | { dst: Buffer; zero: true }> } {
    if (!this.pagemap) throw new ImageError(this.path, 'read by address needs the pagemap (PagesReader.open(path, { pagemap }))', 'schema');
    const P = this.info.pageSize;
    if (!Number.isSafeInteger(address) || address % P !== 0 || !Number.isSafeInteger(pages) || pages < 1)
      throw new ImageError(this.path, `bad read: address ${hex(address)}, ${pages} pages`, 'schema');
    const buf = into ?? Buffer.alloc(pages * P);
    if (buf.length < pages * P) throw new ImageError(this.path, `buffer of ${buf.length} bytes too small for ${pages} pages`, 'schema');
    const runs: Array<{ dst: Buffer; offset: number; n: number } | { dst: Buffer; zero: true }> = [];
    const end = address + pages * P;
    let addr = address;
    while (addr < end) {
      const e = this.find(addr);
      if (e === undefined) throw new ImageError(this.path, `page ${hex(addr)} is not in the pagemap of pid ${this.info.pid}`, 'not-present');
      const runEnd = Math.min(end, e.start + e.pages * P);
      const n = (runEnd - addr) / P;
      const dst = buf.subarray(addr - address, addr - address + n * P);
      if (e.kind === 'present') runs.push({ dst, offset: e.offset + (addr - e.start), n });
      else if (e.kind === 'zero') runs.push({ dst, zero: true });
      else throw new ImageError(this.path, `page ${hex(addr)} of pid ${this.info.pid} is lazy: its contents are not in the images (fetch it from the page server)`, 'not-present');
      addr = runEnd;
    }
    return { buf, runs };
  }

  /**
   * Read `pages` pages of the process's memory starting at `address` (page aligned). Present
   * pages come from the file (one pread per pagemap entry), zero pages are zero-filled; a lazy
   * page or one outside the pagemap is an ImageError 'not-present'. Every page read is checked
   * against its CRC unless verifyReads was turned off.
   */
  async read(address: number, pages: number, into?: Buffer): Promise<Buffer> {
    const { buf, runs } = this.plan(address, pages, into);
    for (const r of runs) {
      if ('zero' in r) r.dst.fill(0);
      else await this.readAt(r.offset, r.n, r.dst);
    }
    return buf;
  }

  /** `read` with synchronous preads. */
  readSync(address: number, pages: number, into?: Buffer): Buffer {
    const { buf, runs } = this.plan(address, pages, into);
    for (const r of runs) {
      if ('zero' in r) r.dst.fill(0);
      else this.readAtSync(r.offset, r.n, r.dst);
    }
    return buf;
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}
