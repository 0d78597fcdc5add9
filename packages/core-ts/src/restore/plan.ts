/**
 * Everything that can be checked before a single process is created: the host (arch, page
 * size, vdso layout), the files the images refer to (mapped files, the executable, open
 * files, cwd) and the options the images need (--shell-job for a terminal, a lazy hook for
 * lazy pages). All problems are collected and reported together.
 */
import { statSync, readFileSync } from 'node:fs';
import { arch } from 'node:os';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import {
  TASK_SIZE, type CoreImage, type FdEntry, type FileId, type LoadedImages, type ProcessImage, type Vma,
} from '../image/index.js';
import { readMaps } from '../proc/index.js';
import { RestoreError, hex, type RestoreErrorCode } from './errors.js';
import { pidMax } from './pidns.js';

export interface Problem {
  pid: number;
  code: RestoreErrorCode;
  message: string;
}

export class RestoreRefusedError extends RestoreError {
  constructor(readonly problems: Problem[]) {
    const first = problems[0]!;
    super(problems.length > 1 ? `${first.message} (and ${problems.length - 1} more)` : first.message, first.code);
  }
}

export interface CheckOptions {
  shellJob: boolean;
  /** a lazy restore hands lazy ranges to a userfaultfd */
  lazy: boolean;
  /** restore into a new pid namespace with every dumped pid and tid (--pid-ns) */
  pidNs?: boolean;
}

/** Kernel special mappings, in the order they sit in memory on this kernel. */
export const SPECIAL_KINDS = ['vvar', 'vvar_vclock', 'vdso'] as const;
export type SpecialKind = (typeof SPECIAL_KINDS)[number];

export interface Range {
  start: number;
  end: number;
}

/** This kernel's vdso/vvar sizes, from our own layout (every process gets the same). */
let specialSizes: Map<SpecialKind, number> | null = null;

/** Sizes of this process's vdso/vvar (fixed for its lifetime: read once, Node's maps are long). */
export function hostSpecialSizes(): Map<SpecialKind, number> {
  if (specialSizes) return specialSizes;
  const out = new Map<SpecialKind, number>();
  for (const v of readMaps(process.pid)) {
    if ((SPECIAL_KINDS as readonly string[]).includes(v.kind)) out.set(v.kind as SpecialKind, v.end - v.start);
  }
  return (specialSizes = out);
}

let minAddr: number | null = null;

function mmapMinAddr(): number {
  if (minAddr !== null) return minAddr;
  try {
    minAddr = Number(readFileSync('/proc/sys/vm/mmap_min_addr', 'utf8').trim()) || 65536;
  } catch {
    minAddr = 65536;
  }
  return minAddr;
}

/** What the checks read of this host (once per command), read ahead of the images. */
export function hostFacts(): void {
  hostSpecialSizes();
  mmapMinAddr();
}

/** Compares a file on this host with the identity recorded at dump time; null when it is the same. */
export function fileChange(path: string, id: FileId, fields: { size: boolean; mtime: boolean } = { size: true, mtime: true }): string | null {
  let st;
  try {
    st = statSync(path, { bigint: true });
  } catch (err) {
    return `it cannot be opened here: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
  }
  if (st.dev !== id.dev || st.ino !== id.ino) return `it is another file now (dev:ino ${st.dev}:${st.ino}, dumped ${id.dev}:${id.ino})`;
  if (fields.size && Number(st.size) !== id.size) return `its size changed (${st.size} bytes, dumped ${id.size})`;
  if (fields.mtime && st.mtimeNs !== id.mtimeNs) return `it was modified after the dump (mtime ${st.mtimeNs} ns, dumped ${id.mtimeNs} ns)`;
  return null;
}

function checkVmas(pid: number, vmas: readonly Vma[], out: Problem[], host: Map<SpecialKind, number>): void {
  const minAddr = mmapMinAddr();
  const seen = new Set<string>();
  const dumped = new Map<SpecialKind, number>();
  for (const v of vmas) {
    if (v.kind === 'vsyscall') continue;
    if (v.start < minAddr || v.end > TASK_SIZE)
      out.push({ pid, code: 'address-taken', message: `pid ${pid}: mapping ${hex(v.start)}-${hex(v.end)} is outside the range this host lets a process map (${hex(minAddr)}-${hex(TASK_SIZE)})` });
    if ((SPECIAL_KINDS as readonly string[]).includes(v.kind)) dumped.set(v.kind as SpecialKind, v.end - v.start);
    if (v.kind !== 'file' || !v.file) continue;
    const key = `${v.file.path}\0${v.file.id.ino}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const why = fileChange(v.file.path, v.file.id);
    if (why) out.push({ pid, code: 'file-changed', message: `pid ${pid}: mapped file ${v.file.path} (at ${hex(v.start)}): ${why}` });
  }
  if (dumped.size > 0) {
    const describe = (m: Map<SpecialKind, number>): string =>
      SPECIAL_KINDS.map((k) => `[${k}] ${m.has(k) ? `${m.get(k)! / PAGE_SIZE} pages` : 'absent'}`).join(', ');
    const same = SPECIAL_KINDS.every((k) => dumped.get(k) === host.get(k));
    if (!same)
      out.push({ pid, code: 'unsupported', message: `pid ${pid}: the dumped vdso layout (${describe(dumped)}) differs from this kernel's (${describe(host)}): the process would crash in its first vdso call` });
  }
}

function checkFd(pid: number, f: FdEntry, opts: CheckOptions, out: Problem[]): void {
  const what = `pid ${pid}: fd ${f.fd} -> ${f.path}`;
  switch (f.kind) {
    case 'file': {
      if (!f.id) break;
      // A file opened for writing may legitimately have grown (a log); its identity must hold.
      const why = fileChange(f.path, f.id, { size: false, mtime: false });
      if (why) out.push({ pid, code: 'file-changed', message: `${what}: ${why}` });
      else {
        try {
          const size = statSync(f.path, { bigint: true }).size;
          if (size < f.offset) out.push({ pid, code: 'file-changed', message: `${what}: the file is shorter (${size} bytes) than the dumped position ${f.offset}` });
        } catch {
          /* reported above */
        }
      }
      break;
    }
    case 'dir':
    case 'devnull':
    case 'chardev': {
      try {
        statSync(f.path);
      } catch (err) {
        out.push({ pid, code: 'file-changed', message: `${what}: it cannot be opened here: ${(err as NodeJS.ErrnoException).code}` });
      }
      break;
    }
    case 'tty':
      if (!opts.shellJob) out.push({ pid, code: 'options', message: `${what}: a terminal; restore with --shell-job to give the process this restore's terminal` });
      break;
    default:
      out.push({ pid, code: 'unsupported', message: `${what}: ${f.kind} fds cannot be restored` });
  }
}

/** Everything wrong with restoring `images` here; throws RestoreRefusedError listing it. */
export function checkImages(images: LoadedImages, opts: CheckOptions): void {
  const out: Problem[] = [];
  const inv = images.inventory;
  const root = inv.rootPid;
  if (inv.arch !== 'x86_64' || arch() !== 'x64')
    out.push({ pid: root, code: 'unsupported', message: `the images are for ${inv.arch}, this host is ${arch()}` });
  if (inv.pageSize !== PAGE_SIZE)
    out.push({ pid: root, code: 'unsupported', message: `the images were dumped with ${inv.pageSize}-byte pages, this host uses ${PAGE_SIZE}-byte pages` });
  if (inv.lazy && !opts.lazy)
    out.push({ pid: root, code: 'options', message: 'the images are from a lazy dump (pages stay on the source): restore them with --lazy-pages' });
  if (out.length > 0) throw new RestoreRefusedError(out);
  const host = hostSpecialSizes();
  for (const p of images.processes) checkProcess(p, opts, host, out);
  if (opts.pidNs) checkPidNs(images, out);
  if (out.length > 0) throw new RestoreRefusedError(out);
}

/** --pid-ns: every dumped pid and tid must be one a new namespace can give (1 is its init's). */
function checkPidNs(images: LoadedImages, out: Problem[]): void {
  const max = pidMax();
  const seen = new Map<number, number>();
  for (const p of images.processes) {
    for (const t of p.core.threads) {
      const what = t.tid === p.pid ? `pid ${p.pid}` : `pid ${p.pid}: thread ${t.tid}`;
      if (t.tid === 1)
        out.push({ pid: p.pid, code: 'unsupported', message: `${what}: --pid-ns cannot restore pid 1, it is the new namespace's init (lazymig's, which reaps and reports the root's exit)` });
      else if (t.tid < 1 || t.tid >= max)
        out.push({ pid: p.pid, code: 'unsupported', message: `${what}: --pid-ns cannot have this pid here, pid_max is ${max}` });
      const other = seen.get(t.tid);
      if (other !== undefined)
        out.push({ pid: p.pid, code: 'unsupported', message: `${what}: the images use pid ${t.tid} twice (also in pid ${other}): they cannot all have it in one namespace` });
      seen.set(t.tid, p.pid);
    }
  }
}

function checkProcess(p: ProcessImage, opts: CheckOptions, host: Map<SpecialKind, number>, out: Problem[]): void {
  const c: CoreImage = p.core;
  const pid = p.pid;
  checkVmas(pid, c.vmas, out, host);
  const exeWhy = fileChange(c.exe.path, c.exe.id);
  if (exeWhy) out.push({ pid, code: 'file-changed', message: `pid ${pid}: executable ${c.exe.path}: ${exeWhy}` });
  for (const f of c.fds) checkFd(pid, f, opts, out);
  try {
    if (!statSync(c.cwd).isDirectory()) throw new Error('not a directory');
  } catch (err) {
    out.push({ pid, code: 'file-changed', message: `pid ${pid}: working directory ${c.cwd}: ${(err as Error).message}` });
  }
  if (c.root !== '/') out.push({ pid, code: 'unsupported', message: `pid ${pid}: runs chrooted in ${c.root}; only / is supported` });
  if (c.threads.length === 0 || c.threads[0]!.tid !== pid)
    out.push({ pid, code: 'unsupported', message: `pid ${pid}: the thread-group leader is not the first thread of the image` });
}

/** A hole of `size` bytes (page aligned) that none of `taken` covers, searched upwards from `from`. */
export function findHole(taken: readonly Range[], size: number, from = 0x10000000): number {
  const sorted = [...taken].sort((a, b) => a.start - b.start);
  let at = from;
  for (const r of sorted) {
    if (r.end <= at) continue;
    if (r.start >= at + size) break;
    at = r.end;
  }
  if (at + size > TASK_SIZE) throw new RestoreError(`no free ${size}-byte hole in the address space for the restore's control area`, 'address-taken');
  return at;
}
