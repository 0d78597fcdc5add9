import test from 'ava'
import { pagemapScan, testing } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

test('writes to write-protected pages arrive as wp faults and resume after unprotect', async (t) => {
  const r = Region.create(t, { pages: 6, features: ['pagefaultFlagWp', 'threadId'], mode: { missing: true, wp: true } })
  for (let i = 0; i < 6; i++) t.is(r.uffd.copy(r.page(i), stampedPage(r.page(i)), { wp: true }).status, 'ok')
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.writeProtect(f.address, PS, false)
  })
  // Reads of protected pages do not fault.
  const read = await settles(testing.touch({ start: r.start, count: 6 }), 'read touch')
  t.deepEqual([...read.values], Array.from({ length: 6 }, (_, i) => BigInt(r.page(i))))
  t.is(r.faults.length, 0)
  const written = await settles(testing.touch({ addresses: [r.page(1), r.page(4)], write: true, value: 7n }), 'write touch')
  t.deepEqual([...written.values], [7n, 7n])
  t.deepEqual(r.faults.map((f) => [f.address, f.wp, f.write]), [
    [r.page(1), true, true],
    [r.page(4), true, true],
  ])
  // Writes to pages already unprotected do not fault again.
  await settles(testing.touch({ addresses: [r.page(1)], write: true, value: 8n }), 'second write')
  t.is(r.faults.length, 2)
})

test('WP_ASYNC tracking: PAGEMAP_SCAN lists exactly the pages written, and reprotect resets it', async (t) => {
  const r = Region.create(t, { pages: 16, features: ['pagefaultFlagWp', 'wpAsync', 'wpUnpopulated'], mode: { wp: true } })
  testing.fill(r.start, r.len, 0x1111n) // populated before tracking starts
  r.uffd.writeProtect(r.start, r.len, true)
  t.deepEqual(pagemapScan(r.start, r.len, { written: true }), [], 'nothing written since protection')

  // Written from a native thread and from JS: async WP resolves them without any fault.
  await settles(testing.touch({ addresses: [r.page(1), r.page(5), r.page(6)], write: true, value: 42n }), 'touch')
  testing.writeU64(r.page(11) + 64, 43n)
  const written = pagemapScan(r.start, r.len, { written: true })
  t.deepEqual(written.map((x) => [(x.start - r.start) / PS, (x.end - r.start) / PS]), [
    [1, 2],
    [5, 7],
    [11, 12],
  ])
  t.true(written.every((x) => x.categories.includes('written')))

  // Scan-and-reprotect returns the same set once, then nothing until new writes.
  t.is(pagemapScan(r.start, r.len, { written: true, reprotect: true }).length, 3)
  t.deepEqual(pagemapScan(r.start, r.len, { written: true }), [])
  testing.writeU64(r.page(9), 1n)
  t.deepEqual(pagemapScan(r.start, r.len, { written: true }).map((x) => (x.start - r.start) / PS), [9])
  // Reads never count as writes.
  await settles(testing.touch({ start: r.start, count: 16 }), 'read touch')
  t.deepEqual(pagemapScan(r.start, r.len, { written: true }).map((x) => (x.start - r.start) / PS), [9])
})

test('WP_ASYNC with wpUnpopulated tracks first writes to never-touched pages', async (t) => {
  const r = Region.create(t, { pages: 8, features: ['pagefaultFlagWp', 'wpAsync', 'wpUnpopulated'], mode: { wp: true } })
  r.uffd.writeProtect(r.start, r.len, true)
  testing.writeU64(r.page(3), 5n)
  t.deepEqual(pagemapScan(r.start, r.len, { written: true }).map((x) => (x.start - r.start) / PS), [3])
  t.deepEqual(pagemapScan(r.start, r.len, { present: true }).map((x) => (x.start - r.start) / PS), [3])
})

test('pagemapScan filters by absent categories and limits pages', (t) => {
  const mem = testing.mapAnonymous(8 * PS)
  t.teardown(() => testing.unmap(mem, 8 * PS))
  testing.madvise(mem, 8 * PS, 'nohugepage')
  testing.writeU64(mem + 2 * PS, 1n)
  testing.writeU64(mem + 3 * PS, 1n)
  const present = pagemapScan(mem, 8 * PS, { present: true })
  t.deepEqual(present.map((x) => [x.start - mem, x.end - mem]), [[2 * PS, 4 * PS]])
  const absent = pagemapScan(mem, 8 * PS, { present: false })
  t.deepEqual(absent.map((x) => [x.start - mem, x.end - mem]), [
    [0, 2 * PS],
    [4 * PS, 8 * PS],
  ])
  t.deepEqual(pagemapScan(mem, 8 * PS, { present: false, maxPages: 1 }).map((x) => x.end - x.start), [PS])
})
