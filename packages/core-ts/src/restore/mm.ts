/**
 * The mm fields, auxv and /proc/PID/exe through one PR_SET_MM_MAP (works without
 * CAP_SYS_RESOURCE, unlike the single-field PR_SET_MM_* calls), then comm and personality.
 * exe_fd is refused with EBUSY while the stub's executable is still mapped: call this after
 * unmapStub.
 */
import { readlinkSync } from 'node:fs';
import type { CoreImage } from '../image/index.js';
import { PR, O, RemoteSyscallError, SYS, type Remote } from './remote.js';

/** sizeof(struct prctl_mm_map) */
export const PRCTL_MM_MAP_SIZE = 104;
/** sizeof(mm->saved_auxv) on x86-64: AT_VECTOR_SIZE (2 * (3 + 22 + 1)) words */
const SAVED_AUXV_BYTES = 52 * 8;

function exePath(pid: number): string | null {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return null;
  }
}

export function setMm(remote: Remote, core: CoreImage): void {
  const m = core.mm;
  // Already the exe (a rehearsal restores a stub): exe_fd -1 leaves it. Setting it would
  // fail with EBUSY, the old exe being mapped again by the restored layout.
  const same = exePath(remote.pid) === core.exe.path;
  const exeFd = same ? -1 : remote.open(core.exe.path, O.RDONLY | O.CLOEXEC);
  const list = remote.list();
  const pairs = core.auxv.slice(0, SAVED_AUXV_BYTES / 16 - 1);
  const auxv = Buffer.alloc((pairs.length + 1) * 16);
  pairs.forEach(([t, v], i) => {
    auxv.writeBigUInt64LE(t, i * 16);
    auxv.writeBigUInt64LE(v, i * 16 + 8);
  });
  const auxvAt = list.put(auxv);
  const map = Buffer.alloc(PRCTL_MM_MAP_SIZE);
  const words = [m.startCode, m.endCode, m.startData, m.endData, m.startBrk, m.brk, m.startStack, m.argStart, m.argEnd, m.envStart, m.envEnd, auxvAt];
  words.forEach((w, i) => map.writeBigUInt64LE(BigInt(w), i * 8));
  map.writeUInt32LE(auxv.length, 96);
  map.writeUInt32LE(exeFd >>> 0, 100);
  const comm = Buffer.alloc(16);
  comm.write(core.comm.slice(0, 15), 'utf8');
  // The exe fd is closed whatever happens to the prctl (the call after it).
  list.add('prctl(PR_SET_MM_MAP)', SYS.prctl, [PR.SET_MM, PR.SET_MM_MAP, list.put(map), PRCTL_MM_MAP_SIZE, 0], { detail: `exe ${core.exe.path}`, goOn: true });
  if (exeFd >= 0) list.add('close', SYS.close, [exeFd], { goOn: true });
  if (core.personality !== 0) list.add('personality', SYS.personality, [core.personality]);
  list.add('prctl(PR_SET_NAME)', SYS.prctl, [PR.SET_NAME, list.put(comm), 0, 0, 0], { detail: `comm ${core.comm}` });
  const [setMap] = list.run();
  if (setMap! < 0n) throw new RemoteSyscallError(remote.pid, remote.tid, `prctl(PR_SET_MM, PR_SET_MM_MAP, ..., ${PRCTL_MM_MAP_SIZE})`, Number(-setMap!), `exe ${core.exe.path}`);
}
