/**
 * Eager restore time for a memhog next to its dump time: pages/s and MiB/s written into the
 * restored process, with the tracer pinned to one CPU (default) and not, with and without
 * page checksums. Each restored memhog must go on verifying its memory (checked, then killed).
 * Run: node --import tsx tools/bench/restore.ts [--runs N] [MiB...]   (default 64 1024)
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, restore, type RestoreResult } from '../../packages/core-ts/src/index.js';
import { startWorkload, waitForLogLine } from '../workloads/index.js';

const args = process.argv.slice(2);
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const runs = Number(flag('--runs') ?? 1);
const sizes = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs').map(Number).filter((n) => n > 0);
const variants = [
  { name: 'pinned', pin: true, verifyPages: true },
  { name: 'unpinned', pin: false, verifyPages: true },
  { name: 'pinned,nocrc', pin: true, verifyPages: false },
];

function killRestored(r: RestoreResult): void {
  for (const pid of r.pids.values()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

const work = await mkdtemp(join(tmpdir(), 'lazymig-bench-restore-'));
console.log('MiB    variant        dump ms  restore ms  ratio  pages/s     MiB/s  syscalls  phases (ms)');
try {
  for (const mib of sizes.length ? sizes : [64, 1024]) {
    for (const v of variants) for (let run = 0; run < runs; run++) {
      const w = await startWorkload('memhog', [String(mib), '--interval-ms', '50'], { readyTimeoutMs: 120_000 });
      const dir = join(work, `${mib}-${v.name}-${run}`);
      try {
        await w.waitForLine(/verify ok pass=1 /, 120_000);
        const t0 = performance.now();
        await dump({ pid: w.pid, imagesDir: dir, mode: 'kill' });
        const dumpMs = performance.now() - t0;
        await w.exited;
        const since = w.logSize();
        const t1 = performance.now();
        const r = await restore({ imagesDir: dir, pin: v.pin, verifyPages: v.verifyPages });
        const ms = performance.now() - t1;
        try {
          const m = await waitForLogLine(w.logPath, /^verify (ok|FAILED).*/, 120_000, { since });
          if (m[1] !== 'ok') throw new Error(`restored memhog: ${m[0]}`);
        } finally {
          killRestored(r);
          await r.exited;
        }
        const pages = r.pages.present;
        const phases = Object.entries(r.phaseMs).map(([k, x]) => `${k} ${x.toFixed(x < 10 ? 1 : 0)}`).join(', ');
        console.log(
          `${String(mib).padEnd(6)} ${v.name.padEnd(13)} ${dumpMs.toFixed(0).padStart(8)}  ${ms.toFixed(0).padStart(10)}  ${(ms / dumpMs).toFixed(2).padStart(5)}  ` +
            `${((pages / ms) * 1000).toFixed(0).padStart(8)}  ${((pages * 4096) / 2 ** 20 / (ms / 1000)).toFixed(0).padStart(8)}  ${String(r.injectedSyscalls).padStart(8)}  ${phases}`,
        );
      } finally {
        w.kill();
        await rm(dir, { recursive: true, force: true });
      }
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
