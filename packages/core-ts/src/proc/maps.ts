import { parseError, procDir, readText } from './errors.js';

/** x86-64 user space ends at 2^47 (4-level paging; we do not support LA57 layouts). */
export const USER_ADDR_LIMIT = 2 ** 47;
/** The legacy vsyscall page: above the user limit but listed in maps. Exactly representable as a double. */
export const VSYSCALL_ADDR = 0xffffffffff600000;
export const PAGE_SIZE = 4096;

export type ProcVmaKind =
  | 'anon'
  | 'file'
  | 'stack'
  | 'heap'
  | 'vdso'
  | 'vvar'
  | 'vvar_vclock'
  | 'vsyscall'
  | 'shmem'
  /** A bracketed name we do not know (e.g. [uprobes]): a dump should refuse it. */
  | 'special';

/** Which kind of shared memory backs a 'shmem' VMA. */
export type ShmemKind = 'anon_shared' | 'sysv' | 'memfd' | 'anon_shmem_named' | 'posix_shm';

export interface VmaPerms {
  read: boolean;
  write: boolean;
  exec: boolean;
  /** 's' in maps: MAP_SHARED (or a mapping the kernel treats as shared). */
  shared: boolean;
}

export interface ProcVma {
  start: number;
  end: number;
  /** The 4-character perms field as the kernel printed it, e.g. 'rw-p'. */
  permsText: string;
  perms: VmaPerms;
  /** File offset in bytes. */
  offset: number;
  devMajor: number;
  devMinor: number;
  /** bigint because overlayfs (xino) and others hand out inode numbers above 2^53. */
  inode: bigint;
  /** Path with the ' (deleted)' suffix removed; '' for unnamed anonymous memory. */
  path: string;
  /** The kernel marked the backing file deleted. */
  deleted: boolean;
  kind: ProcVmaKind;
  shmem?: ShmemKind;
  /** For '[anon:name]' (PR_SET_VMA_ANON_NAME) and '[anon_shmem:name]'. */
  anonName?: string;
}

const MAPS_LINE = /^([0-9a-f]+)-([0-9a-f]+) ([r-][w-][x-][ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)(?: +(.*))?$/;

function decodePath(raw: string): string {
  // seq_path escapes only '\n' (as \012) in maps paths.
  return raw.replace(/\\012/g, '\n');
}

function addr(pid: number, file: string, hex: string): number {
  if (hex.length > 16) throw parseError(pid, file, `bad address ${hex}`);
  const v = BigInt(`0x${hex}`);
  if (v >= BigInt(USER_ADDR_LIMIT) && v !== BigInt(VSYSCALL_ADDR) && v !== BigInt(VSYSCALL_ADDR) + 4096n) {
    throw parseError(pid, file, `address 0x${hex} is outside x86-64 user space`);
  }
  return Number(v);
}

export function classifyVma(path: string, deleted: boolean, shared: boolean): Pick<ProcVma, 'kind' | 'shmem' | 'anonName'> {
  if (path === '') return { kind: 'anon' };
  if (path.startsWith('[')) {
    switch (path) {
      case '[heap]':
        return { kind: 'heap' };
      case '[stack]':
        return { kind: 'stack' };
      case '[vdso]':
        return { kind: 'vdso' };
      case '[vvar]':
        return { kind: 'vvar' };
      case '[vvar_vclock]':
        return { kind: 'vvar_vclock' };
      case '[vsyscall]':
        return { kind: 'vsyscall' };
    }
    if (path.startsWith('[stack:')) return { kind: 'stack' };
    let m = /^\[anon:(.*)\]$/s.exec(path);
    if (m) return { kind: 'anon', anonName: m[1] ?? '' };
    m = /^\[anon_shmem:(.*)\]$/s.exec(path);
    if (m) return { kind: 'shmem', shmem: 'anon_shmem_named', anonName: m[1] ?? '' };
    return { kind: 'special' };
  }
  // Shared anonymous memory is a shmem file the kernel names '/dev/zero (deleted)'; a
  // MAP_PRIVATE mapping of the real /dev/zero is ordinary anonymous memory.
  if (path === '/dev/zero') {
    if (deleted) return { kind: 'shmem', shmem: 'anon_shared' };
    if (!shared) return { kind: 'anon' };
  }
  if (deleted && /^\/SYSV[0-9a-f]{8}$/.test(path)) return { kind: 'shmem', shmem: 'sysv' };
  if (path.startsWith('/memfd:')) return { kind: 'shmem', shmem: 'memfd' };
  if (path.startsWith('/dev/shm/')) return { kind: 'shmem', shmem: 'posix_shm' };
  return { kind: 'file' };
}

export function parseMapsLine(pid: number, file: string, line: string): ProcVma {
  const m = MAPS_LINE.exec(line);
  if (!m) throw parseError(pid, file, `cannot parse line ${JSON.stringify(line)}`);
  const [, s, e, permsText = '', off = '0', maj = '0', min = '0', ino = '0', rawPath = ''] = m;
  const start = addr(pid, file, s ?? '');
  const end = addr(pid, file, e ?? '');
  if (end <= start || start % PAGE_SIZE !== 0 || end % PAGE_SIZE !== 0) {
    throw parseError(pid, file, `bad range ${s}-${e}`);
  }
  const offset = parseInt(off, 16);
  if (!Number.isSafeInteger(offset)) throw parseError(pid, file, `offset 0x${off} does not fit a JS number`);
  let path = decodePath(rawPath);
  let deleted = false;
  if (path.endsWith(' (deleted)')) {
    deleted = true;
    path = path.slice(0, -' (deleted)'.length);
  }
  const perms: VmaPerms = {
    read: permsText[0] === 'r',
    write: permsText[1] === 'w',
    exec: permsText[2] === 'x',
    shared: permsText[3] === 's',
  };
  const inode = BigInt(ino);
  const vma: ProcVma = {
    start,
    end,
    permsText,
    perms,
    offset,
    devMajor: parseInt(maj, 16),
    devMinor: parseInt(min, 16),
    inode,
    path,
    deleted,
    ...classifyVma(path, deleted, perms.shared),
  };
  return vma;
}

export function parseMaps(pid: number, text: string, file = `/proc/${pid}/maps`): ProcVma[] {
  const out: ProcVma[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    out.push(parseMapsLine(pid, file, line));
  }
  for (let i = 1; i < out.length; i++) {
    const a = out[i - 1];
    const b = out[i];
    if (a && b && b.start < a.end) throw parseError(pid, file, `overlapping or unsorted VMAs at 0x${b.start.toString(16)}`);
  }
  return out;
}

/** The VMAs of a process, in address order. */
export function readMaps(pid: number): ProcVma[] {
  const file = `${procDir(pid)}/maps`;
  return parseMaps(pid, readText(pid, file), file);
}

export function vmaSize(v: Pick<ProcVma, 'start' | 'end'>): number {
  return v.end - v.start;
}

/** The VMA containing addr, by binary search over sorted VMAs. */
export function findVma<T extends Pick<ProcVma, 'start' | 'end'>>(vmas: readonly T[], addr: number): T | undefined {
  let lo = 0;
  let hi = vmas.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = vmas[mid];
    if (!v) break;
    if (addr < v.start) hi = mid - 1;
    else if (addr >= v.end) lo = mid + 1;
    else return v;
  }
  return undefined;
}
