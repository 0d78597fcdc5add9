import * as fs from 'node:fs';
import { startWorkload } from '../workloads/index.js';
import { findSmallZeroPfn, readSmaps } from '../../packages/core-ts/src/proc/index.js';
const w = await startWorkload('memhog', ['1024', '--interval-ms', '50'], { readyTimeoutMs: 120_000 });
try {
  await w.waitForLine(/verify ok pass=1 /, 120_000);
  process.kill(w.pid, 'SIGSTOP');
  let t = performance.now();
  findSmallZeroPfn(); if (process.env.WARM) (await import("../../packages/core-ts/src/proc/pagemap.js")).warmPagemapDecoder();
  console.log('findSmallZeroPfn', (performance.now() - t).toFixed(1));
  const sm = readSmaps(w.pid);
  const { PagemapReader } = await import('../../packages/core-ts/src/proc/pagemap.js');
  if (process.env.RAW) {
    const big = sm.reduce((a, b) => (b.end - b.start > a.end - a.start ? b : a));
    const fd = fs.openSync(`/proc/${w.pid}/pagemap`, 'r');
    const buf = Buffer.alloc(2 << 20);
    t = performance.now();
    fs.readSync(fd, buf, 0, buf.length, big.start / 4096 * 8);
    console.log('raw first', (performance.now() - t).toFixed(1));
    fs.closeSync(fd);
  }
  for (let k = 0; k < 3; k++) {
    t = performance.now();
    const r = new PagemapReader(w.pid);
    let n = 0;
    for (const v of sm) { if (v.kind === 'vsyscall') continue; n += r.read(v.start, v.end).count; }
    r.close();
    console.log('all vmas', (performance.now() - t).toFixed(1), n);
  }
} finally {
  w.kill();
}
