import { parseError, procDir, readText, readTextOffThread } from './errors.js';
import { parseMapsLine } from './maps.js';
import type { ProcVma } from './maps.js';

/** Decoded VmFlags (two-letter codes from fs/proc/task_mmu.c show_smap_vma_flags). */
export interface VmFlags {
  /** 'ht' hugetlb mapping: not supported by a page-by-page dump. */
  hugetlb: boolean;
  /** 'sd' soft-dirty: only with CONFIG_MEM_SOFT_DIRTY (absent on this kernel). */
  softDirty: boolean;
  /** 'dd' MADV_DONTDUMP */
  dontDump: boolean;
  /** 'mg' MADV_MERGEABLE (KSM) */
  mergeable: boolean;
  /** 'wf' MADV_WIPEONFORK */
  wipeOnFork: boolean;
  /** 'dc' MADV_DONTFORK */
  dontCopy: boolean;
  /** 'sh' VM_SHARED */
  shared: boolean;
  /** 'ms' VM_MAYSHARE: set for every MAP_SHARED mapping, even a read-only one */
  mayShare: boolean;
  /** 'lo' mlocked, 'lf' MLOCK_ONFAULT */
  locked: boolean;
  lockOnFault: boolean;
  /** 'gd' grows down (the main stack) */
  growsDown: boolean;
  /** 'pf' / 'io' / 'mm': pfn, io or mixed mappings a dump cannot copy */
  pfnMap: boolean;
  io: boolean;
  mixedMap: boolean;
  /** 'hg' MADV_HUGEPAGE, 'nh' MADV_NOHUGEPAGE */
  hugePage: boolean;
  noHugePage: boolean;
  /** 'sr' MADV_SEQUENTIAL, 'rr' MADV_RANDOM */
  seqRead: boolean;
  randRead: boolean;
  /** 'um' / 'uw' / 'ui': registered with a userfaultfd (missing / write-protect / minor) */
  uffdMissing: boolean;
  uffdWp: boolean;
  uffdMinor: boolean;
  /** 'sl' mseal()ed, 'ss' shadow stack, 'dp' droppable */
  sealed: boolean;
  shadowStack: boolean;
  droppable: boolean;
}

const FLAG_CODES: Record<keyof VmFlags, string> = {
  hugetlb: 'ht',
  softDirty: 'sd',
  dontDump: 'dd',
  mergeable: 'mg',
  wipeOnFork: 'wf',
  dontCopy: 'dc',
  shared: 'sh',
  mayShare: 'ms',
  locked: 'lo',
  lockOnFault: 'lf',
  growsDown: 'gd',
  pfnMap: 'pf',
  io: 'io',
  mixedMap: 'mm',
  hugePage: 'hg',
  noHugePage: 'nh',
  seqRead: 'sr',
  randRead: 'rr',
  uffdMissing: 'um',
  uffdWp: 'uw',
  uffdMinor: 'ui',
  sealed: 'sl',
  shadowStack: 'ss',
  droppable: 'dp',
};

/** madvise() advice a restore must re-apply, keyed by the VmFlags code that reveals it. */
const MADVISE_BY_CODE: ReadonlyArray<readonly [string, string]> = [
  ['dd', 'MADV_DONTDUMP'],
  ['wf', 'MADV_WIPEONFORK'],
  ['dc', 'MADV_DONTFORK'],
  ['mg', 'MADV_MERGEABLE'],
  ['hg', 'MADV_HUGEPAGE'],
  ['nh', 'MADV_NOHUGEPAGE'],
  ['sr', 'MADV_SEQUENTIAL'],
  ['rr', 'MADV_RANDOM'],
];

const FLAG_ENTRIES = Object.entries(FLAG_CODES) as ReadonlyArray<readonly [keyof VmFlags, string]>;

export function decodeVmFlags(codes: readonly string[]): VmFlags {
  const set = new Set(codes);
  const out = {} as VmFlags;
  for (const [k, code] of FLAG_ENTRIES) out[k] = set.has(code);
  return out;
}

export function madviseFor(codes: readonly string[]): string[] {
  const set = new Set(codes);
  return MADVISE_BY_CODE.filter(([c]) => set.has(c)).map(([, name]) => name);
}

export interface SmapsVma extends ProcVma {
  /** Every "Key: N kB" line, in bytes (e.g. Rss, Pss, Anonymous, Swap, AnonHugePages). */
  stats: Record<string, number>;
  /** Other "Key: value" lines verbatim (THPeligible, ProtectionKey, ...). */
  extra: Record<string, string>;
  /** Raw VmFlags codes as printed. */
  vmFlagCodes: string[];
  vmFlags: VmFlags;
  /** madvise advice visible in VmFlags, to re-apply on restore. */
  madvise: string[];
}

/** A VMA of maps with the VmFlags smaps adds: all a dump needs of smaps (not its page counts). */
export type FlaggedVma = ProcVma & Pick<SmapsVma, 'vmFlagCodes' | 'vmFlags' | 'madvise'>;

const HEADER = /^[0-9a-f]+-[0-9a-f]+ /;
const KV = /^([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$/;
const KB = /^(\d+) kB$/;

type DecodedFlags = Pick<SmapsVma, 'vmFlagCodes' | 'vmFlags' | 'madvise'>;

/**
 * A VmFlags line's value, decoded. Memoized: a process's VMAs share a handful of flag sets,
 * and decoding each of 20,000 VMAs anew took a dump (frozen) a second and more. The result
 * is frozen, as every VMA with these flags holds the same one.
 */
const decodedFlags = new Map<string, DecodedFlags>();
const MEMO_MAX = 4096;
const NO_FLAGS = flagsOf('');

function flagsOf(printed: string): DecodedFlags {
  let d = decodedFlags.get(printed);
  if (d === undefined) {
    const codes = printed.split(/\s+/).filter((c) => c !== '');
    d = Object.freeze({
      vmFlagCodes: Object.freeze(codes) as string[],
      vmFlags: Object.freeze(decodeVmFlags(codes)),
      madvise: Object.freeze(madviseFor(codes)) as string[],
    });
    if (decodedFlags.size >= MEMO_MAX) decodedFlags.clear();
    decodedFlags.set(printed, d);
  }
  return d;
}

export function parseSmaps(pid: number, text: string, file = `/proc/${pid}/smaps`): SmapsVma[] {
  const out: SmapsVma[] = [];
  let cur: SmapsVma | undefined;
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (HEADER.test(line)) {
      cur = { ...parseMapsLine(pid, file, line), stats: {}, extra: {}, ...NO_FLAGS };
      out.push(cur);
      continue;
    }
    const m = KV.exec(line);
    if (!m || !cur) throw parseError(pid, file, `cannot parse line ${JSON.stringify(line)}`);
    const key = m[1] ?? '';
    const value = (m[2] ?? '').trim();
    if (key === 'VmFlags') {
      Object.assign(cur, flagsOf(value));
      continue;
    }
    const kb = KB.exec(value);
    if (kb) cur.stats[key] = Number(kb[1]) * 1024;
    else cur.extra[key] = value;
  }
  return out;
}

/** A header line (group 1) or a VmFlags line's value (group 2), found by the regex engine's own scan. */
const HEADER_OR_FLAGS = /^([0-9a-f]+-[0-9a-f]+ .*)$|^VmFlags:(.*)$/gm;

/**
 * The VMAs of smaps with their VmFlags, and nothing else of it: all a dump needs. The regex
 * engine finds the two lines of each VMA that matter among its ~25, so a process with tens
 * of thousands of VMAs costs a frozen dump the kernel's walk and little more (a JS loop over
 * every line took ~20 µs a VMA on Sparkplug).
 */
export function parseFlaggedVmas(pid: number, text: string, file = `/proc/${pid}/smaps`): FlaggedVma[] {
  const out: FlaggedVma[] = [];
  let cur: FlaggedVma | undefined;
  const re = new RegExp(HEADER_OR_FLAGS);
  for (let m = re.exec(text); m !== null; m = re.exec(text)) {
    if (m[1] !== undefined) {
      cur = Object.assign(parseMapsLine(pid, file, m[1]), NO_FLAGS);
      out.push(cur);
    } else {
      if (!cur) throw parseError(pid, file, 'VmFlags before any mapping');
      Object.assign(cur, flagsOf((m[2] ?? '').trim()));
    }
  }
  return out;
}

/** /proc/PID/smaps: the VMAs of maps plus per-VMA usage and VmFlags. Slower than maps (walks page tables). */
export function readSmaps(pid: number): SmapsVma[] {
  const file = `${procDir(pid)}/smaps`;
  return parseSmaps(pid, readText(pid, file), file);
}

/** /proc/PID/smaps read for its VMAs and VmFlags only (parseFlaggedVmas). */
export function readFlaggedVmas(pid: number): FlaggedVma[] {
  const file = `${procDir(pid)}/smaps`;
  return parseFlaggedVmas(pid, readText(pid, file), file);
}

/** readFlaggedVmas with the page-table walk on the thread pool (see readTextOffThread). */
export async function readFlaggedVmasOffThread(pid: number): Promise<FlaggedVma[]> {
  const file = `${procDir(pid)}/smaps`;
  return parseFlaggedVmas(pid, await readTextOffThread(pid, file), file);
}
