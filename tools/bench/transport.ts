/**
 * The page transport alone, without userfaultfd: a frozen 256 MiB memhog served by its page
 * server, fetched over loopback by a PageClient with 1..16 background requests in flight.
 * Client and server share this one process (and its JS thread), so the numbers are a floor
 * for the real two-process case. Run: node --import tsx tools/bench/transport.ts
 * (CH=<pages per request>, default 512).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dump, readImages, lazyRanges } from '../../packages/core-ts/src/index.js';
import { PageClient, serveFrozenTree } from '../../packages/pageserver/src/index.js';
import { startWorkload } from '../workloads/index.js';
const dir = await mkdtemp(join(tmpdir(), 'lazymig-bench-transport-'));
const w = await startWorkload('memhog', ['256', '--interval-ms', '50']);
await w.waitForLine(/verify ok pass=1 /, 60000);
const r = await dump({ pid: w.pid, imagesDir: join(dir, 'img'), mode: 'lazy', pageServer: { address: '127.0.0.1', port: 1 } });
const images = await readImages(join(dir, 'img'));
const server = await serveFrozenTree({ images, frozen: r.frozen!, token: r.token!, address: '127.0.0.1', port: 0 });
const client = await PageClient.connect({ address: '127.0.0.1', port: server.port, token: r.token! });
const ranges = lazyRanges(images.inventory, images.processes[0]!);
const CH = Number(process.env.CH ?? 512);
const chunks: Array<[number, number]> = [];
for (const rg of ranges) for (let i = 0; i < rg.pages; i += CH) chunks.push([rg.start + i * 4096, Math.min(CH, rg.pages - i)]);
for (const inflight of [1, 4, 8, 16]) {
  const t0 = performance.now(); let next = 0; let bytes = 0;
  await new Promise<void>((resolve) => {
    let active = 0;
    const go = () => {
      while (active < inflight && next < chunks.length) {
        const [a, n] = chunks[next++]!; active++;
        client.fetch(w.pid, a, n, 'background').then((d) => { bytes += d.length; active--; if (next >= chunks.length && active === 0) resolve(); else go(); });
      }
    };
    go();
  });
  const ms = performance.now() - t0;
  console.log(`inflight ${inflight}: ${(bytes / 2 ** 20).toFixed(0)} MiB in ${ms.toFixed(0)} ms = ${(bytes / 2 ** 20 / (ms / 1000)).toFixed(0)} MiB/s`);
}
await client.close(); await server.close(); r.frozen!.kill(); w.kill(); await rm(dir, { recursive: true, force: true });
