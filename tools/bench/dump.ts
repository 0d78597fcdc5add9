/**
 * Dump time and image size for a memhog, eager vs lazy: a lazy dump must not grow with
 * the memory size. Run: node --import tsx tools/bench/dump.ts [--phases] [--runs N] [--modes eager,lazy] [MiB...]
 * (default 64 1024). --phases prints where the time went (DumpResult.phaseMs), one line per run.
 */
import { mkdtemp, rm, stat, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump } from '../../packages/core-ts/src/index.js';
import { startWorkload } from '../workloads/index.js';

async function dirSize(dir: string): Promise<number> {
  let n = 0;
  for (const f of await readdir(dir)) n += (await stat(join(dir, f))).size;
  return n;
}

const args = process.argv.slice(2);
const showPhases = args.includes('--phases');
const flag = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const runs = Number(flag('--runs') ?? 1);
const modes = (flag('--modes') ?? 'eager,lazy').split(',').map((m) => (m === 'eager' ? 'kill' : m)) as Array<'kill' | 'lazy'>;
const sizes = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--runs' && args[i - 1] !== '--modes').map(Number).filter((n) => n > 0);
const work = await mkdtemp(join(tmpdir(), 'lazymig-bench-dump-'));
console.log('MiB    mode   dump ms  frozen ms  freeze ms  images');
try {
  for (const mib of sizes.length ? sizes : [64, 1024]) {
    for (const mode of modes) for (let run = 0; run < runs; run++) {
      const w = await startWorkload('memhog', [String(mib), '--interval-ms', '50'], { readyTimeoutMs: 120_000 });
      try {
        await w.waitForLine(/verify ok pass=1 /, 120_000);
        const dir = join(work, `${mib}-${mode}`);
        const t0 = performance.now();
        const r = await dump({ pid: w.pid, imagesDir: dir, mode, ...(mode === 'lazy' ? { pageServer: { address: '127.0.0.1', port: 1 } } : {}) });
        const ms = performance.now() - t0;
        r.frozen?.kill();
        const size = await dirSize(dir);
        console.log(
          `${String(mib).padEnd(6)} ${mode === 'kill' ? 'eager' : 'lazy '}  ${ms.toFixed(0).padStart(7)}  ${r.frozenMs.toFixed(0).padStart(9)}  ${r.freezeMs.toFixed(2).padStart(9)}  ${(size / 2 ** 20).toFixed(2)} MiB`,
        );
        if (showPhases) {
          const ph = Object.entries((r as { phaseMs?: Record<string, number> }).phaseMs ?? {}).filter(([, ms]) => ms >= 0.05);
          console.log('         ' + ph.map(([k, ms]) => `${k} ${ms.toFixed(ms < 10 ? 2 : 0)}`).join(', '));
        }
        await rm(dir, { recursive: true, force: true });
      } finally {
        w.kill();
      }
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
