import { parseError, procDir, readText } from './errors.js';

export interface IdSet {
  real: number;
  effective: number;
  saved: number;
  fs: number;
}

/** /proc/PID/status, the fields a dump needs typed; everything verbatim in `fields`. */
export interface ProcStatus {
  name: string;
  umask: number | undefined;
  state: string;
  tgid: number;
  pid: number;
  ppid: number;
  tracerPid: number;
  uid: IdSet;
  gid: IdSet;
  groups: number[];
  /** Pid in each pid namespace, outermost first. */
  nsPid: number[];
  nsTgid: number[];
  nsPgid: number[];
  nsSid: number[];
  threads: number;
  sigPnd: bigint;
  shdPnd: bigint;
  sigBlk: bigint;
  sigIgn: bigint;
  sigCgt: bigint;
  capInh: bigint;
  capPrm: bigint;
  capEff: bigint;
  capBnd: bigint;
  capAmb: bigint;
  noNewPrivs: number;
  seccomp: number;
  cpusAllowedList: string;
  fields: Record<string, string>;
}

/** Undoes the escaping of Name: (\n and \\ are escaped by the kernel). */
function unescapeName(s: string): string {
  return s.replace(/\\(n|\\)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
}

export function parseStatus(pid: number, text: string, file = `/proc/${pid}/status`): ProcStatus {
  const fields: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    fields[line.slice(0, i)] = line.slice(i + 1).replace(/^\s+/, '');
  }
  const get = (k: string): string => {
    const v = fields[k];
    if (v === undefined) throw parseError(pid, file, `no ${k} field`);
    return v;
  };
  const int = (k: string): number => {
    const v = get(k).trim();
    if (!/^-?\d+$/.test(v)) throw parseError(pid, file, `${k} ${JSON.stringify(v)} is not an integer`);
    return Number(v);
  };
  const ints = (k: string): number[] => {
    const v = (fields[k] ?? '').trim();
    return v === '' ? [] : v.split(/\s+/).map((x) => {
      if (!/^\d+$/.test(x)) throw parseError(pid, file, `${k} ${JSON.stringify(v)} is not a list of integers`);
      return Number(x);
    });
  };
  const hex = (k: string): bigint => {
    const v = get(k).trim();
    if (!/^[0-9a-fA-F]+$/.test(v)) throw parseError(pid, file, `${k} ${JSON.stringify(v)} is not hex`);
    return BigInt(`0x${v}`);
  };
  const ids = (k: string): IdSet => {
    const v = ints(k);
    if (v.length !== 4) throw parseError(pid, file, `${k} must have 4 ids`);
    const [real = 0, effective = 0, saved = 0, fsid = 0] = v;
    return { real, effective, saved, fs: fsid };
  };
  const umask = fields['Umask'];
  return {
    name: unescapeName(get('Name')),
    umask: umask === undefined ? undefined : parseInt(umask.trim(), 8),
    state: get('State').trim().charAt(0),
    tgid: int('Tgid'),
    pid: int('Pid'),
    ppid: int('PPid'),
    tracerPid: int('TracerPid'),
    uid: ids('Uid'),
    gid: ids('Gid'),
    groups: ints('Groups'),
    nsPid: ints('NSpid'),
    nsTgid: ints('NStgid'),
    nsPgid: ints('NSpgid'),
    nsSid: ints('NSsid'),
    threads: int('Threads'),
    sigPnd: hex('SigPnd'),
    shdPnd: hex('ShdPnd'),
    sigBlk: hex('SigBlk'),
    sigIgn: hex('SigIgn'),
    sigCgt: hex('SigCgt'),
    capInh: hex('CapInh'),
    capPrm: hex('CapPrm'),
    capEff: hex('CapEff'),
    capBnd: hex('CapBnd'),
    capAmb: hex('CapAmb'),
    noNewPrivs: fields['NoNewPrivs'] === undefined ? 0 : int('NoNewPrivs'),
    seccomp: fields['Seccomp'] === undefined ? 0 : int('Seccomp'),
    cpusAllowedList: (fields['Cpus_allowed_list'] ?? '').trim(),
    fields,
  };
}

export function readStatus(pid: number, tid?: number): ProcStatus {
  const file = `${procDir(pid, tid)}/status`;
  return parseStatus(pid, readText(pid, file), file);
}
