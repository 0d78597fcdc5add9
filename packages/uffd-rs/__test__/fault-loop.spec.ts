import test from 'ava'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { FaultLoop, RangeKind, testing } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

test('faults are served from JS with known content, verified by the faulting thread', async (t) => {
  const r = Region.create(t, { pages: 32 })
  r.serve(({ faults }) => {
    for (const f of faults) t.is(r.uffd.copy(f.address, stampedPage(f.address)).status, 'ok')
  })
  const { values } = await settles(testing.touch({ start: r.start, count: 32 }), 'touch')
  t.deepEqual([...values], Array.from({ length: 32 }, (_, i) => BigInt(r.page(i))))
  const faults = r.faults
  t.deepEqual(faults.map((f) => f.address).sort((a, b) => a - b), Array.from({ length: 32 }, (_, i) => r.page(i)), 'one fault per page')
  for (const f of faults) {
    t.is(f.fd, r.uffd.fd)
    t.false(f.write)
    t.false(f.wp)
    t.true(f.tid > 0, 'threadId feature reports the faulting thread')
  }
  t.is(new Set(faults.map((f) => f.tid)).size, 1, 'all from the one touching thread')
  t.not(faults[0]!.tid, process.pid)
})

test('write faults are flagged and the written value lands on the served page', async (t) => {
  const r = Region.create(t, { pages: 4 })
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
  })
  const { values } = await settles(testing.touch({ start: r.start + 16, count: 4, write: true, value: 0xfeedfacecafen }), 'touch')
  t.deepEqual([...values], [0xfeedfacecafen, 0xfeedfacecafen, 0xfeedfacecafen, 0xfeedfacecafen])
  t.true(r.faults.every((f) => f.write))
  // The rest of each page is what the handler served.
  t.is(testing.readU64(r.page(2)), BigInt(r.page(2)))
})

test('faults served with zero pages read as zero', async (t) => {
  const r = Region.create(t, { pages: 8 })
  r.serve(({ faults }) => {
    for (const f of faults) t.is(r.uffd.zeropage(f.address, PS).status, 'ok')
  })
  const { values } = await settles(testing.touch({ start: r.start + 8, count: 8 }), 'touch')
  t.deepEqual([...values], Array(8).fill(0n))
  t.is(r.faults.length, 8)
})

test('installBatch from the handler serves a window of pages per fault', async (t) => {
  const pages = 64
  const window = 8
  const r = Region.create(t, { pages })
  r.serve(({ faults }) => {
    for (const f of faults) {
      const first = (f.address - r.start) / PS
      const n = Math.min(window, pages - first)
      const data = Buffer.concat(Array.from({ length: n }, (_, i) => stampedPage(r.page(first + i))))
      const res = r.uffd.installBatch(data, new Float64Array([f.address, 0, n * PS, RangeKind.copy]))
      t.is(res.ok + res.exists, 1)
    }
  })
  const { values } = await settles(testing.touch({ start: r.start, count: pages }), 'touch')
  t.deepEqual([...values], Array.from({ length: pages }, (_, i) => BigInt(r.page(i))))
  t.is(r.faults.length, pages / window, 'one fault per window')
})

test('one loop serves several uffds, telling them apart by fd', async (t) => {
  const a = Region.create(t, { pages: 4 })
  const b = Region.create(t, { pages: 4 })
  const loop = a.serve(({ faults }) => {
    for (const f of faults) {
      const owner = f.fd === a.uffd.fd ? a : b
      owner.batches.push({ faults: [f], events: [] })
      t.is(owner.uffd.copy(f.address, stampedPage(f.address)).status, 'ok')
    }
  })
  loop.add(b.uffd)
  const [va, vb] = await settles(Promise.all([testing.touch({ start: a.start, count: 4 }), testing.touch({ start: b.start, count: 4 })]), 'touch')
  t.deepEqual([...va.values], [0, 1, 2, 3].map((i) => BigInt(a.page(i))))
  t.deepEqual([...vb.values], [0, 1, 2, 3].map((i) => BigInt(b.page(i))))
  t.true(b.faults.every((f) => f.fd === b.uffd.fd) && b.faults.length >= 4)
  loop.remove(b.uffd)
})

test('madvise(DONTNEED) is delivered as a remove event', async (t) => {
  const r = Region.create(t, { pages: 8, features: ['eventRemove'] })
  r.serve(() => {})
  r.uffd.zeropage(r.start, r.len)
  // Blocks this thread until the loop thread has read the event (the kernel waits for it).
  testing.madvise(r.page(2), 3 * PS, 'dontneed')
  await r.waitFor((b) => b.events.length > 0, 'remove event')
  t.deepEqual(r.events, [{ kind: 'remove', fd: r.uffd.fd, start: r.page(2), end: r.page(5) }])
  t.deepEqual(r.presentPages(), [0, 1, 5, 6, 7])
})

test('munmap is delivered as an unmap event', async (t) => {
  const r = Region.create(t, { pages: 8, features: ['eventUnmap'] })
  r.serve(() => {})
  r.unmapPages(6, 2)
  // Copying into the unmapped part is "gone", not an error. (Checked before any await:
  // concurrent tests of this file may map the hole again.)
  t.is(r.uffd.copy(r.page(6), Buffer.alloc(PS)).status, 'gone')
  await r.waitFor((b) => b.events.length > 0, 'unmap event')
  t.deepEqual(r.events, [{ kind: 'unmap', fd: r.uffd.fd, start: r.page(6), end: r.page(8) }])
})

test('mremap is delivered as a remap event and faults follow the new address', async (t) => {
  const r = Region.create(t, { pages: 4, features: ['eventRemap', 'threadId'] })
  const target = testing.mapAnonymous(4 * PS)
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
  })
  const moved = testing.mremap(r.start, r.len, r.len, target)
  r.forgetMapping()
  t.teardown(() => testing.unmap(moved, 4 * PS))
  t.is(moved, target)
  await r.waitFor((b) => b.events.length > 0, 'remap event')
  t.deepEqual(r.events, [{ kind: 'remap', fd: r.uffd.fd, from: r.start, to: moved, len: r.len }])
  const { values } = await settles(testing.touch({ addresses: [moved + PS] }), 'touch after remap')
  t.deepEqual([...values], [BigInt(moved + PS)])
})

test('stop with faults outstanding resolves, and closing the uffd releases the faulting thread', async (t) => {
  const r = Region.create(t, { pages: 4 })
  let callsAfterStop = 0
  let stopped = false
  r.serve(() => {
    if (stopped) callsAfterStop++
  })
  const touching = testing.touch({ start: r.start, count: 4 })
  await r.waitFor((b) => b.faults.length > 0, 'first fault')
  stopped = true
  await settles(r.loop!.stop(), 'stop() with a fault outstanding')
  t.is(callsAfterStop, 0)
  // Nobody serves the page: closing the uffd is what lets the thread go (it reads zeros).
  r.uffd.close()
  const { values } = await settles(touching, 'touch after close')
  t.deepEqual([...values], [0n, 0n, 0n, 0n])
})

test('stop is idempotent and a stopped loop refuses new uffds', async (t) => {
  const r = Region.create(t, { pages: 1 })
  const loop = r.serve(() => {})
  const p1 = loop.stop()
  t.is(loop.stop(), p1)
  await settles(p1, 'stop')
  await settles(loop.stop(), 'second stop')
  t.throws(() => loop.add(r.uffd), { message: /stopped/ })
})

test('a stopped loop does not keep Node alive, and neither does an unref()ed one', async (t) => {
  const index = fileURLToPath(new URL('../index.js', import.meta.url))
  const script = `
    import { FaultLoop, Userfaultfd } from ${JSON.stringify(index)}
    const u = Userfaultfd.open(); u.handshake([])
    const stopped = new FaultLoop(() => {}); stopped.add(u); await stopped.stop()
    const idle = new FaultLoop(() => {}); idle.add(u); idle.unref()
    console.log('ready')
  `
  const out = await settles(
    new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 }, (err, stdout) => (err ? reject(err) : resolve(stdout)))
    }),
    'child node process exit',
    25_000,
  )
  t.is(out.trim(), 'ready')
})

test('the loop can be pinned to a CPU', async (t) => {
  const cpu = testing.getAffinity()[0]!
  const r = Region.create(t, { pages: 2 })
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
  }, { cpu })
  const { values } = await settles(testing.touch({ start: r.start, count: 2, cpu }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), BigInt(r.page(1))])
})

test('the loop is collected safely when dropped without stop()', async (t) => {
  // Only checks that nothing crashes or hangs: the loop has no uffd and is unreferenced.
  new FaultLoop(() => {}).unref()
  t.pass()
})
