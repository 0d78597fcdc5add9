/**
 * The whole lazy path inside one test process, without restore: a memhog is dumped lazily
 * and stays frozen; its page server serves it over loopback; a region of this process plays
 * the restored memory (at another address: the engine maps source to destination
 * addresses), registered with a userfaultfd; the
 * lazy-pages engine fills it from faults (a native thread touching pages) and from the
 * background. At the end the region equals the frozen memory, and the source is killed.
 */
import test, { type ExecutionContext } from 'ava';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { PAGE_SIZE, Userfaultfd, processVmRead, testing } from '@lazymig/uffd-rs';
import { createLogger, dump, LazyPagesEngine, lazyRanges, readImages, type DumpResult, type LoadedImages } from '@lazymig/core-ts';
import { startWorkload, type Workload } from '../../../tools/workloads/index.js';
import {
  BACKGROUND_PATH, decodeServer, encodeClient, frozenTreeContent, PageClient, PageServer, PROTOCOL_VERSION, readToken, serveFrozenTree,
} from '../src/index.js';

/** A memhog of `mib` MiB that has verified its memory once, killed at teardown; a temp dir. */
async function runningMemhog(t: ExecutionContext, mib: number): Promise<{ dir: string; w: Workload }> {
  const dir = await mkdtemp(join(tmpdir(), 'lazymig-xfer-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const w = await startWorkload('memhog', [String(mib), '--interval-ms', '10']);
  t.teardown(() => w.kill());
  await w.waitForLine(/verify ok pass=1 /, 20_000);
  return { dir, w };
}

/** A lazy dump of pid into dir/img; the tree stays frozen until teardown kills it. */
async function lazyDump(t: ExecutionContext, pid: number, dir: string, o: { port?: number; token?: string } = {}): Promise<DumpResult> {
  const r = await dump({ pid, imagesDir: join(dir, 'img'), mode: 'lazy', pageServer: { address: '127.0.0.1', port: o.port ?? 1 }, ...(o.token ? { token: o.token } : {}) });
  t.teardown(() => r.frozen?.kill());
  return r;
}

/** A memhog of `mib` MiB, dumped lazily and served by a page server on loopback (both gone at teardown). */
async function servedMemhog(
  t: ExecutionContext, mib: number,
): Promise<{ dir: string; w: Workload; r: DumpResult; images: LoadedImages; server: PageServer; log: string[] }> {
  const { dir, w } = await runningMemhog(t, mib);
  const r = await lazyDump(t, w.pid, dir);
  const images = await readImages(join(dir, 'img'));
  const log: string[] = [];
  const server = await serveFrozenTree({
    images, frozen: r.frozen!, token: r.token!, address: '127.0.0.1', port: 0, log: createLogger('page-server', { write: (l) => log.push(l) }),
  });
  t.teardown(() => server.close());
  return { dir, w, r, images, server, log };
}

/** Which of the client's lanes install their replies natively (PageClient's installBackground, installFaults). */
type Installing = 'none' | 'background' | 'both';

const throughEngine = test.macro({
  async exec(t, installing: Installing) {
  const { dir, w, images, server, log } = await servedMemhog(t, 8);
  const region = Number(/region=(0x[0-9a-f]+)/.exec(w.ready[0])![1]);
  const size = Number(/ size=(\d+)/.exec(w.ready[0])![1]);
  const expected = Buffer.alloc(size);
  processVmRead(w.pid, new Float64Array([region, size]), expected);

  // The "restored" memory: a mapping of our own, wherever the kernel puts it; its pages
  // come from the memhog's region at the same offsets.
  const at = testing.mapAnonymous(size);
  t.teardown(() => testing.unmap(at, size));
  const uffd = Userfaultfd.open();
  // Before the unmap (teardowns run last first): with the uffd still open (a failed
  // transfer), the unmap would wait for someone to read its event, forever.
  t.teardown(() => {
    if (!uffd.closed) uffd.close();
  });
  uffd.handshake(['eventRemove', 'eventUnmap']);
  uffd.register(at, size, { missing: true });

  const p = images.processes[0]!;
  const ranges = lazyRanges(images.inventory, p)
    .filter((x) => x.start >= region && x.start < region + size)
    .map((x) => ({ start: at + (x.start - region), src: x.start, pages: x.pages }));
  const client = await PageClient.connect({
    address: '127.0.0.1', port: server.port, token: await readToken(join(dir, 'img')), installBackground: installing !== 'none', installFaults: installing === 'both',
  });
  t.teardown(() => client.close());
  const engine = new LazyPagesEngine(client, { pageSize: PAGE_SIZE });
  engine.add({ pid: process.pid, sourcePid: p.pid, uffd, ranges });
  engine.start();
  // Faults while the background runs: every 7th page, from the end backwards.
  const touched = [];
  for (let a = at + size - PAGE_SIZE; a >= at; a -= 7 * PAGE_SIZE) touched.push(a);
  const touch = testing.touch({ addresses: touched });
  engine.seal();
  const [summary, seen] = await Promise.all([engine.done, touch]);

  const got = Buffer.alloc(size);
  // One read of the whole region: a million readU64 calls held the JS thread for seconds
  // under load, and the other variant's lanes, on the same thread, went silent.
  processVmRead(process.pid, new Float64Array([at, size]), got);
  t.true(got.equals(expected), 'the region equals the frozen memory');
  for (let i = 0; i < touched.length; i++) t.is(seen.values[i], expected.readBigUInt64LE(touched[i]! - at));
  t.is(summary.remaining, 0);
  t.is(summary.pagesByFault + summary.pagesByPrefetch + summary.pagesByBackground, summary.pagesTotal);
  t.true(summary.pagesTotal >= size / PAGE_SIZE);
  // This process's CPU over the transfer: some, and no more than every CPU for all of it
  // (a figure in the wrong unit would be 1000x off).
  t.true(summary.cpuMs > 0 && summary.cpuMs <= summary.totalMs * availableParallelism() + 20, `cpuMs ${summary.cpuMs}, totalMs ${summary.totalMs}`);
  await server.done;
  const exit = await w.exited;
  t.is(exit.signal, 'SIGKILL', 'the source was killed once every page was in');
  t.is(log.filter((l) => /session started.*streamed=true/.test(l)).length, 1, 'the background lane was served by a native stream');
  t.true(server.stats.pagesSent >= size / PAGE_SIZE, 'the streams\' pages count in the server\'s stats');
  // Every page the engine credits to a lane that installs natively was reported in by its receiver.
  if (installing === 'both') t.true(client.stats.pagesInstalled >= summary.pagesTotal, `${client.stats.pagesInstalled} of ${summary.pagesTotal} pages in through the receivers`);
  else if (installing === 'background') t.true(summary.pagesByBackground > 0 && client.stats.pagesInstalled >= summary.pagesByBackground, `${client.stats.pagesInstalled} pages in through the receiver`);
  else t.is(client.stats.pagesInstalled, 0);
  },
  title: (_, installing: Installing) =>
    `a frozen memhog region arrives intact through page server, client and engine${
      { none: '', background: ', background replies installed by the client\'s native receiver', both: ', every reply installed by the client\'s native receivers' }[installing]
    }`,
});

test(throughEngine, 'none');
test(throughEngine, 'background');
test(throughEngine, 'both');

test('a wrong token is refused with a reason, and pages outside the lazy ranges are not served', async (t) => {
  const { w, r, images, server } = await servedMemhog(t, 4);

  // Refused at once, however long the client would go on trying an unanswered server.
  await t.throwsAsync(PageClient.connect({ address: '127.0.0.1', port: server.port, token: 'f'.repeat(64), retryForMs: 600_000 }), {
    message: /refused us: wrong token/,
  });
  const client = await PageClient.connect({ address: '127.0.0.1', port: server.port, token: r.token! });
  t.teardown(() => client.close());
  // The stack's guard gap below the lowest VMA is never a lazy range.
  await t.throwsAsync(client.fetch(w.pid, 0x1000, 1, 'fault'), { message: /not a lazy range of the dump/ });
  const vdso = images.processes[0]!.core.vmas.find((v) => v.kind === 'vdso')!;
  await t.throwsAsync(client.fetch(w.pid, vdso.start, 1, 'fault'), { message: /not a lazy range/ });
  // The source is still frozen and intact: a disconnect does not end it.
  await client.close();
  t.is(w.exitInfo(), undefined);
});

test('a client that starts connecting before the page server listens gets through once it does', async (t) => {
  const { dir, w } = await runningMemhog(t, 4);
  const r = await lazyDump(t, w.pid, dir);
  const images = await readImages(join(dir, 'img'));
  const port = await freePort();

  const { connecting, connected } = await connectInBackground(port, r.token!, 30_000);
  t.false(connected(), 'nothing listens yet');
  const server = await serveFrozenTree({ images, frozen: r.frozen!, token: r.token!, address: '127.0.0.1', port });
  t.teardown(() => server.close());
  const client = await connecting;
  t.teardown(() => client.close());
  await firstLazyPageIsLive(t, client, images, w.pid, 'fault');
});

test('a client connects while its token is still on its way: only the hello waits for it; a token that never comes fails the connect', async (t) => {
  const { w, r, images, server } = await servedMemhog(t, 4);

  let giveToken!: (tok: string) => void;
  const token = new Promise<string>((resolve) => (giveToken = resolve));
  const { connecting, connected } = await connectInBackground(server.port, token, 10_000);
  t.false(connected(), 'no hello without the token');
  t.is(server.stats.sessions, 0);
  giveToken(r.token!);
  const client = await connecting;
  t.teardown(() => client.close());
  t.is(server.stats.sessions, 2, 'both lanes welcomed');
  await firstLazyPageIsLive(t, client, images, w.pid, 'fault');

  const never = Promise.reject(new Error('page-server.token: not there in time'));
  const err = await t.throwsAsync(PageClient.connect({ address: '127.0.0.1', port: server.port, token: never, retryForMs: 10_000 }));
  t.regex(err!.message, /page-server\.token: not there in time/);
});

/** The first lazy page, fetched on `lane`, is what the (frozen) process holds there. */
async function firstLazyPageIsLive(t: ExecutionContext, client: PageClient, images: LoadedImages, pid: number, lane: 'fault' | 'background'): Promise<void> {
  const lazy = lazyRanges(images.inventory, images.processes[0]!)[0]!;
  const page = await client.fetch(pid, lazy.start, 1, lane);
  const expected = Buffer.alloc(PAGE_SIZE);
  processVmRead(pid, new Float64Array([lazy.start, PAGE_SIZE]), expected);
  t.true(Buffer.from(page).equals(expected));
}

/** A PageClient.connect left running, looked at after 300 ms: has it got through yet? */
async function connectInBackground(port: number, token: string | Promise<string>, retryForMs: number): Promise<{ connecting: Promise<PageClient>; connected: () => boolean }> {
  let done = false;
  const connecting = PageClient.connect({ address: '127.0.0.1', port, token, retryForMs }).then((c) => ((done = true), c));
  connecting.catch(() => undefined);
  await new Promise((resolve) => setTimeout(resolve, 300));
  return { connecting, connected: () => done };
}

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise((resolve) => s.close(resolve));
  return port;
}

test('a page server listening before it has anything to serve welcomes nobody until it is opened', async (t) => {
  const { dir, w } = await runningMemhog(t, 4);
  const token = 'ab'.repeat(32);
  // As `dump --lazy-pages` does: listen (and check that it answers) before the freeze.
  const server = await PageServer.listen({ address: '127.0.0.1', port: 0, token, pageSize: PAGE_SIZE });
  t.teardown(() => server.close());
  await server.selfCheck();
  t.is(server.stats.sessions, 0, 'the self-check is no session');

  const r = await lazyDump(t, w.pid, dir, { port: server.port, token });
  const { connecting, connected } = await connectInBackground(server.port, token, 30_000);
  t.false(connected(), 'not welcomed before open()');
  t.is(server.stats.sessions, 0);

  const images = await readImages(join(dir, 'img'));
  server.open(frozenTreeContent(images, r.frozen!));
  const client = await connecting;
  t.teardown(() => client.close());
  t.is(server.stats.sessions, 2, 'both lanes');
  await firstLazyPageIsLive(t, client, images, w.pid, 'background');
});

// Serial: it measures this process's CPU, which the file's other tests would share.
for (const [lane, path] of [['the JS thread', '/'], ['a native stream', BACKGROUND_PATH]] as const) {
  test.serial(`a page server whose destination has stopped reading waits for it without spinning, then serves the rest (${lane})`, async (t) => {
    const { r, images, w, server, log } = await servedMemhog(t, 8);
    const lazy = lazyRanges(images.inventory, images.processes[0]!).find((x) => x.pages >= 256)!;
    const pages = Math.min(lazy.pages, 512);
    // Far more than the kernel's socket buffers on both ends (autotuned up to 32 + 4 MiB
    // here) and the JS server's 8 MiB of read-ahead: many of these requests have to wait
    // until the destination reads again.
    const requests = Math.ceil((96 << 20) / (pages * PAGE_SIZE));
    const sock = await rawLane(server.port, path);
    t.teardown(() => sock.destroy());
    const frames = [encodeClient({ type: 'hello', version: PROTOCOL_VERSION, token: r.token! })];
    for (let id = 1; id <= requests; id++) frames.push(encodeClient({ type: 'request', id, pid: w.pid, address: lazy.start, pages, priority: 'background' }));
    sock.pause(); // a destination that is busy elsewhere
    sock.write(Buffer.concat(frames.map((f) => maskedFrame(f))));

    // Until the server has read ahead as far as it may: its count stands still for 150 ms.
    let served = -1;
    for (let i = 0, still = 0; i < 100 && still < 3; i++) {
      await sleep(50);
      still = server.stats.requests === served ? still + 1 : 0;
      served = server.stats.requests;
    }
    t.true(served > 0 && served < requests, `${served} of ${requests} served while nothing is read; log:\n${log.join('')}`);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    await sleep(400);
    const c = process.cpuUsage(c0);
    const share = (c.user + c.system) / 1000 / (performance.now() - t0);
    // A server polling its queue every event-loop turn keeps this process on a CPU the whole
    // time (a share near 1); one that waits for its socket barely runs.
    t.true(share < 0.5, `the page server's process ran ${(share * 100).toFixed(0)}% of the time while it waited`);
    t.is(server.stats.requests, served, 'nothing more was served meanwhile');

    sock.resume();
    for (let i = 0; i < 500 && server.stats.requests < requests; i++) await sleep(20);
    t.is(server.stats.requests, requests, 'the rest is served once the destination reads');
  });
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** A bare WebSocket connection to the page server (opening handshake done), for sending frames by hand. */
async function rawLane(port: number, path = '/'): Promise<Socket> {
  const sock = connect({ host: '127.0.0.1', port });
  await once(sock, 'connect');
  sock.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  let head = '';
  while (!head.includes('\r\n\r\n')) head += ((await once(sock, 'data')) as [Buffer])[0].toString('latin1');
  if (!head.startsWith('HTTP/1.1 101')) throw new Error(`no upgrade: ${head.split('\r\n')[0]}`);
  return sock;
}

/** A client frame (binary unless said, masked with a zero key: every client frame must carry a mask). */
function maskedFrame(payload: Buffer, opcode = 0x2): Buffer {
  if (payload.length >= 126) throw new Error('small frames only');
  return Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | payload.length, 0, 0, 0, 0]), payload]);
}

/** Reads whole server frames off a raw lane, one at a time. */
function frameReader(sock: Socket): () => Promise<{ opcode: number; payload: Buffer }> {
  let buf = Buffer.alloc(0);
  const waiting: Array<() => void> = [];
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    waiting.splice(0).forEach((w) => w());
  });
  return async () => {
    for (let i = 0; i < 1000; i++) {
      if (buf.length >= 2) {
        let len = buf[1]! & 0x7f;
        let hdr = 2;
        if (len === 126) [len, hdr] = [buf.readUInt16BE(2), 4];
        else if (len === 127) [len, hdr] = [Number(buf.readBigUInt64BE(2)), 10];
        if (buf.length >= hdr + len) {
          const f = { opcode: buf[0]! & 0x0f, payload: buf.subarray(hdr, hdr + len) };
          buf = buf.subarray(hdr + len);
          return f;
        }
      }
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no frame within 5 s')), 5_000);
        waiting.push(() => (clearTimeout(timer), resolve()));
      });
    }
    throw new Error('frame never completed');
  };
}

test('the background lane is served by a native stream: pages as the process holds them, refusals and pings answered, hellos checked', async (t) => {
  const { r, images, w, server, log } = await servedMemhog(t, 4);
  const lazy = lazyRanges(images.inventory, images.processes[0]!).find((x) => x.pages >= 64)!;

  const bad = await rawLane(server.port, BACKGROUND_PATH);
  t.teardown(() => bad.destroy());
  const badFrames = frameReader(bad);
  bad.write(maskedFrame(encodeClient({ type: 'hello', version: PROTOCOL_VERSION, token: 'f'.repeat(64) })));
  t.deepEqual(decodeServer((await badFrames()).payload), { type: 'reject', reason: 'wrong token' });
  t.is((await badFrames()).opcode, 0x8, 'then a close frame');

  const sock = await rawLane(server.port, BACKGROUND_PATH);
  t.teardown(() => sock.destroy());
  const next = frameReader(sock);
  sock.write(maskedFrame(encodeClient({ type: 'hello', version: PROTOCOL_VERSION, token: r.token! })));
  t.deepEqual(decodeServer((await next()).payload), { type: 'welcome', version: PROTOCOL_VERSION });
  sock.write(maskedFrame(encodeClient({ type: 'request', id: 7, pid: w.pid, address: lazy.start, pages: 64, priority: 'background' })));
  const pages = decodeServer((await next()).payload);
  const expected = Buffer.alloc(64 * PAGE_SIZE);
  processVmRead(w.pid, new Float64Array([lazy.start, expected.length]), expected);
  t.like(pages, { type: 'pages', id: 7, pid: w.pid, address: lazy.start, pages: 64 });
  t.true(pages.type === 'pages' && Buffer.from(pages.data).equals(expected), 'the frozen process\'s pages');
  // The stack's guard gap below the lowest VMA is never a lazy range; the lane goes on.
  sock.write(maskedFrame(encodeClient({ type: 'request', id: 8, pid: w.pid, address: 0x1000, pages: 1, priority: 'background' })));
  t.deepEqual(decodeServer((await next()).payload), { type: 'error', id: 8, reason: `pid ${w.pid} 0x1000+1 pages is not a lazy range of the dump` });
  sock.write(maskedFrame(Buffer.from('are you there'), 0x9));
  t.deepEqual(await next(), { opcode: 0xa, payload: Buffer.from('are you there') });
  t.true(log.some((l) => /request refused.*address=0x1000/.test(l)), 'the refusal is logged');
  t.true(log.some((l) => /session started.*streamed=true/.test(l)));
  t.is(server.stats.requests, 2);
  // A close from the destination ends the session; the frozen source stays.
  sock.write(maskedFrame(Buffer.from([0x03, 0xe8]), 0x8));
  t.is((await next()).opcode, 0x8);
  for (let i = 0; i < 100 && !log.some((l) => /session ended/.test(l)); i++) await sleep(20);
  t.true(log.some((l) => /session ended/.test(l)));
  t.is(w.exitInfo(), undefined);
});
