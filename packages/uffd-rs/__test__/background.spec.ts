import test from 'ava'
import { pagemapScan, testing, type BackgroundEnd } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

/** Resolves with the completion of job `id`. */
function completions() {
  const waiting = new Map<number, (r: { bytes: number; end: BackgroundEnd }) => void>()
  return {
    onDone: (id: number, bytes: number, end: BackgroundEnd) => waiting.get(id)?.({ bytes, end }),
    wait: (id: number) => new Promise<{ bytes: number; end: BackgroundEnd }>((r) => waiting.set(id, r)),
  }
}

test('a background job installs its pages and wakes a thread waiting for one', async (t) => {
  const r = Region.create(t, { pages: 64 })
  r.serve(() => undefined, { mode: 'event-loop' }) // faults are left to the job
  const c = completions()
  const inst = r.loop!.backgroundInstaller(c.onDone)
  t.teardown(() => inst.stop())
  const data = Buffer.concat(Array.from({ length: 64 }, (_, i) => stampedPage(r.page(i))))
  const touched = testing.touch({ addresses: [r.page(40)] })
  const done = c.wait(1)
  inst.submit(1, r.uffd, r.start, data)
  t.deepEqual(await settles(done, 'job'), { bytes: 64 * PS, end: 'done' })
  t.deepEqual([...(await settles(touched, 'touch')).values], [BigInt(r.page(40))])
  const { values } = await settles(testing.touch({ start: r.start, count: 64 }), 'touch all')
  t.deepEqual([...values], Array.from({ length: 64 }, (_, i) => BigInt(r.page(i))))
})

test('a background job passes over the pages named present and reports them in', async (t) => {
  const r = Region.create(t, { pages: 64 })
  r.serve(() => undefined, { mode: 'event-loop' })
  const c = completions()
  const inst = r.loop!.backgroundInstaller(c.onDone)
  t.teardown(() => inst.stop())
  // Pages 8..11 are truly in (installed here, with other contents); 40..47 are named present
  // although they are not: a job that honours the spans leaves both alone.
  t.is(r.uffd.copy(r.page(8), Buffer.alloc(4 * PS, 0x5a)).status, 'ok')
  inst.present(3, 8 * PS, 4 * PS)
  inst.present(3, 40 * PS, 8 * PS)
  const done = c.wait(3)
  inst.submit(3, r.uffd, r.start, Buffer.concat(Array.from({ length: 64 }, (_, i) => stampedPage(r.page(i)))))
  t.deepEqual(await settles(done, 'job'), { bytes: 64 * PS, end: 'done' })
  const present = pagemapScan(r.start, 64 * PS, { present: true }).map((g) => [(g.start - r.start) / PS, (g.end - r.start) / PS])
  t.deepEqual(present, [[0, 40], [48, 64]])
  const { values } = await settles(testing.touch({ addresses: [r.page(0), r.page(8), r.page(39)] }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), 0x5a5a5a5a5a5a5a5an, BigInt(r.page(39))])
})

test('a background job submitted before a remove event is read installs nothing after it: no stale page', async (t) => {
  const r = Region.create(t, { pages: 4, features: ['eventRemove'] })
  const removed: Array<[number, number]> = []
  r.serve(({ events, faults }) => {
    for (const e of events) if (e.kind === 'remove') removed.push([e.start, e.end])
    for (const f of faults) r.uffd.zeropage(f.address, PS)
  }, { mode: 'event-loop' })
  t.is(r.uffd.copy(r.start, Buffer.concat([0, 1, 2, 3].map((i) => stampedPage(r.page(i))))).status, 'ok')
  const madvise = testing.madviseOnThread(r.page(1), PS, 'dontneed')
  // Wait (holding the JS thread, so the event stays unread) until the event is pending.
  const deadline = Date.now() + 5000
  while (Date.now() < deadline && r.uffd.copy(r.page(1), stampedPage(r.page(1))).status !== 'again');
  const c = completions()
  const inst = r.loop!.backgroundInstaller(c.onDone)
  t.teardown(() => inst.stop())
  const done = c.wait(7)
  inst.submit(7, r.uffd, r.page(1), stampedPage(r.page(1)))
  await settles(madvise, 'madvise')
  t.deepEqual(removed, [[r.page(1), r.page(2)]])
  const { bytes, end } = await settles(done, 'job')
  t.is(bytes, 0)
  t.true(end === 'again' || end === 'stale', end)
  const { values } = await settles(testing.touch({ addresses: [r.page(0), r.page(1), r.page(2)] }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), 0n, BigInt(r.page(2))])
})

test('a reader waiting for the gate goes before the next background slice', (t) => {
  // A worker takes the gate shared for each slice and, with nothing else to do, at once
  // again for the next; the JS thread waiting to read the uffd (a fault) must get it after
  // the slice in progress, not after the whole queue of jobs.
  // 1: the worker may have looked just before the reader announced itself.
  const worst = testing.gateTurns(300)
  t.true(worst <= 1, `the worker began ${worst} slices while the reader waited`)
})

test('background installs need an event-loop FaultLoop', (t) => {
  const r = Region.create(t, { pages: 1 })
  r.serve(() => undefined, { mode: 'thread' })
  t.throws(() => r.loop!.backgroundInstaller(() => undefined), { message: /event-loop/ })
})
