import test from 'ava'
import { execFile } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { FaultLoop, RangeKind, Userfaultfd, getThreadAffinity, testing, type Fault, type FaultBatch, type FaultLoopMode } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

const execFileP = promisify(execFile)
const MODES = ['thread', 'event-loop'] as const satisfies readonly FaultLoopMode[]

// Everything the loop promises is checked in both modes (titles start with the mode).
// Memory-map changes that produce uffd events (madvise/munmap/mremap, fork) are made from
// another thread: the kernel blocks the thread making them until the event is read, and
// in event-loop mode the reader is the JS thread.
for (const mode of MODES) {
  const opts = { mode }

  test(`[${mode}] faults are served from JS with known content, verified by the faulting thread`, async (t) => {
    const r = Region.create(t, { pages: 32 })
    r.serve(({ faults }) => {
      for (const f of faults) t.is(r.uffd.copy(f.address, stampedPage(f.address)).status, 'ok')
    }, opts)
    t.is(r.loop!.mode, mode)
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

  test(`[${mode}] write faults are flagged and the written value lands on the served page`, async (t) => {
    const r = Region.create(t, { pages: 4 })
    r.serve(({ faults }) => {
      for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
    }, opts)
    const { values } = await settles(testing.touch({ start: r.start + 16, count: 4, write: true, value: 0xfeedfacecafen }), 'touch')
    t.deepEqual([...values], [0xfeedfacecafen, 0xfeedfacecafen, 0xfeedfacecafen, 0xfeedfacecafen])
    t.true(r.faults.every((f) => f.write))
    // The rest of each page is what the handler served.
    t.is(testing.readU64(r.page(2)), BigInt(r.page(2)))
  })

  test(`[${mode}] faults served with zero pages read as zero`, async (t) => {
    const r = Region.create(t, { pages: 8 })
    r.serve(({ faults }) => {
      for (const f of faults) t.is(r.uffd.zeropage(f.address, PS).status, 'ok')
    }, opts)
    const { values } = await settles(testing.touch({ start: r.start + 8, count: 8 }), 'touch')
    t.deepEqual([...values], Array(8).fill(0n))
    t.is(r.faults.length, 8)
  })

  test(`[${mode}] installBatch from the handler serves a window of pages per fault`, async (t) => {
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
    }, opts)
    const { values } = await settles(testing.touch({ start: r.start, count: pages }), 'touch')
    t.deepEqual([...values], Array.from({ length: pages }, (_, i) => BigInt(r.page(i))))
    t.is(r.faults.length, pages / window, 'one fault per window')
  })

  test(`[${mode}] one loop serves several uffds, telling them apart by fd`, async (t) => {
    const a = Region.create(t, { pages: 4 })
    const b = Region.create(t, { pages: 4 })
    const loop = a.serve(({ faults }) => {
      for (const f of faults) {
        const owner = f.fd === a.uffd.fd ? a : b
        owner.batches.push({ faults: [f], events: [] })
        t.is(owner.uffd.copy(f.address, stampedPage(f.address)).status, 'ok')
      }
    }, opts)
    loop.add(b.uffd)
    const [va, vb] = await settles(Promise.all([testing.touch({ start: a.start, count: 4 }), testing.touch({ start: b.start, count: 4 })]), 'touch')
    t.deepEqual([...va.values], [0, 1, 2, 3].map((i) => BigInt(a.page(i))))
    t.deepEqual([...vb.values], [0, 1, 2, 3].map((i) => BigInt(b.page(i))))
    t.true(b.faults.every((f) => f.fd === b.uffd.fd) && b.faults.length >= 4)
    loop.remove(b.uffd)
  })

  test(`[${mode}] madvise(DONTNEED) is delivered as a remove event`, async (t) => {
    const r = Region.create(t, { pages: 8, features: ['eventRemove'] })
    r.serve(() => {}, opts)
    r.uffd.zeropage(r.start, r.len)
    // Returns once the loop has read the event (the kernel holds madvise until then).
    await settles(testing.madviseOnThread(r.page(2), 3 * PS, 'dontneed'), 'madvise')
    await r.waitFor((b) => b.events.length > 0, 'remove event')
    t.deepEqual(r.events, [{ kind: 'remove', fd: r.uffd.fd, start: r.page(2), end: r.page(5) }])
    t.deepEqual(r.presentPages(), [0, 1, 5, 6, 7])
  })

  // Serial: between munmap and the copy below, a concurrent test could map the hole again
  // and register it (the kernel then lets any uffd of this process install there).
  test.serial(`[${mode}] munmap is delivered as an unmap event`, async (t) => {
    const r = Region.create(t, { pages: 8, features: ['eventUnmap'] })
    r.serve(() => {}, opts)
    await settles(testing.unmapOnThread(r.page(6), 2 * PS), 'munmap')
    r.forgetPages(6, 2)
    // Copying into the unmapped part is "unmapped", not an error.
    t.is(r.uffd.copy(r.page(6), Buffer.alloc(PS)).status, 'unmapped')
    await r.waitFor((b) => b.events.length > 0, 'unmap event')
    t.deepEqual(r.events, [{ kind: 'unmap', fd: r.uffd.fd, start: r.page(6), end: r.page(8) }])
  })

  test(`[${mode}] mremap is delivered as a remap event and faults follow the new address`, async (t) => {
    const r = Region.create(t, { pages: 4, features: ['eventRemap', 'threadId'] })
    const target = testing.mapAnonymous(4 * PS)
    r.serve(({ faults }) => {
      for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
    }, opts)
    const moved = await settles(testing.mremapOnThread(r.start, r.len, r.len, target), 'mremap')
    r.forgetMapping()
    t.teardown(() => testing.unmap(moved, 4 * PS))
    t.is(moved, target)
    await r.waitFor((b) => b.events.length > 0, 'remap event')
    t.deepEqual(r.events, [{ kind: 'remap', fd: r.uffd.fd, from: r.start, to: moved, len: r.len }])
    const { values } = await settles(testing.touch({ addresses: [moved + PS] }), 'touch after remap')
    t.deepEqual([...values], [BigInt(moved + PS)])
  })

  test(`[${mode}] fork: the child's uffd arrives in a fork event and the child's faults are served through it`, async (t) => {
    // The registered memory is in another process T (as in a real migration); T forks G.
    const target = testing.forkTarget({ pages: 4, timeoutMs: 20_000 })
    const tu = Userfaultfd.adopt(target.uffd)
    const page = (i: number) => target.start + i * PS
    const children = new Map<number, Userfaultfd>()
    const batches: FaultBatch[] = []
    const held: Fault[] = []
    let serveChild = false
    // G's pages get their address + 1, T's their address: which uffd served what shows.
    const childPage = (addr: number) => {
      const b = stampedPage(addr)
      b.writeBigUInt64LE(BigInt(addr + 1), 0)
      return b
    }
    const serveChildFault = (f: Fault) => t.is(children.get(f.fd)!.copy(f.address, childPage(f.address)).status, 'ok')
    const loop = new FaultLoop((b) => {
      batches.push(b)
      for (const e of b.events) {
        if (e.kind !== 'fork') continue
        const child = Userfaultfd.adopt(e.childFd)
        children.set(child.fd, child)
        loop.add(child)
      }
      for (const f of b.faults) {
        if (f.fd === tu.fd) tu.copy(f.address, stampedPage(f.address))
        else if (serveChild) serveChildFault(f)
        else held.push(f)
      }
    }, opts)
    t.teardown(async () => {
      await loop.stop()
      for (const c of children.values()) c.close()
      tu.close()
    })
    loop.add(tu)
    // Page 0 is present in T before the fork (G shares it); 1..3 are missing in both.
    t.is(tu.copy(page(0), stampedPage(page(0))).status, 'ok')
    target.go()
    const waitFor = (pred: () => boolean, what: string) =>
      settles(
        (async () => {
          while (!pred()) await new Promise((r) => setTimeout(r, 2))
        })(),
        what,
      )
    await waitFor(() => held.length > 0, "the child's first fault")
    // G is blocked in a fault on its own uffd: Node's child_process works meanwhile.
    const { stdout } = await settles(execFileP(process.execPath, ['-e', 'process.stdout.write(String(6 * 7))']), 'child_process.execFile while a forked child waits')
    t.is(stdout.trim(), '42')
    serveChild = true
    for (const f of held.splice(0)) serveChildFault(f)
    const res = await settles(target.done, 'fork target', 25_000)
    t.false(res.timedOut)
    t.is(res.exitCode, 0)
    t.is(res.childStatus, 0n, 'G exited with 0')
    t.deepEqual([...res.childValues], [BigInt(page(0)), BigInt(page(1) + 1), BigInt(page(2) + 1), BigInt(page(3) + 1)])
    t.is(res.targetValue, BigInt(page(1)), "T's own page 1 was still missing, and served through T's uffd")
    const events = batches.flatMap((b) => b.events)
    t.is(children.size, 1)
    t.deepEqual(events, [{ kind: 'fork', fd: tu.fd, childFd: [...children.keys()][0]! }])
    const faults = batches.flatMap((b) => b.faults)
    t.deepEqual(faults.filter((f) => f.fd !== tu.fd).map((f) => f.address).sort((a, b) => a - b), [page(1), page(2), page(3)])
    t.deepEqual(faults.filter((f) => f.fd === tu.fd).map((f) => f.address), [page(1)])
  })

  test(`[${mode}] stop with faults outstanding resolves, and closing the uffd releases the faulting thread`, async (t) => {
    const r = Region.create(t, { pages: 4 })
    let callsAfterStop = 0
    let stopped = false
    r.serve(() => {
      if (stopped) callsAfterStop++
    }, opts)
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

  test(`[${mode}] stop() called from onBatch: no further onBatch call`, async (t) => {
    const a = Region.create(t, { pages: 2 })
    const b = Region.create(t, { pages: 2 })
    let calls = 0
    const loop = a.serve(() => {
      calls++
      void loop.stop()
    }, opts)
    loop.add(b.uffd)
    // Two threads fault on two uffds (often readable in the same loop iteration); nobody
    // serves them, closing the uffds releases them.
    const touching = [testing.touch({ start: a.start, count: 2 }), testing.touch({ start: b.start, count: 2 })]
    await a.waitFor(() => true, 'first batch')
    await settles(loop.stop(), 'stop')
    await new Promise((resolve) => setTimeout(resolve, 50))
    t.is(calls, 1)
    a.uffd.close()
    b.uffd.close()
    await settles(Promise.all(touching), 'touches after close')
  })

  test(`[${mode}] stop is idempotent and a stopped loop refuses new uffds`, async (t) => {
    const r = Region.create(t, { pages: 1 })
    const loop = r.serve(() => {}, opts)
    const p1 = loop.stop()
    t.is(loop.stop(), p1)
    await settles(p1, 'stop')
    await settles(loop.stop(), 'second stop')
    t.throws(() => loop.add(r.uffd), { message: /stopped/ })
  })

  test(`[${mode}] a stopped loop does not keep Node alive, and neither does an unref()ed one`, async (t) => {
    const index = fileURLToPath(new URL('../index.js', import.meta.url))
    const script = `
      import { FaultLoop, Userfaultfd } from ${JSON.stringify(index)}
      const opts = { mode: ${JSON.stringify(mode)} }
      const u = Userfaultfd.open(); u.handshake([])
      const stopped = new FaultLoop(() => {}, opts); stopped.add(u); await stopped.stop()
      const idle = new FaultLoop(() => {}, opts); idle.add(u); idle.unref()
      const reffed = new FaultLoop(() => {}, opts); reffed.unref(); reffed.ref(); await reffed.stop()
      console.log('ready')
    `
    const { stdout } = await settles(execFileP(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 }), 'child node process exit', 25_000)
    t.is(stdout.trim(), 'ready')
  })

  test(`[${mode}] a running loop keeps Node alive until unref()ed`, async (t) => {
    const index = fileURLToPath(new URL('../index.js', import.meta.url))
    // Alive for 300 ms (a timer would say 'timer' first if the loop did not hold Node).
    const script = `
      import { FaultLoop } from ${JSON.stringify(index)}
      const loop = new FaultLoop(() => {}, { mode: ${JSON.stringify(mode)} })
      setTimeout(() => { console.log('unref'); loop.unref() }, 300).unref()
      process.on('exit', () => console.log('exit'))
    `
    const { stdout } = await settles(execFileP(process.execPath, ['--input-type=module', '-e', script], { timeout: 20_000 }), 'child node process exit', 25_000)
    t.deepEqual(stdout.trim().split('\n'), ['unref', 'exit'])
  })

  test(`[${mode}] the loop is collected safely when dropped without stop()`, async (t) => {
    // Only checks that nothing crashes or hangs: the loop has no uffd and is unreferenced.
    new FaultLoop(() => {}, opts).unref()
    t.pass()
  })
}

test('[thread] the loop can be pinned to a CPU', async (t) => {
  const cpu = getThreadAffinity()[0]!
  const r = Region.create(t, { pages: 2 })
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.copy(f.address, stampedPage(f.address))
  }, { cpu })
  const { values } = await settles(testing.touch({ start: r.start, count: 2, cpu }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), BigInt(r.page(1))])
})

test('[event-loop] cpu is refused (there is no loop thread to pin), and so is an unknown mode', (t) => {
  t.throws(() => new FaultLoop(() => {}, { mode: 'event-loop', cpu: 0 }), { instanceOf: RangeError, message: /only applies to mode 'thread'/ })
  t.throws(() => new FaultLoop(() => {}, { mode: 'fiber' as never }), { instanceOf: RangeError, message: /'thread' or 'event-loop'/ })
})

test('[event-loop] a uffd can be in one event-loop FaultLoop at a time (EEXIST)', async (t) => {
  const r = Region.create(t, { pages: 1 })
  r.serve(() => {}, { mode: 'event-loop' })
  const other = new FaultLoop(() => {}, { mode: 'event-loop' })
  t.teardown(() => other.stop())
  t.is((t.throws(() => other.add(r.uffd)) as NodeJS.ErrnoException).code, 'EEXIST')
})

// The ordering guarantee (see FaultLoop in index.d.ts). The target (here a native thread)
// MADV_DONTNEEDs page 1 while JS holds page data for it (as if a network reply for it were
// in flight). The kernel queues a remove event and holds madvise until it is read; the
// page is zapped only after that, and from then on the target expects zeros there.
function removeRace(mode: FaultLoopMode) {
  return async (t: import('ava').ExecutionContext) => {
    const r = Region.create(t, { pages: 4, features: ['eventRemove'] })
    const removed: Array<[number, number]> = []
    const isRemoved = (a: number) => removed.some(([s, e]) => a >= s && a < e)
    r.serve(({ faults, events }) => {
      for (const e of events) if (e.kind === 'remove') removed.push([e.start, e.end])
      // The handler: removed pages read as zeros, others get their data.
      for (const f of faults) {
        if (isRemoved(f.address)) r.uffd.zeropage(f.address, PS)
        else r.uffd.copy(f.address, stampedPage(f.address))
      }
    }, { mode })
    t.is(r.uffd.copy(r.start, Buffer.concat([0, 1, 2, 3].map((i) => stampedPage(r.page(i))))).status, 'ok')
    const stale = stampedPage(r.page(1))
    const madvise = testing.madviseOnThread(r.page(1), PS, 'dontneed')
    // JS keeps the thread (no await) and tries to install its data for page 1 meanwhile.
    const seen: string[] = []
    const deadline = Date.now() + 5000
    let status = 'exists'
    while (Date.now() < deadline) {
      status = r.uffd.copy(r.page(1), stale).status
      if (seen.at(-1) !== status) seen.push(status)
      if (mode === 'event-loop' ? status === 'again' : status === 'ok') break
    }
    return { r, removed, isRemoved, stale, madvise, seen, status }
  }
}

test('[event-loop] ordering: an install racing a remove event is refused until onBatch has the event, so no stale page', async (t) => {
  const { r, removed, isRemoved, stale, madvise, seen } = await removeRace('event-loop')(t)
  t.is(seen.at(-1), 'again', `install attempts went ${seen.join(' -> ')}`)
  // While JS holds the thread the event stays unread, and every install keeps failing.
  const until = Date.now() + 50
  let refused = 0
  let other = 0
  while (Date.now() < until) r.uffd.copy(r.page(1), stale).status === 'again' ? refused++ : other++
  t.true(refused > 0)
  t.is(other, 0, 'no install succeeds while the event is unread')
  t.deepEqual(removed, [], 'onBatch cannot have run: JS has not yielded')
  await settles(madvise, 'madvise')
  // madvise returned, so the event was read: by then onBatch had it (same tick as the read).
  t.deepEqual(removed, [[r.page(1), r.page(2)]])
  // The reply handler checks before installing; so the target reads zeros at page 1.
  if (!isRemoved(r.page(1))) r.uffd.copy(r.page(1), stale)
  const { values } = await settles(testing.touch({ addresses: [r.page(0), r.page(1), r.page(2)] }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), 0n, BigInt(r.page(2))])
})

test('[thread] ordering hazard: the loop thread acknowledges the remove before JS hears of it, so a racing install lands stale data', async (t) => {
  // This documents why event-loop mode exists; if it ever fails, update index.d.ts.
  const { r, removed, madvise, seen } = await removeRace('thread')(t)
  t.is(seen.at(-1), 'ok', `install attempts went ${seen.join(' -> ')}`)
  t.deepEqual(removed, [], 'the install succeeded before onBatch was told of the remove')
  await settles(madvise, 'madvise')
  await r.waitFor((b) => b.events.length > 0, 'remove event')
  // The page the target zapped (and expects to read as zeros) holds the old data.
  const { values } = await settles(testing.touch({ addresses: [r.page(1)] }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(1))])
})
