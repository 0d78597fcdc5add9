import * as fs from 'node:fs';
import { startWorkload } from '../workloads/index.js';
import { PagemapReader, readSmaps } from '../../packages/core-ts/src/proc/index.js';
const w = await startWorkload('memhog', ['1024', '--interval-ms', '50'], { readyTimeoutMs: 120_000 });
try {
  await w.waitForLine(/verify ok pass=1 /, 120_000);
  process.kill(w.pid, 'SIGSTOP');
  const sm = readSmaps(w.pid);
  const big = sm.reduce((a, b) => (b.end - b.start > a.end - a.start ? b : a));
  for (let k = 0; k < 4; k++) {
    const fd = fs.openSync(`/proc/${w.pid}/pagemap`, 'r');
    const buf = Buffer.alloc(2 << 20);
    let t = performance.now();
    fs.readSync(fd, buf, 0, buf.length, big.start / 4096 * 8);
    const tRaw = performance.now() - t;
    fs.closeSync(fd);
    t = performance.now();
    const r = new PagemapReader(w.pid);
    const tNew = performance.now() - t;
    t = performance.now();
    r.read(big.start, big.end);
    const tPm = performance.now() - t;
    r.close();
    console.log(`raw ${tRaw.toFixed(1)} new ${tNew.toFixed(1)} read ${tPm.toFixed(1)}`);
  }
} finally {
  w.kill();
}
