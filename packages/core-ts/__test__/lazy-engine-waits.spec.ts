/**
 * A fault on a page whose background request is already on its way waits for that reply
 * rather than ask the source for the page a second time; a reply that ends short serves
 * its waiting faults anew. Played with a page source that installs into a uffd of this
 * process, and a native thread that touches the memory (a fault blocks it, not JS).
 */
import test, { type ExecutionContext } from 'ava';
import { PAGE_SIZE, Userfaultfd, testing } from '@lazymig/uffd-rs';
import { LazyPagesEngine } from '../src/lazy/engine.js';
import type { InstalledPages, InstallingFetch, PageSource, Priority } from '../src/lazy/page-source.js';

const P = PAGE_SIZE;
const PAGES = 16;

/** A page as the source sends it: its first u64 is its address. */
function stamped(address: number): Buffer {
  const b = Buffer.alloc(P);
  b.writeBigUInt64LE(BigInt(address));
  return b;
}

interface Request {
  lane: Priority;
  address: number;
  pages: number;
  /** Installs the pages and reports them in ('done'), or reports none in ('stale'). */
  settle(end: 'done' | 'stale'): void;
}

/**
 * Installs what it is asked for into `uffd`, as lazymig's page client does with its own
 * threads: fault requests at once, background ones too except the first, which waits for
 * the test to settle it. Nothing is installed ahead of time (installNow: never).
 */
class InstallingSource implements PageSource {
  readonly requests: Request[] = [];
  readonly installedLanes = new Set<Priority>(['background', 'fault']);

  constructor(private readonly uffd: Userfaultfd) {}

  fetch(): Promise<Uint8Array> {
    return Promise.reject(new Error('this source only installs'));
  }

  readonly fetchInstalled = (_pid: number, address: number, pages: number, _into: unknown, lane: Priority): InstallingFetch => {
    let resolve!: (r: InstalledPages) => void;
    const done = new Promise<InstalledPages>((r) => (resolve = r));
    const request: Request = {
      lane,
      address,
      pages,
      settle: (end) => {
        // After the test's teardown the uffd is closed: then there is nothing to install into.
        if (end === 'done' && !this.uffd.closed) for (let i = 0; i < pages; i++) this.uffd.copy(address + i * P, stamped(address + i * P));
        resolve({ bytes: end === 'done' ? pages * P : 0, end });
      },
    };
    const held = lane === 'background' && !this.requests.some((r) => r.lane === 'background');
    this.requests.push(request);
    if (!held) setImmediate(() => request.settle('done'));
    return { done, present: () => undefined, installNow: () => false };
  };

  lane(lane: Priority): Request[] {
    return this.requests.filter((r) => r.lane === lane);
  }

  complete(): Promise<void> {
    return Promise.resolve();
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** Polls `cond` (bounded): the engine works on the event loop, between these polls. */
async function until(cond: () => boolean, what: string, ms = 5_000): Promise<void> {
  for (const end = Date.now() + ms; !cond(); ) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

/** An engine serving PAGES lazy pages of this process, one background request for all of them. */
function setUp(t: ExecutionContext): { engine: LazyPagesEngine; source: InstallingSource; start: number } {
  const start = testing.mapAnonymous(PAGES * P);
  const uffd = Userfaultfd.open();
  uffd.handshake([]);
  uffd.register(start, PAGES * P, { missing: true });
  const source = new InstallingSource(uffd);
  const engine = new LazyPagesEngine(source, { pageSize: P, chunkPages: PAGES, inFlight: 1 });
  t.teardown(async () => {
    // Closing the uffd lets a thread still blocked in a fault go on (with a zero page).
    await engine.abort(new Error('test over')).catch(() => undefined);
    if (!uffd.closed) uffd.close();
    testing.unmap(start, PAGES * P);
  });
  engine.add({ pid: 0, sourcePid: 1, uffd, ranges: [{ start, pages: PAGES }] });
  engine.start();
  engine.seal();
  return { engine, source, start };
}

/** `p`, or a hang named. */
async function within<T>(p: Promise<T>, what: string, ms = 5_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

test('a fault on a page already on its way waits for its reply: the source is not asked for it again', async (t) => {
  const { engine, source, start } = setUp(t);
  await until(() => source.lane('background').length === 1, 'the background request');
  const touched = testing.touch({ addresses: [start + 5 * P] });
  await until(() => engine.stats.faultsWaited === 1, 'the fault waiting');
  t.is(source.lane('fault').length, 0, 'no fault request for a page already asked for');

  source.requests[0]!.settle('done');
  t.deepEqual([...(await within(touched, 'the touch')).values], [BigInt(start + 5 * P)], 'the reply woke the thread with its page');
  const summary = await within(engine.done, 'the transfer');
  t.is(source.lane('fault').length, 0);
  t.is(summary.faults, 1);
  t.is(summary.faultsWaited, 1);
  t.is(summary.faultServiceUs.count, 1, 'its wait counts in the service times');
  t.is(summary.pagesByBackground, PAGES);
});

test('a fault that waited for a reply which ended short is served anew', async (t) => {
  const { engine, source, start } = setUp(t);
  await until(() => source.lane('background').length === 1, 'the background request');
  const touched = testing.touch({ addresses: [start + 5 * P] });
  await until(() => engine.stats.faultsWaited === 1, 'the fault waiting');

  // As after an event read since the pages were asked for: nothing of them went in.
  source.requests[0]!.settle('stale');
  t.deepEqual([...(await within(touched, 'the touch')).values], [BigInt(start + 5 * P)], 'the thread got its page all the same');
  const faultRequests = source.lane('fault');
  t.is(faultRequests.length, 1, 'asked for on the fault lane once its reply had failed it');
  t.is(faultRequests[0]!.address, start + 5 * P);
  const summary = await within(engine.done, 'the transfer');
  t.is(summary.faults, 1, 'served twice, counted once');
  t.is(summary.pagesByFault, 1);
  t.is(summary.pagesByFault + summary.pagesByPrefetch + summary.pagesByBackground, PAGES);
});
