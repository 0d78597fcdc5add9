/**
 * `lazymig show`: render images as JSON (like crit) or as a short human summary.
 * In JSON, register values, masks and addresses are hex strings ("0x…"), rlimits, file ids and
 * offsets decimal strings, byte strings {length, base64}, and pages files are summarised (their
 * contents are never dumped).
 */
import { stat } from 'node:fs/promises';
import { readImageFile, readImages, type ImageFile, type LoadedImages } from './dir.js';
import { asImageError } from './errors.js';
import type { PagesVerify } from './pages.js';
import {
  MADV_DONTDUMP, MADV_DONTFORK, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE, MADV_WIPEONFORK, MAP_ANONYMOUS,
  MAP_DENYWRITE, MAP_EXECUTABLE, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_NORESERVE, MAP_PRIVATE, MAP_SHARED,
  MM_FIELDS, RLIMIT_NAMES, USER_REGS_FIELDS, type CoreImage, type FileId, type Inventory, type Pagemap, type PagesFileInfo,
  type RlimitValue,
} from './types.js';

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface ShowOptions {
  /** how byte strings (xstate) are shown: 'base64' (default) or only their 'length' */
  bytes?: 'base64' | 'length';
  /** pages-file verification: 'footer' (default for a dir) or 'full' (default for a single pages file) */
  verifyPages?: PagesVerify;
  /** indentation of the JSON text (default 2) */
  indent?: number;
}

const hex = (v: bigint | number): string => '0x' + v.toString(16);
const dec = (v: bigint): string => v.toString(10);

function bytesJson(b: Buffer, o: ShowOptions): Json {
  return o.bytes === 'length' ? { length: b.length } : { length: b.length, base64: b.toString('base64') };
}

function fileIdJson(id: FileId): Json {
  return { dev: hex(id.dev), ino: dec(id.ino), size: id.size, mtimeNs: dec(id.mtimeNs) };
}

const MAP_NAMES: Array<[number, string]> = [
  [MAP_SHARED, 'MAP_SHARED'], [MAP_PRIVATE, 'MAP_PRIVATE'], [MAP_ANONYMOUS, 'MAP_ANONYMOUS'], [MAP_GROWSDOWN, 'MAP_GROWSDOWN'],
  [MAP_DENYWRITE, 'MAP_DENYWRITE'], [MAP_EXECUTABLE, 'MAP_EXECUTABLE'], [MAP_LOCKED, 'MAP_LOCKED'], [MAP_NORESERVE, 'MAP_NORESERVE'],
  [MAP_HUGETLB, 'MAP_HUGETLB'],
];
const MADV_NAMES: Array<[number, string]> = [
  [MADV_DONTFORK, 'MADV_DONTFORK'], [MADV_MERGEABLE, 'MADV_MERGEABLE'], [MADV_HUGEPAGE, 'MADV_HUGEPAGE'],
  [MADV_NOHUGEPAGE, 'MADV_NOHUGEPAGE'], [MADV_DONTDUMP, 'MADV_DONTDUMP'], [MADV_WIPEONFORK, 'MADV_WIPEONFORK'],
];

function protString(p: number): string {
  return (p & 1 ? 'r' : '-') + (p & 2 ? 'w' : '-') + (p & 4 ? 'x' : '-');
}

const rlim = (v: RlimitValue): string => (v === 'unlimited' ? v : dec(v));

export function coreJson(c: CoreImage, o: ShowOptions = {}): Json {
  return {
    pid: c.pid,
    comm: c.comm,
    personality: hex(c.personality),
    exe: { path: c.exe.path, id: fileIdJson(c.exe.id) },
    cwd: c.cwd,
    root: c.root,
    umask: '0' + c.umask.toString(8).padStart(3, '0'),
    creds: {
      uid: c.creds.uid, euid: c.creds.euid, suid: c.creds.suid, fsuid: c.creds.fsuid,
      gid: c.creds.gid, egid: c.creds.egid, sgid: c.creds.sgid, fsgid: c.creds.fsgid,
      groups: c.creds.groups,
      caps: Object.fromEntries(Object.entries(c.creds.caps).map(([k, v]) => [k, hex(v)])),
    },
    rlimits: Object.fromEntries(c.rlimits.map((r, i) => [RLIMIT_NAMES[i] ?? String(i), { soft: rlim(r.soft), hard: rlim(r.hard) }])),
    sigactions: c.sigactions
      .map((s, i) => ({ s, sig: i + 1 }))
      .filter(({ s }) => s.handler !== 0n || s.flags !== 0n || s.mask !== 0n || s.restorer !== 0n)
      .map(({ s, sig }) => ({ sig, handler: hex(s.handler), flags: hex(s.flags), restorer: hex(s.restorer), mask: hex(s.mask) })),
    threads: c.threads.map((t) => ({
      tid: t.tid,
      regs: Object.fromEntries(USER_REGS_FIELDS.map((k) => [k, hex(t.regs[k])])),
      xstate: bytesJson(t.xstate, o),
      sigmask: hex(t.sigmask),
      rseq: t.rseq && { ptr: hex(t.rseq.ptr), len: t.rseq.len, sig: hex(t.rseq.sig), flags: t.rseq.flags },
      clearChildTid: hex(t.clearChildTid),
      robustList: { head: hex(t.robustList.head), len: dec(t.robustList.len) },
    })),
    mm: Object.fromEntries(MM_FIELDS.map((k) => [k, hex(c.mm[k])])),
    auxv: c.auxv.map(([k, v]) => [dec(k), hex(v)]),
    vmas: c.vmas.map((v) => ({
      start: hex(v.start),
      end: hex(v.end),
      prot: protString(v.prot),
      flags: MAP_NAMES.filter(([b]) => v.flags & b).map(([, n]) => n).join(' | '),
      kind: v.kind,
      file: v.file && { path: v.file.path, id: fileIdJson(v.file.id) },
      pgoff: hex(v.pgoff),
      madvise: MADV_NAMES.filter(([b]) => v.madvise & (1 << b)).map(([, n]) => n),
    })),
    fds: c.fds.map((f) => ({
      fd: f.fd,
      kind: f.kind,
      path: f.path,
      flags: '0' + f.flags.toString(8),
      offset: dec(f.offset),
      id: f.id && fileIdJson(f.id),
    })),
  };
}

export interface PageCounts {
  present: number;
  lazy: number;
  zero: number;
}

export function pageCounts(pm: Pagemap): PageCounts {
  const c: PageCounts = { present: 0, lazy: 0, zero: 0 };
  for (const e of pm.entries) c[e.kind] += e.pages;
  return c;
}

export function pagemapJson(pm: Pagemap): Json {
  return {
    pid: pm.pid,
    pageSize: pm.pageSize,
    pages: { ...pageCounts(pm) },
    entries: pm.entries.map((e) => {
      const base = { start: hex(e.start), end: hex(e.start + e.pages * pm.pageSize), pages: e.pages, kind: e.kind };
      return e.kind === 'present' ? { ...base, offset: e.offset } : base;
    }),
  };
}

export function pagesJson(p: PagesFileInfo): Json {
  return { file: p.path, pid: p.pid, pageSize: p.pageSize, pageCount: p.pageCount, dataBytes: p.pageCount * p.pageSize, size: p.size, fileCrc: hex(p.fileCrc) };
}

export function inventoryJson(inv: Inventory): Json {
  return {
    formatVersion: inv.formatVersion,
    lazymigVersion: inv.lazymigVersion,
    kernelRelease: inv.kernelRelease,
    arch: inv.arch,
    pageSize: inv.pageSize,
    dumpMode: inv.dumpMode,
    lazy: inv.lazy,
    pageServer: inv.pageServer && { address: inv.pageServer.address, port: inv.pageServer.port },
    createdAt: new Date(inv.createdAt).toISOString(),
    rootPid: inv.rootPid,
    tree: inv.tree.map((t) => ({ pid: t.pid, ppid: t.ppid, tids: t.tids, children: t.children })),
  };
}

export function imagesJson(images: LoadedImages, o: ShowOptions = {}): Json {
  return {
    dir: images.dir,
    inventory: inventoryJson(images.inventory),
    processes: images.processes.map((p) => {
      const info = images.pages.get(p.pid);
      return { pid: p.pid, core: coreJson(p.core, o), pagemap: pagemapJson(p.pagemap), pages: info ? pagesJson(info) : null };
    }),
  };
}

export function imageFileJson(f: ImageFile, o: ShowOptions = {}): Json {
  switch (f.kind) {
    case 'inventory':
      return { file: f.path, kind: f.kind, inventory: inventoryJson(f.inventory) };
    case 'core':
      return { file: f.path, kind: f.kind, core: coreJson(f.core, o) };
    case 'pagemap':
      return { file: f.path, kind: f.kind, pagemap: pagemapJson(f.pagemap) };
    case 'pages':
      return { file: f.path, kind: f.kind, pages: pagesJson(f.pages) };
  }
}

async function load(pathOrDir: string, o: ShowOptions): Promise<{ dir: LoadedImages } | { file: ImageFile }> {
  let isDir: boolean;
  try {
    isDir = (await stat(pathOrDir)).isDirectory();
  } catch (err) {
    throw asImageError(pathOrDir, err);
  }
  if (isDir) return { dir: await readImages(pathOrDir, o.verifyPages ? { verifyPages: o.verifyPages } : {}) };
  return { file: await readImageFile(pathOrDir, o.verifyPages ? { verifyPages: o.verifyPages } : {}) };
}

/** JSON text of an images dir or of one image file (throws ImageError if anything is invalid). */
export async function renderShowJson(pathOrDir: string, opts: ShowOptions = {}): Promise<string> {
  const l = await load(pathOrDir, opts);
  const json = 'dir' in l ? imagesJson(l.dir, opts) : imageFileJson(l.file, opts);
  return JSON.stringify(json, null, opts.indent ?? 2);
}

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ').trimEnd()).join('\n');
}

export function imagesSummary(images: LoadedImages): string {
  const inv = images.inventory;
  const ps = inv.pageSize;
  const lines = [
    `images   ${images.dir}`,
    `format   ${inv.formatVersion} (lazymig ${inv.lazymigVersion}), kernel ${inv.kernelRelease}, ${inv.arch}, page size ${ps}`,
    `dump     ${inv.lazy ? 'lazy' : 'eager'}, ${inv.dumpMode}` +
      (inv.pageServer ? `, page server ${inv.pageServer.address}:${inv.pageServer.port}` : '') +
      `, ${new Date(inv.createdAt).toISOString()}`,
    '',
  ];
  const rows = [['PID', 'PPID', 'COMM', 'THREADS', 'VMAS', 'FDS', 'PRESENT', 'LAZY', 'ZERO', 'PAGES FILE']];
  const tot = { threads: 0, vmas: 0, fds: 0, present: 0, lazy: 0, zero: 0, file: 0 };
  inv.tree.forEach((t, i) => {
    const p = images.processes[i]!;
    const c = pageCounts(p.pagemap);
    const fileBytes = images.pages.get(t.pid)?.size ?? 0;
    rows.push([String(t.pid), String(t.ppid), p.core.comm, String(p.core.threads.length), String(p.core.vmas.length), String(p.core.fds.length),
      String(c.present), String(c.lazy), String(c.zero), humanBytes(fileBytes)]);
    tot.threads += p.core.threads.length;
    tot.vmas += p.core.vmas.length;
    tot.fds += p.core.fds.length;
    tot.present += c.present;
    tot.lazy += c.lazy;
    tot.zero += c.zero;
    tot.file += fileBytes;
  });
  lines.push(table(rows), '');
  lines.push(
    `total    ${inv.tree.length} process${inv.tree.length === 1 ? '' : 'es'}, ${tot.threads} thread${tot.threads === 1 ? '' : 's'}, ${tot.vmas} VMAs, ${tot.fds} fds`,
    `pages    present ${tot.present} (${humanBytes(tot.present * ps)}), lazy ${tot.lazy} (${humanBytes(tot.lazy * ps)}), zero ${tot.zero} (${humanBytes(tot.zero * ps)}); pages files ${humanBytes(tot.file)}`,
  );
  return lines.join('\n');
}

export function imageFileSummary(f: ImageFile): string {
  switch (f.kind) {
    case 'inventory': {
      const inv = f.inventory;
      return [
        `${f.path}: inventory, format ${inv.formatVersion}, lazymig ${inv.lazymigVersion}, ${inv.arch}, page size ${inv.pageSize}`,
        `${inv.lazy ? 'lazy' : 'eager'} dump (${inv.dumpMode})${inv.pageServer ? `, page server ${inv.pageServer.address}:${inv.pageServer.port}` : ''}`,
        `${inv.tree.length} process(es): ${inv.tree.map((t) => `${t.pid} (${t.tids.length} thread${t.tids.length === 1 ? '' : 's'})`).join(', ')}`,
      ].join('\n');
    }
    case 'core': {
      const c = f.core;
      return `${f.path}: core of pid ${c.pid} (${c.comm}), ${c.threads.length} thread(s), ${c.vmas.length} VMAs, ${c.fds.length} fds, exe ${c.exe.path}`;
    }
    case 'pagemap': {
      const c = pageCounts(f.pagemap);
      const ps = f.pagemap.pageSize;
      return `${f.path}: pagemap of pid ${f.pagemap.pid}, ${f.pagemap.entries.length} ranges: present ${c.present} (${humanBytes(c.present * ps)}), lazy ${c.lazy} (${humanBytes(c.lazy * ps)}), zero ${c.zero} (${humanBytes(c.zero * ps)})`;
    }
    case 'pages': {
      const p = f.pages;
      return `${f.path}: pages of pid ${p.pid}, ${p.pageCount} pages of ${p.pageSize} bytes (${humanBytes(p.pageCount * p.pageSize)}), file ${humanBytes(p.size)}, CRC32C ${hex(p.fileCrc)}`;
    }
  }
}

/** A short human summary of an images dir (table of processes) or of one image file. */
export async function renderShowSummary(pathOrDir: string, opts: ShowOptions = {}): Promise<string> {
  const l = await load(pathOrDir, opts);
  return 'dir' in l ? imagesSummary(l.dir) : imageFileSummary(l.file);
}
