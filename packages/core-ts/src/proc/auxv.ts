import { parseError, procDir, readBinary } from './errors.js';

export const AT = {
  NULL: 0,
  IGNORE: 1,
  EXECFD: 2,
  PHDR: 3,
  PHENT: 4,
  PHNUM: 5,
  PAGESZ: 6,
  BASE: 7,
  FLAGS: 8,
  ENTRY: 9,
  NOTELF: 10,
  UID: 11,
  EUID: 12,
  GID: 13,
  EGID: 14,
  PLATFORM: 15,
  HWCAP: 16,
  CLKTCK: 17,
  SECURE: 23,
  BASE_PLATFORM: 24,
  RANDOM: 25,
  HWCAP2: 26,
  RSEQ_FEATURE_SIZE: 27,
  RSEQ_ALIGN: 28,
  HWCAP3: 29,
  HWCAP4: 30,
  EXECFN: 31,
  SYSINFO_EHDR: 33,
  MINSIGSTKSZ: 51,
} as const;

export interface AuxvEntry {
  type: number;
  /** u64 as the kernel stores it (pointers and flags alike). */
  value: bigint;
}

export interface Auxv {
  entries: AuxvEntry[];
  /**
   * The bytes up to and including AT_NULL, for PR_SET_MM_MAP which takes the vector verbatim.
   */
  raw: Buffer;
  get(type: number): bigint | undefined;
}

export function parseAuxv(pid: number, buf: Buffer, file = `/proc/${pid}/auxv`): Auxv {
  if (buf.length % 16 !== 0) throw parseError(pid, file, `length ${buf.length} is not a multiple of 16`);
  const entries: AuxvEntry[] = [];
  let end = buf.length;
  for (let off = 0; off < buf.length; off += 16) {
    const type = buf.readBigUInt64LE(off);
    const value = buf.readBigUInt64LE(off + 8);
    if (type === 0n) {
      end = off + 16;
      break;
    }
    if (type > 0xffffn) throw parseError(pid, file, `implausible type ${type}`);
    entries.push({ type: Number(type), value });
  }
  const raw = Buffer.from(buf.subarray(0, end));
  return {
    entries,
    raw,
    get: (type) => entries.find((e) => e.type === type)?.value,
  };
}

export function readAuxv(pid: number): Auxv {
  const file = `${procDir(pid)}/auxv`;
  return parseAuxv(pid, readBinary(pid, file), file);
}
