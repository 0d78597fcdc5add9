import * as fs from 'node:fs';
import { parseError, procDir, readLink, readText, wrapFsError } from './errors.js';

export interface FileIdentity {
  /** readlink target without ' (deleted)'. */
  path: string;
  deleted: boolean;
  dev: bigint;
  ino: bigint;
  size: bigint;
  mode: number;
  mtimeNs: bigint;
}

function identity(pid: number, link: string): FileIdentity {
  const target = readLink(pid, link);
  const deleted = target.endsWith(' (deleted)');
  let s: fs.BigIntStats;
  try {
    s = fs.statSync(link, { bigint: true });
  } catch (e) {
    throw wrapFsError(pid, link, e);
  }
  return {
    path: deleted ? target.slice(0, -' (deleted)'.length) : target,
    deleted,
    dev: s.dev,
    ino: s.ino,
    size: s.size,
    mode: Number(s.mode),
    mtimeNs: s.mtimeNs,
  };
}

/** /proc/PID/exe with the identity a restore checks the binary against. */
export function readExe(pid: number): FileIdentity {
  return identity(pid, `${procDir(pid)}/exe`);
}

export function readCwd(pid: number): FileIdentity {
  return identity(pid, `${procDir(pid)}/cwd`);
}

export function readRoot(pid: number): string {
  return readLink(pid, `${procDir(pid)}/root`);
}

export function readComm(pid: number, tid?: number): string {
  return readText(pid, `${procDir(pid, tid)}/comm`).replace(/\n$/, '');
}

/** personality(2) flags (ADDR_NO_RANDOMIZE = 0x0040000, ...). */
export function readPersonality(pid: number): number {
  const file = `${procDir(pid)}/personality`;
  const t = readText(pid, file).trim();
  if (!/^[0-9a-f]+$/.test(t)) throw parseError(pid, file, `bad personality ${JSON.stringify(t)}`);
  return parseInt(t, 16);
}

/** argv as the process sees it now (it may have rewritten its own argument area). */
export function readCmdline(pid: number): string[] {
  const t = readText(pid, `${procDir(pid)}/cmdline`);
  const parts = t.split('\0');
  if (parts[parts.length - 1] === '') parts.pop();
  return parts;
}

/** Thread ids of a process, the main thread (tid == pid) first. */
export function listTids(pid: number): number[] {
  const dir = `${procDir(pid)}/task`;
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch (e) {
    throw wrapFsError(pid, dir, e);
  }
  const tids = names.filter((n) => /^\d+$/.test(n)).map(Number);
  return tids.sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
}
