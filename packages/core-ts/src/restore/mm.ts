/**
 * The mm fields, auxv and /proc/PID/exe through one PR_SET_MM_MAP (works without
 * CAP_SYS_RESOURCE, unlike the single-field PR_SET_MM_* calls), then comm and personality.
 * exe_fd is refused with EBUSY while the stub's executable is still mapped: call this after
 * unmapStub.
 */
import type { CoreImage } from '../image/index.js';
import { PR, O, type Remote } from './remote.js';

/** sizeof(struct prctl_mm_map) */
export const PRCTL_MM_MAP_SIZE = 104;
/** sizeof(mm->saved_auxv) on x86-64: AT_VECTOR_SIZE (2 * (3 + 22 + 1)) words */
const SAVED_AUXV_BYTES = 52 * 8;

export function setMm(remote: Remote, core: CoreImage): void {
  const m = core.mm;
  const exeFd = remote.open(core.exe.path, O.RDONLY | O.CLOEXEC);
  try {
    const pairs = core.auxv.slice(0, SAVED_AUXV_BYTES / 16 - 1);
    const auxv = Buffer.alloc((pairs.length + 1) * 16);
    pairs.forEach(([t, v], i) => {
      auxv.writeBigUInt64LE(t, i * 16);
      auxv.writeBigUInt64LE(v, i * 16 + 8);
    });
    const scratch = remote.scratch!;
    scratch.reset();
    const auxvAt = scratch.put(auxv);
    const map = Buffer.alloc(PRCTL_MM_MAP_SIZE);
    const words = [m.startCode, m.endCode, m.startData, m.endData, m.startBrk, m.brk, m.startStack, m.argStart, m.argEnd, m.envStart, m.envEnd, auxvAt];
    words.forEach((w, i) => map.writeBigUInt64LE(BigInt(w), i * 8));
    map.writeUInt32LE(auxv.length, 96);
    map.writeUInt32LE(exeFd, 100);
    const mapAt = scratch.put(map);
    // prctl(PR_SET_MM, PR_SET_MM_MAP, &map, sizeof map, 0); scratch was filled above: no reset.
    remote.call('prctl(PR_SET_MM_MAP)', 157, [PR.SET_MM, PR.SET_MM_MAP, mapAt, PRCTL_MM_MAP_SIZE, 0], `exe ${core.exe.path}`);
  } finally {
    remote.raw(3, [exeFd]);
  }
  if (core.personality !== 0) remote.personality(core.personality);
  remote.setName(core.comm);
}
