/**
 * Dump time and image size for a memhog, eager vs lazy: a lazy dump must not grow with
 * the memory size. Run: node --import tsx tools/bench/dump.ts [MiB...]   (default 64 1024)
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

const sizes = process.argv.slice(2).map(Number).filter((n) => n > 0);
const work = await mkdtemp(join(tmpdir(), 'lazymig-bench-dump-'));
console.log('MiB    mode   dump ms  frozen ms  freeze ms  images');
try {
  for (const mib of sizes.length ? sizes : [64, 1024]) {
    for (const mode of ['kill', 'lazy'] as const) {
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
        await rm(dir, { recursive: true, force: true });
      } finally {
        w.kill();
      }
    }
  }
} finally {
  await rm(work, { recursive: true, force: true });
}
