import * as fs from 'node:fs';
import { startWorkload } from '../workloads/index.js';
import { PagemapReader, readSmaps, readFds } from '../../packages/core-ts/src/proc/index.js';
const w = await startWorkload('memhog', ['1024', '--interval-ms', '50'], { readyTimeoutMs: 120_000 });
try {
  await w.waitForLine(/verify ok pass=1 /, 120_000);
  process.kill(w.pid, 'SIGSTOP');
  for (let k = 0; k < 3; k++) {
    let t = performance.now();
    const sm = readSmaps(w.pid);
    const tSm = performance.now() - t;
    t = performance.now();
    const raw = fs.readFileSync(`/proc/${w.pid}/smaps`);
    const tRaw = performance.now() - t;
    t = performance.now();
    readFds(w.pid);
    const tFds = performance.now() - t;
    const big = sm.reduce((a, b) => (b.end - b.start > a.end - a.start ? b : a));
    t = performance.now();
    const r = new PagemapReader(w.pid);
    const runs = r.read(big.start, big.end);
    r.close();
    const tPm = performance.now() - t;
    const fd = fs.openSync(`/proc/${w.pid}/pagemap`, 'r');
    const buf = Buffer.alloc(2 << 20);
    t = performance.now();
    for (let a = big.start; a < big.end; a += (2 << 20) / 8 * 4096) fs.readSync(fd, buf, 0, Math.min(buf.length, (big.end - a) / 4096 * 8), a / 4096 * 8);
    const tPmRaw = performance.now() - t;
    fs.closeSync(fd);
    console.log(`smaps ${tSm.toFixed(1)} (raw read ${tRaw.toFixed(1)}, ${raw.length} B), fds ${tFds.toFixed(1)}, pagemap ${((big.end - big.start) / 2 ** 20).toFixed(0)} MiB: ${tPm.toFixed(1)} ms (raw read ${tPmRaw.toFixed(1)}), ${runs.count} runs`);
  }
} finally {
  w.kill();
}
