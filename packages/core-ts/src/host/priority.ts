/**
 * Head starts run below the workload. A lazymig command that prepares itself (an armed
 * destination rehearsing while it waits for the images, a lazy dump rehearsing before its
 * freeze) shares the CPUs with a process that is still running and about to be migrated,
 * which should not stall for it.
 */
import { getPriority, setPriority } from 'node:os';

/** Nice value of a head start. */
const HEAD_START_NICE = 10;

/**
 * Runs `fn` with this (JS) thread at nice 10, then back. Only done where the nice value can
 * be lowered again (root): otherwise everything after it would run niced too.
 */
export async function niced<T>(fn: () => T | Promise<T>): Promise<T> {
  let before: number | null = null;
  if (process.getuid?.() === 0) {
    try {
      before = getPriority(0);
      setPriority(0, Math.max(before, HEAD_START_NICE));
    } catch {
      before = null;
    }
  }
  try {
    return await fn();
  } finally {
    if (before !== null) setPriority(0, before);
  }
}
