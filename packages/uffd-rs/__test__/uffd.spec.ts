import test from 'ava'
import { OUTCOME_STATUSES, RangeKind, Userfaultfd, testing } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

test('handshake reports what the kernel supports and enables what was asked', (t) => {
  const uffd = Userfaultfd.open()
  t.teardown(() => uffd.close())
  const r = uffd.handshake(['threadId', 'eventRemove', 'eventUnmap'])
  t.deepEqual(r.enabled, ['eventRemove', 'eventUnmap', 'threadId'])
  for (const f of r.enabled) t.true(r.features.includes(f))
  t.true(r.ioctls.includes('register'))
  t.true(r.ioctls.includes('api'))
})

test('a second handshake on the same uffd is refused with a clear error', (t) => {
  const uffd = Userfaultfd.open()
  t.teardown(() => uffd.close())
  uffd.handshake([])
  const err = t.throws(() => uffd.handshake(['threadId']))
  t.is((err as NodeJS.ErrnoException).code, 'EINVAL')
  t.is((err as NodeJS.ErrnoException).syscall, 'UFFDIO_API')
})

test('register reports the range ioctls; a second uffd cannot take a registered range', (t) => {
  const mem = testing.mapAnonymous(4 * PS)
  const uffd = Userfaultfd.open()
  const other = Userfaultfd.open()
  t.teardown(() => {
    uffd.close()
    other.close()
    testing.unmap(mem, 4 * PS)
  })
  uffd.handshake([])
  const { ioctls } = uffd.register(mem, 4 * PS, { missing: true })
  t.true(ioctls.includes('copy'))
  t.true(ioctls.includes('zeropage'))
  t.true(ioctls.includes('wake'))
  t.false(ioctls.includes('writeprotect'), 'not registered for wp')
  other.handshake([])
  t.throws(() => other.register(mem, PS, { missing: true }), { code: 'EBUSY' })
  uffd.unregister(mem, 4 * PS)
  t.notThrows(() => other.register(mem, PS, { missing: true }))
})

test('copy installs a page; copying it again reports exists, not an error', (t) => {
  const r = Region.create(t, { pages: 4 })
  t.deepEqual(r.uffd.copy(r.page(1), stampedPage(r.page(1))), { status: 'ok', bytes: PS })
  t.deepEqual(r.uffd.copy(r.page(1), stampedPage(r.page(1))), { status: 'exists', bytes: 0 })
  t.deepEqual(r.presentPages(), [1])
  t.is(testing.readU64(r.page(1)), BigInt(r.page(1)))
})

test('a multi-page copy stopped by a present page reports the bytes installed before it', (t) => {
  const r = Region.create(t, { pages: 4 })
  r.uffd.copy(r.page(2), stampedPage(r.page(2)))
  const src = Buffer.concat([0, 1, 2, 3].map((i) => stampedPage(r.page(i) + 0x100000)))
  t.deepEqual(r.uffd.copy(r.start, src), { status: 'exists', bytes: 2 * PS })
  t.deepEqual(r.presentPages(), [0, 1, 2])
  // The page that was there first is untouched.
  t.is(testing.readU64(r.page(2)), BigInt(r.page(2)))
  t.is(testing.readU64(r.page(1)), BigInt(r.page(1) + 0x100000))
})

test('zeropage installs zero pages', (t) => {
  const r = Region.create(t, { pages: 4 })
  t.deepEqual(r.uffd.zeropage(r.start, 2 * PS), { status: 'ok', bytes: 2 * PS })
  t.deepEqual(r.presentPages(), [0, 1])
  t.is(testing.readU64(r.page(1)), 0n)
  t.is(r.uffd.zeropage(r.start, PS).status, 'exists')
})

test('installBatch installs copy and zero ranges in one call, skipping present pages', async (t) => {
  const r = Region.create(t, { pages: 10 })
  r.uffd.copy(r.page(3), stampedPage(0xabc000))
  const data = Buffer.concat([0, 1, 2, 3, 4, 5].map((i) => stampedPage(r.page(i))))
  const ranges = new Float64Array([
    r.page(0), 0, 6 * PS, RangeKind.copy, // pages 0-5; page 3 already there
    r.page(7), 0, 2 * PS, RangeKind.zero, // pages 7-8
  ])
  const res = r.uffd.installBatch(data, ranges)
  t.like(res, { ok: 1, exists: 1, again: 0, gone: 0, bytes: 7 * PS, pagesExisting: 1 })
  t.deepEqual([...res.statuses].map((s) => OUTCOME_STATUSES[s]), ['exists', 'ok'])
  t.deepEqual(r.presentPages(), [0, 1, 2, 3, 4, 5, 7, 8])
  // Read from a native thread: everything is present, so nothing may block.
  const { values } = await settles(testing.touch({ addresses: [0, 1, 2, 3, 4, 5, 7, 8].map((i) => r.page(i)) }), 'touch')
  t.deepEqual([...values], [r.page(0), r.page(1), r.page(2), 0xabc000, r.page(4), r.page(5), 0, 0].map(BigInt))
})

test('installBatch accepts BigUint64Array ranges and reports unmapped for unregistered memory', (t) => {
  const r = Region.create(t, { pages: 2 })
  const other = testing.mapAnonymous(PS)
  t.teardown(() => testing.unmap(other, PS))
  const data = Buffer.concat([stampedPage(r.page(0)), stampedPage(other)])
  const res = r.uffd.installBatch(data, new BigUint64Array([BigInt(r.page(0)), 0n, BigInt(PS), 0n, BigInt(other), BigInt(PS), BigInt(PS), 0n]))
  t.like(res, { ok: 1, gone: 0, unmapped: 1, bytes: PS })
  t.deepEqual([...res.statuses].map((s) => OUTCOME_STATUSES[s]), ['ok', 'unmapped'])
})

test('copy with wp installs write-protected pages on a wp-registered range', (t) => {
  const r = Region.create(t, { pages: 2, features: ['pagefaultFlagWp'], mode: { missing: true, wp: true } })
  t.is(r.uffd.copy(r.start, stampedPage(r.start), { wp: true }).status, 'ok')
  t.is(testing.readU64(r.start), BigInt(r.start))
})
