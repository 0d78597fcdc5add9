/**
 * [vvar], [vvar_vclock] and [vdso] moved to where the dumped process had them. They must
 * keep their relative layout (the vdso code finds its data pages at fixed offsets), so all
 * three move, each with its own mremap; when a destination overlaps where one of them is
 * now, they go through a temporary hole first. Sizes were checked by plan.ts.
 */
import type { ProcVma } from '../proc/index.js';
import type { Vma } from '../image/index.js';
import { RestoreError, hex } from './errors.js';
import { SPECIAL_KINDS, findHole, type Range } from './plan.js';
import { MREMAP, SYS, type Remote } from './remote.js';

function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

export function moveSpecialMappings(remote: Remote, current: readonly ProcVma[], dumped: readonly Vma[], avoid: readonly Range[]): number {
  const cur = SPECIAL_KINDS.map((k) => current.find((v) => v.kind === k));
  const dst = SPECIAL_KINDS.map((k) => dumped.find((v) => v.kind === k));
  const list = remote.list();
  if (dst.every((d) => d === undefined)) {
    // The dumped process had no vdso (vdso=0): take ours away too.
    for (const c of cur) if (c) list.add('munmap', SYS.munmap, [c.start, c.end - c.start]);
    list.run();
    return 0;
  }
  const pairs = cur.map((c, i) => ({ kind: SPECIAL_KINDS[i]!, c, d: dst[i] }));
  for (const p of pairs) {
    if (!p.c || !p.d || p.c.end - p.c.start !== p.d.end - p.d.start)
      throw new RestoreError(`pid ${remote.pid}: [${p.kind}] cannot be moved to the dumped layout (sizes differ)`, 'unsupported');
  }
  const cross = pairs.some((p) => p.c!.start !== p.d!.start && pairs.some((q) => overlaps(p.d!, q.c!)));
  if (cross) {
    // Through a temporary hole, keeping the group's layout.
    const lo = Math.min(...pairs.map((p) => p.c!.start));
    const hi = Math.max(...pairs.map((p) => p.c!.end));
    const tmp = findHole([...avoid, ...pairs.map((p) => p.c!), ...pairs.map((p) => p.d!)], hi - lo);
    for (const p of pairs) {
      const to = tmp + (p.c!.start - lo);
      list.add('mremap', SYS.mremap, [p.c!.start, p.c!.end - p.c!.start, p.c!.end - p.c!.start, MREMAP.MAYMOVE | MREMAP.FIXED, to], { detail: `[${p.kind}] to a temporary ${hex(to)}` });
      p.c = { ...p.c!, start: to, end: to + (p.c!.end - p.c!.start) };
    }
  }
  for (const p of pairs) {
    if (p.c!.start === p.d!.start) continue;
    const len = p.c!.end - p.c!.start;
    list.add('mremap', SYS.mremap, [p.c!.start, len, len, MREMAP.MAYMOVE | MREMAP.FIXED, p.d!.start], { detail: `[${p.kind}] to ${hex(p.d!.start)}` });
  }
  // In one trip: the moves are computed up front, and each lands where it was told (FIXED).
  return list.run().length;
}
