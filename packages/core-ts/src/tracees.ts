/**
 * Reaping tracees that were killed: a traced zombie cannot be reaped by its parent, so the
 * tracer must collect each exit itself. A thread-group leader is reported only after its
 * other threads, so this goes round until every one is collected, within a bound.
 */
import { ptrace } from '@lazymig/uffd-rs';

export function reapTracees(tids: Iterable<number>, boundMs = 2_000): void {
  const left = new Set(tids);
  const deadline = performance.now() + boundMs;
  while (left.size > 0 && performance.now() < deadline) {
    for (const tid of [...left]) {
      try {
        const st = ptrace.waitStop(tid, 20);
        if (st.kind === 'exited' || st.kind === 'killed') left.delete(tid);
      } catch (err) {
        // ETIMEDOUT: not yet; anything else: not ours to wait for any more.
        if ((err as { code?: string }).code !== 'ETIMEDOUT') left.delete(tid);
      }
    }
  }
}
