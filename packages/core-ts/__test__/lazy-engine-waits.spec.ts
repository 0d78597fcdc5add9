/**
 * A fault on a page whose background request is already on its way waits for that reply
 * rather than ask the source for the page a second time; a reply that ends short serves
 * its waiting faults anew. Played with a page source that installs into a uffd of this
 * process, and a native thread that touches the memory (a fault blocks it, not JS).
 */
import test, { type ExecutionContext } from 'ava';
import { PAGE_SIZE, Userfaultfd, testing, type UffdFeature } from '@lazymig/uffd-rs';
import { LazyPagesEngine } from '../src/lazy/engine.js';
import type { InstalledPages, InstallingFetch, PageSource, Priority } from '../src/lazy/page-source.js';

const P = PAGE_SIZE;
const PAGES = 16;
/** Background requests of 4 pages, one at a time: the first two come at once, the third waits for the test. */
const CHUNK = 4;
const HELD = 2;
/** A page of the held request. */
const FAULTING = HELD * CHUNK + 1;

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
 * threads: at once, unless `held` says (by lane and order) that a request waits for the
 * test to settle it. Nothing is installed ahead of time (installNow: never).
 */
class InstallingSource implements PageSource {
  readonly requests: Request[] = [];
  readonly installedLanes = new Set<Priority>(['background', 'fault']);
  /** Where the page of source address `src` is in the process now (a test that moves memory says). */
  where = (src: number): number => src;

  constructor(
    private readonly uffd: Userfaultfd,
    private readonly held: (lane: Priority, nth: number) => boolean,
  ) {}

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
        if (end === 'done' && !this.uffd.closed) for (let i = 0; i < pages; i++) this.uffd.copy(this.where(address + i * P), stamped(address + i * P));
        resolve({ bytes: end === 'done' ? pages * P : 0, end });
      },
    };
    const held = this.held(lane, this.lane(lane).length);
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

/** An engine serving PAGES lazy pages of this process in background requests of CHUNK pages, `inFlight` at a time. */
interface Setup {
  engine: LazyPagesEngine;
  source: InstallingSource;
  start: number;
  /** Reads the first u64 of `page` (or of `address`) on a native thread (a fault blocks that thread). */
  touch(page: number): Promise<bigint>;
  touchAt(address: number): Promise<bigint>;
}

function setUp(t: ExecutionContext, held: (lane: Priority, nth: number) => boolean, inFlight = 1, features: UffdFeature[] = []): Setup {
  const start = testing.mapAnonymous(PAGES * P);
  const uffd = Userfaultfd.open();
  uffd.handshake(features);
  uffd.register(start, PAGES * P, { missing: true });
  const source = new InstallingSource(uffd, held);
  const engine = new LazyPagesEngine(source, { pageSize: P, chunkPages: CHUNK, inFlight });
  const touches: Promise<unknown>[] = [];
  t.teardown(async () => {
    // A transfer the test left unfinished ends here: that rejection is nobody's failure.
    engine.done.catch(() => undefined);
    await engine.abort(new Error('test over')).catch(() => undefined);
    // Closing the uffd lets a thread still blocked in a fault go on (with a zero page); the
    // memory goes only once it has.
    if (!uffd.closed) uffd.close();
    await Promise.allSettled(touches);
    testing.unmap(start, PAGES * P);
  });
  engine.add({ pid: 0, sourcePid: 1, uffd, ranges: [{ start, pages: PAGES }] });
  engine.start();
  engine.seal();
  const touchAt = async (address: number): Promise<bigint> => {
    const touched = testing.touch({ addresses: [address] });
    touches.push(touched);
    return (await within(touched, `the touch of 0x${address.toString(16)}`)).values[0]!;
  };
  return { engine, source, start, touch: (page) => touchAt(start + page * P), touchAt };
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

/** A thread faulting on a page of the HELD-th background request, its fault left waiting for that reply. */
async function faultWaitingForHeldReply(t: ExecutionContext): Promise<Setup & { held: Request; touched: Promise<bigint> }> {
  const setup = setUp(t, (lane, nth) => lane === 'background' && nth === HELD);
  const { engine, source, start, touch } = setup;
  await until(() => source.lane('background').length === HELD + 1, 'the held background request');
  const held = source.lane('background')[HELD]!;
  t.is(held.address, start + HELD * CHUNK * P);
  const touched = touch(FAULTING);
  await until(() => engine.stats.faultsWaited === 1, 'the fault waiting');
  return { ...setup, held, touched };
}

test('a fault on a page already on its way waits for its reply: the source is not asked for it again', async (t) => {
  const { engine, source, start, held, touched } = await faultWaitingForHeldReply(t);
  t.is(source.lane('fault').length, 0, 'no fault request for a page already asked for');

  held.settle('done');
  t.is(await touched, BigInt(start + FAULTING * P), 'the reply woke the thread with its page');
  const summary = await within(engine.done, 'the transfer');
  t.is(source.lane('fault').length, 0);
  t.is(summary.faults, 1);
  t.is(summary.faultsWaited, 1);
  t.is(summary.faultServiceUs.count, 1, 'its wait counts in the service times');
  t.is(summary.waitedServiceUs.count, 1, 'as a wait for pages on their way');
  t.is(summary.otherServiceUs.count, 0);
  t.is(summary.pagesByBackground, PAGES);
});

test('a fault that waited for a reply which ended short is served anew', async (t) => {
  const { engine, source, start, held, touched } = await faultWaitingForHeldReply(t);

  // As after an event read since the pages were asked for: nothing of them went in.
  held.settle('stale');
  t.is(await touched, BigInt(start + FAULTING * P), 'the thread got its page all the same');
  const faultRequests = source.lane('fault');
  t.is(faultRequests.length, 1, 'asked for on the fault lane once its reply had failed it');
  t.is(faultRequests[0]!.address, start + FAULTING * P);
  const summary = await within(engine.done, 'the transfer');
  t.is(summary.faults, 1, 'served twice, counted once');
  t.is(summary.otherServiceUs.count, 1, 'served by its own request in the end');
  t.is(summary.waitedServiceUs.count, 0);
  t.is(summary.pagesByFault, 1);
  t.is(summary.pagesByFault + summary.pagesByPrefetch + summary.pagesByBackground, PAGES);
});

test('a fault several requests behind the one being read is asked for on the fault lane; one near it waits', async (t) => {
  // Every background request in flight at once (all four) and none answered yet.
  const { engine, source, start, touch } = setUp(t, (lane) => lane === 'background', 4);
  await until(() => source.lane('background').length === 4, 'the four background requests');
  const far = touch(3 * CHUNK + 1);
  await until(() => source.lane('fault').length === 1, 'the fault request');
  t.is(source.lane('fault')[0]!.address, start + (3 * CHUNK + 1) * P, 'three requests ahead of its own: asked for again');
  t.is(await far, BigInt(start + (3 * CHUNK + 1) * P));
  const near = touch(CHUNK + 1);
  await until(() => engine.stats.faultsWaited === 1, 'the near fault waiting');
  t.is(source.lane('fault').length, 1, 'one request ahead of its own: no second fault request');
  for (const r of source.lane('background')) r.settle('done');
  t.is(await near, BigInt(start + (CHUNK + 1) * P));
  await within(engine.done, 'the transfer');
});

test('an mremap while a fault waits: the fault is served anew, and the moved pages are served where they went', async (t) => {
  // The second background request (pages 4..7) waits for the test.
  const { engine, source, start, touch, touchAt } = setUp(t, (lane, nth) => lane === 'background' && nth === 1, 1, ['eventRemap']);
  const moved = testing.mapAnonymous(8 * P);
  t.teardown(() => testing.unmap(moved, 8 * P));
  await until(() => source.lane('background').length === 2, 'the held background request');
  const waiting = touch(5);
  await until(() => engine.stats.faultsWaited === 1, 'the fault waiting');

  // Pages 8..15 move (mremap stales every install asked for before it), and then the
  // held reply ends short, as the gate makes it.
  await within(testing.mremapOnThread(start + 8 * P, 8 * P, 8 * P, moved), 'the mremap');
  source.where = (src) => (src >= start + 8 * P ? moved + (src - start - 8 * P) : src);
  source.lane('background')[1]!.settle('stale');

  t.is(await waiting, BigInt(start + 5 * P), 'the waiting fault got its page all the same');
  t.is(await touchAt(moved + P), BigInt(start + 9 * P), 'a moved page is served where it went, from where it was dumped');
  const summary = await within(engine.done, 'the transfer');
  t.is(summary.pagesByFault + summary.pagesByPrefetch + summary.pagesByBackground, PAGES);
});

test('a thread whose page is dropped (MADV_DONTNEED) while its fault request is out is woken, and reads zeros', async (t) => {
  // The first fault request waits for the test; background requests never come.
  const { source, start, touch } = setUp(t, (lane, nth) => lane === 'background' || nth === 0, 1, ['eventRemove']);
  await until(() => source.lane('background').length === 1, 'the background request');
  const faulting = 3 * CHUNK + 1; // not in the first background request: asked for on the fault lane
  const waiting = touch(faulting);
  await until(() => source.lane('fault').length === 1, 'the fault request');
  await within(testing.madviseOnThread(start + faulting * P, P, 'dontneed'), 'the madvise');
  // The reply comes after the event: nothing of it may go in (as the gate sees to).
  source.lane('fault')[0]!.settle('stale');
  t.is(await waiting, 0n, 'a dropped page reads as zeros, as it would have without lazymig');
});

test('a fault whose own request ends short (an event since it was asked for) is asked for again', async (t) => {
  // The first fault request waits for the test; background requests never come.
  const { source, start, touch } = setUp(t, (lane, nth) => lane === 'background' || nth === 0);
  await until(() => source.lane('background').length === 1, 'the background request');
  const faulting = 3 * CHUNK + 1;
  const waiting = touch(faulting);
  await until(() => source.lane('fault').length === 1, 'the fault request');
  source.lane('fault')[0]!.settle('stale');
  t.is(await waiting, BigInt(start + faulting * P), 'served by a second request');
  t.deepEqual(
    source.lane('fault').map((r) => r.address),
    [start + faulting * P, start + faulting * P],
  );
});

test('a fault right after a page that is in or on its way asks for a window: the faults before it may never have reached the engine', async (t) => {
  // Every background request in flight, none answered: the page before the fault is on its way.
  const { source, start, touch } = setUp(t, (lane) => lane === 'background', 4);
  await until(() => source.lane('background').length === 4, 'the four background requests');
  const far = touch(3 * CHUNK + 1);
  await until(() => source.lane('fault').length === 1, 'the fault request');
  const request = source.lane('fault')[0]!;
  t.is(request.address, start + (3 * CHUNK + 1) * P);
  t.true(request.pages > 1, `a window of ${request.pages} page(s), as for a thread reading in order`);
  t.is(await far, BigInt(start + (3 * CHUNK + 1) * P));
});
