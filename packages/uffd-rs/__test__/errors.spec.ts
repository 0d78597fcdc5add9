import test from 'ava'
import { FaultLoop, RangeKind, Userfaultfd, pagemapScan, testing, type SystemError } from '../index.js'
import { PS, Region, settles } from './helpers.js'

function sysError(t: import('ava').ExecutionContext, fn: () => unknown): SystemError {
  const err = t.throws(fn) as SystemError
  t.is(err.constructor, Error)
  return err
}

test('operations on a closed uffd fail with EBADF, naming the operation and address', (t) => {
  const r = Region.create(t, { pages: 2 })
  const fd = r.uffd.fd
  r.uffd.close()
  t.true(r.uffd.closed)
  t.is(r.uffd.fd, -1)
  const err = sysError(t, () => r.uffd.copy(r.start, Buffer.alloc(PS)))
  t.is(err.code, 'EBADF')
  t.is(err.errno, 9)
  t.is(err.syscall, 'UFFDIO_COPY')
  t.is(err.address, r.start)
  t.is(err.message, `UFFDIO_COPY at 0x${r.start.toString(16)}: EBADF (Bad file descriptor)`)
  t.is(sysError(t, () => r.uffd.register(r.start, PS, { missing: true })).code, 'EBADF')
  t.is(sysError(t, () => r.uffd.wake(r.start, PS)).code, 'EBADF')
  // An adopted stale number fails the same way.
  t.is(sysError(t, () => Userfaultfd.adopt(fd).zeropage(r.start, PS)).code, 'EBADF')
  t.notThrows(() => r.uffd.close(), 'close is idempotent')
})

test('unaligned ranges are EINVAL', (t) => {
  const r = Region.create(t, { pages: 2 })
  const reg = sysError(t, () => r.uffd.register(r.start + 1, PS, { missing: true }))
  t.is(reg.code, 'EINVAL')
  t.is(reg.syscall, 'UFFDIO_REGISTER')
  t.regex(reg.message, /^UFFDIO_REGISTER at 0x[0-9a-f]+: EINVAL \(Invalid argument\)/)
  t.is(sysError(t, () => r.uffd.copy(r.start + 8, Buffer.alloc(PS))).code, 'EINVAL')
  t.is(sysError(t, () => r.uffd.zeropage(r.start, 100)).code, 'EINVAL')
  t.is(sysError(t, () => r.uffd.unregister(r.start, PS + 1)).code, 'EINVAL')
  t.is(sysError(t, () => r.uffd.installBatch(Buffer.alloc(PS), new Float64Array([r.start + 8, 0, PS, RangeKind.copy]))).code, 'EINVAL')
  t.is(sysError(t, () => pagemapScan(r.start + 8, PS)).code, 'EINVAL')
})

test('unregistered ranges: register of unmapped memory is EINVAL, wp of a non-wp range ENOENT, copy reports unmapped', (t) => {
  const r = Region.create(t, { pages: 2 })
  const unmapped = testing.mapAnonymous(PS)
  testing.unmap(unmapped, PS)
  const reg = sysError(t, () => r.uffd.register(unmapped, PS, { missing: true }))
  t.is(reg.code, 'EINVAL')
  t.is(reg.address, unmapped)
  t.is(sysError(t, () => r.uffd.writeProtect(r.start, PS, true)).code, 'ENOENT')
  t.deepEqual(r.uffd.copy(unmapped, Buffer.alloc(PS)), { status: 'unmapped', bytes: 0 })
})

test('a copy into the memory of a process that has exited reports gone (ESRCH), not unmapped', async (t) => {
  const target = testing.forkTarget({ pages: 2, timeoutMs: 20_000 })
  const uffd = Userfaultfd.adopt(target.uffd)
  t.teardown(() => uffd.close())
  // While it lives, its registered pages take a copy.
  t.is(uffd.copy(target.start, Buffer.alloc(PS)).status, 'ok')
  process.kill(target.pid, 'SIGKILL')
  await settles(target.done, 'the target exits')
  t.deepEqual(uffd.copy(target.start + PS, Buffer.alloc(PS)), { status: 'gone', bytes: 0 })
})

test('a register before the handshake is EINVAL', (t) => {
  const uffd = Userfaultfd.open()
  t.teardown(() => uffd.close())
  const mem = testing.mapAnonymous(PS)
  t.teardown(() => testing.unmap(mem, PS))
  t.is(sysError(t, () => uffd.register(mem, PS, { missing: true })).code, 'EINVAL')
})

test('buffers that are too small are RangeErrors and install nothing', (t) => {
  const r = Region.create(t, { pages: 4 })
  t.throws(() => r.uffd.copy(r.start, Buffer.alloc(100)), { instanceOf: RangeError, message: /page size/ })
  t.throws(() => r.uffd.copy(r.start, Buffer.alloc(0)), { instanceOf: RangeError })
  // The second range reads past the end of data: refused before the first is installed.
  const ranges = new Float64Array([r.page(0), 0, PS, RangeKind.copy, r.page(1), PS, 2 * PS, RangeKind.copy])
  t.throws(() => r.uffd.installBatch(Buffer.alloc(2 * PS), ranges), { instanceOf: RangeError, message: /range 1/ })
  t.throws(() => r.uffd.installBatch(Buffer.alloc(PS), new Float64Array([r.start, 0, PS])), { instanceOf: RangeError, message: /quadruples/ })
  t.throws(() => r.uffd.installBatch(Buffer.alloc(PS), new Float64Array([r.start, 0, PS, 7])), { instanceOf: RangeError, message: /kind/ })
  t.deepEqual(r.presentPages(), [])
})

test('bad JS values are TypeErrors or RangeErrors', (t) => {
  const r = Region.create(t, { pages: 1 })
  const u = r.uffd as unknown as Record<string, (...a: unknown[]) => unknown>
  t.throws(() => u.copy!('0x1000', Buffer.alloc(PS)), { instanceOf: TypeError, message: 'dst must be a number' })
  t.throws(() => u.copy!(r.start, 'page'), { instanceOf: TypeError })
  t.throws(() => u.copy!(r.start, Buffer.alloc(PS), { wp: 1 }), { instanceOf: TypeError, message: /'wp' must be a boolean/ })
  t.throws(() => u.register!(r.start, PS), { instanceOf: TypeError, message: 'mode is required' })
  t.throws(() => u.register!(r.start, PS, {}), { instanceOf: RangeError, message: /at least one/ })
  t.throws(() => u.register!(r.start, -PS, { missing: true }), { instanceOf: RangeError })
  t.throws(() => u.wake!(r.start + 0.5, PS), { instanceOf: RangeError, message: /integer/ })
  t.throws(() => u.wake!(2 ** 53, PS), { instanceOf: RangeError })
  t.throws(() => u.installBatch!(Buffer.alloc(PS), [r.start, 0, PS, 0]), { instanceOf: TypeError })
  t.throws(() => u.handshake!(['noSuchFeature']), { instanceOf: RangeError, message: /unknown userfaultfd feature 'noSuchFeature'/ })
  t.throws(() => Userfaultfd.adopt(-1), { instanceOf: RangeError })
  t.throws(() => new FaultLoop('nope' as never), { instanceOf: TypeError })
  t.throws(() => testing.madvise(r.start, PS, 'free' as never), { instanceOf: RangeError })
})

test('adding a closed uffd to a loop fails with EBADF, and the loop keeps working', async (t) => {
  const r = Region.create(t, { pages: 1 })
  const dead = Userfaultfd.open()
  dead.close()
  const loop = r.serve(() => {})
  const err = t.throws(() => loop.add(-1)) as SystemError
  t.is(err.code, 'EBADF')
  t.is(sysError(t, () => loop.add(dead)).code, 'EBADF')
  t.is(sysError(t, () => loop.add(r.uffd)).code, 'EEXIST')
})

test('touching unmapped memory is refused with EFAULT instead of crashing', async (t) => {
  const mem = testing.mapAnonymous(PS)
  testing.unmap(mem, PS)
  t.throws(() => testing.touch({ addresses: [mem] }), { code: 'EFAULT' })
  t.throws(() => testing.readU64(mem), { code: 'EFAULT' })
})
