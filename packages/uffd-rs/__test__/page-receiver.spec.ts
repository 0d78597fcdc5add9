import net from 'node:net'
import test, { type ExecutionContext } from 'ava'
import { PageReceiver, pagemapScan, testing, type PageReceiverEvent, type UffdFeature } from '../index.js'
import { PS, Region, settles, stampedPage } from './helpers.js'

/** A server frame (unmasked, final) with `opcode` and `payload`. */
function serverFrame(opcode: number, payload: Uint8Array): Buffer {
  const n = payload.length
  const head = n < 126 ? Buffer.from([0x80 | opcode, n]) : n < 65536 ? Buffer.from([0x80 | opcode, 126, n >> 8, n & 0xff]) : Buffer.alloc(10)
  if (n >= 65536) {
    head[0] = 0x80 | opcode
    head[1] = 127
    head.writeBigUInt64BE(BigInt(n), 2)
  }
  return Buffer.concat([head, payload])
}

/** A `pages` message [18, id, pid, address, pages, data] as the page servers write it. */
function pagesMessage(id: number, pid: number, address: number, data: Buffer): Buffer {
  const h = Buffer.alloc(31)
  h[0] = 0x96
  h[1] = 18
  h[2] = 0xce
  h.writeUInt32BE(id, 3)
  h[7] = 0xce
  h.writeUInt32BE(pid, 8)
  h[12] = 0xcf
  h.writeBigUInt64BE(BigInt(address), 13)
  h[21] = 0xce
  h.writeUInt32BE(data.length / PS, 22)
  h[26] = 0xc6
  h.writeUInt32BE(data.length, 27)
  return Buffer.concat([h, data])
}

/** Reads the client's (masked) frames from `sock`: resolves them one at a time. */
function frameReader(sock: net.Socket): () => Promise<{ opcode: number; payload: Buffer }> {
  let buf = Buffer.alloc(0)
  let wake: (() => void) | null = null
  sock.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d])
    wake?.()
  })
  const take = (): { opcode: number; payload: Buffer } | null => {
    if (buf.length < 2) return null
    if ((buf[1]! & 0x80) === 0) throw new Error('client frame not masked')
    let len = buf[1]! & 0x7f
    let at = 2
    if (len === 126) {
      if (buf.length < 4) return null
      len = buf.readUInt16BE(2)
      at = 4
    }
    if (buf.length < at + 4 + len) return null
    const mask = buf.subarray(at, at + 4)
    const payload = Buffer.from(buf.subarray(at + 4, at + 4 + len).map((b, i) => b ^ mask[i & 3]!))
    const opcode = buf[0]! & 0x0f
    buf = buf.subarray(at + 4 + len)
    return { opcode, payload }
  }
  return async () => {
    for (;;) {
      const f = take()
      if (f) return f
      await settles(new Promise<void>((r) => (wake = r)), 'a frame from the receiver')
    }
  }
}

/** A connected pair on loopback: the client end handed to a PageReceiver, the server end ours. */
async function connected(t: ExecutionContext, maxBytes: number, lane: 'background' | 'fault' = 'background') {
  const server = net.createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const accepted = new Promise<net.Socket>((r) => server.once('connection', r))
  const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1')
  await new Promise<void>((r) => client.once('connect', r))
  const peer = await accepted
  t.teardown(() => peer.destroy())
  const handle = (client as unknown as { _handle: { fd: number; readStop(): number } })._handle
  handle.readStop()
  const events: PageReceiverEvent[] = []
  let wake: (() => void) | null = null
  const receiver = new PageReceiver(handle.fd, new Uint8Array(0), maxBytes, (e) => {
    events.push(e)
    wake?.()
  }, lane)
  client.destroy()
  t.teardown(() => receiver.terminate())
  const next = async (): Promise<PageReceiverEvent> => {
    while (events.length === 0) await settles(new Promise<void>((r) => (wake = r)), 'a receiver event')
    return events.shift()!
  }
  return { receiver, peer, read: frameReader(peer), next }
}

const installsAReply = test.macro({
  async exec(t, lane: 'background' | 'fault') {
  const r = Region.create(t, { pages: 64 })
  r.serve(() => undefined, { mode: 'event-loop' }) // faults are left to the receiver
  const { receiver, peer, read, next } = await connected(t, 64 * PS, lane)
  const touched = testing.touch({ addresses: [r.page(40)] })
  receiver.request(1, 77, 0x7f0000001000, 64, r.loop!.installTarget(r.uffd, r.start), Buffer.from('request 1'))
  const sent = await read()
  t.deepEqual([sent.opcode, sent.payload.toString()], [2, 'request 1'])
  const data = Buffer.concat(Array.from({ length: 64 }, (_, i) => stampedPage(r.page(i))))
  peer.write(serverFrame(2, pagesMessage(1, 77, 0x7f0000001000, data)))
  t.deepEqual(await next(), { type: 'installed', id: 1, bytes: 64 * PS, end: 'done' })
  t.deepEqual([...(await settles(touched, 'touch')).values], [BigInt(r.page(40))])
  const { values } = await settles(testing.touch({ start: r.start, count: 64 }), 'touch all')
  t.deepEqual([...values], Array.from({ length: 64 }, (_, i) => BigInt(r.page(i))))
  t.like(receiver.state, { replies: 1, pagesInstalled: 64, bytesReceived: 64 * PS })
  t.is(receiver.installNow(1, 0, PS), 'absent', 'a reply wholly dealt with is gone from the buffers')
  },
  title: (_, lane: 'background' | 'fault') =>
    `a reply is installed where its request said, waking a thread that waits for a page of it; JS hears once (${lane} lane)`,
})

test(installsAReply, 'background')
test(installsAReply, 'fault')

test('requests written while held leave when released, in order, and their replies install', async (t) => {
  const r = Region.create(t, { pages: 8 })
  r.serve(() => undefined, { mode: 'event-loop' })
  const { receiver, peer, read, next } = await connected(t, 8 * PS, 'fault')
  receiver.hold(true)
  receiver.request(1, 77, 0x7f0000001000, 4, r.loop!.installTarget(r.uffd, r.start), Buffer.from('request 1'))
  receiver.request(2, 77, 0x7f0000005000, 4, r.loop!.installTarget(r.uffd, r.page(4)), Buffer.from('request 2'))
  receiver.hold(false)
  t.deepEqual([(await read()).payload.toString(), (await read()).payload.toString()], ['request 1', 'request 2'])
  for (const [id, first] of [[1, 0], [2, 4]] as const) {
    const data = Buffer.concat(Array.from({ length: 4 }, (_, i) => stampedPage(r.page(first + i))))
    peer.write(serverFrame(2, pagesMessage(id, 77, 0x7f0000001000 + first * PS, data)))
    t.deepEqual(await next(), { type: 'installed', id, bytes: 4 * PS, end: 'done' })
  }
  const { values } = await settles(testing.touch({ start: r.start, count: 8 }), 'touch all')
  t.deepEqual([...values], Array.from({ length: 8 }, (_, i) => BigInt(r.page(i))))
})

test('a reply that does not match its request installs nothing; other frames pass to JS; pings are answered; a close ends it', async (t) => {
  const r = Region.create(t, { pages: 8 })
  r.serve(() => undefined, { mode: 'event-loop' })
  const { receiver, peer, read, next } = await connected(t, 8 * PS)
  const target = r.loop!.installTarget(r.uffd, r.start)
  receiver.request(2, 77, 0x10000, 4, target, Buffer.from('r2'))
  receiver.request(3, 77, 0x20000, 4, target, Buffer.from('r3'))
  await read()
  await read()
  const four = Buffer.concat([0, 1, 2, 3].map((i) => stampedPage(r.page(i))))
  // Wrong address for 2; 3 was given up (cancel) before its reply came: read and dropped.
  peer.write(serverFrame(2, pagesMessage(2, 77, 0x30000, four)))
  receiver.cancel(3)
  peer.write(serverFrame(2, pagesMessage(3, 77, 0x20000, four)))
  const error = Buffer.from([0x93, 19, 2, 0xa3, 0x6e, 0x6f, 0x21]) // [19, 2, "no!"]
  peer.write(serverFrame(2, error))
  const bad = await next()
  t.is(bad.type, 'bad-reply')
  t.regex((bad as { error: string }).error, /reply 2 is pid 77 0x30000\+4 pages, the request pid 77 0x10000\+4 pages/)
  t.deepEqual(await next(), { type: 'message', data: new Uint8Array(error) })
  t.deepEqual(pagemapScan(r.start, 8 * PS, { present: true }), [], 'nothing installed')
  peer.write(serverFrame(9, Buffer.from('hb')))
  t.deepEqual(await read(), { opcode: 10, payload: Buffer.from('hb') })
  peer.write(serverFrame(8, Buffer.from([0x03, 0xe8])))
  t.deepEqual(await read(), { opcode: 8, payload: Buffer.from([0x03, 0xe8]) }, 'the close is echoed')
  t.deepEqual(await next(), { type: 'closed', error: undefined })
  t.true(receiver.closed)
})

test('an event read after a request stales its reply only where it touched: no stale page, the rest goes in', async (t) => {
  const r = Region.create(t, { pages: 4, features: ['eventRemove'] })
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.zeropage(f.address, PS)
  }, { mode: 'event-loop' })
  t.is(r.uffd.copy(r.page(0), stampedPage(r.page(0))).status, 'ok')
  const { receiver, peer, read, next } = await connected(t, 4 * PS)
  receiver.request(5, 77, 0x40000, 1, r.loop!.installTarget(r.uffd, r.page(1)), Buffer.from('r5'))
  receiver.request(6, 77, 0x41000, 1, r.loop!.installTarget(r.uffd, r.page(2)), Buffer.from('r6'))
  await read()
  await read()
  // The event (about page 1 only) is read, and the madvise returns, after both requests.
  await settles(testing.madviseOnThread(r.page(1), PS, 'dontneed'), 'madvise')
  peer.write(serverFrame(2, pagesMessage(5, 77, 0x40000, stampedPage(r.page(1)))))
  t.deepEqual(await next(), { type: 'installed', id: 5, bytes: 0, end: 'stale' })
  peer.write(serverFrame(2, pagesMessage(6, 77, 0x41000, stampedPage(r.page(2)))))
  t.deepEqual(await next(), { type: 'installed', id: 6, bytes: PS, end: 'done' })
  const { values } = await settles(testing.touch({ addresses: [r.page(0), r.page(1), r.page(2)] }), 'touch')
  t.deepEqual([...values], [BigInt(r.page(0)), 0n, BigInt(r.page(2))])
})

test('a frame longer than the largest reply ends the connection, naming it', async (t) => {
  const { peer, read, next } = await connected(t, PS)
  const head = Buffer.from([0x82, 127, 0, 0, 0, 0, 0, 0x20, 0, 0])
  peer.write(head)
  const close = await read()
  t.is(close.opcode, 8)
  const e = await next()
  t.is(e.type, 'closed')
  t.regex((e as { error?: string }).error ?? '', /frame of 2097152 bytes exceeds/)
})

/** Waits (bounded) until the loop's connections have taken `n` faults that wait. */
async function waitersTaken(r: Region, n: number): Promise<void> {
  for (let i = 0; i < 2500; i++) {
    if (r.loop!.nearFaults().waited >= n) return
    await new Promise((res) => setTimeout(res, 2))
  }
  throw new Error(`no ${n} fault(s) taken by the receiver within 5 s (hang)`)
}

/** A region whose faults JS serves with zero pages, unless a receiver takes them first. */
function zeroServed(t: ExecutionContext, pages: number, features: UffdFeature[] = []): Region {
  const r = Region.create(t, { pages, features })
  r.serve(({ faults }) => {
    for (const f of faults) r.uffd.zeropage(f.address, PS)
  }, { mode: 'event-loop' })
  return r
}

/**
 * A zero-served region of `pages`, request `id` for all of them on a background connection,
 * and a thread touching page `page` whose fault the connection has taken.
 */
async function faultTakenFor(t: ExecutionContext, pages: number, id: number, address: number, page: number) {
  const r = zeroServed(t, pages)
  const conn = await connected(t, pages * PS)
  conn.receiver.request(id, 77, address, pages, r.loop!.installTarget(r.uffd, r.start), Buffer.from(`r${id}`))
  await conn.read()
  const touched = testing.touch({ addresses: [r.page(page)] })
  await waitersTaken(r, 1)
  return { r, ...conn, touched }
}

test('a fault on a page of a reply on its way waits for it without JS: the install wakes it, and nearFaults counts it', async (t) => {
  const { r, peer, next, touched } = await faultTakenFor(t, 8, 1, 0x50000, 5)
  t.deepEqual(r.faults, [], 'onBatch never heard of it')
  t.is(r.loop!.lastFault(r.uffd), r.page(5), 'the latest fault read, for whoever follows the faulting threads')
  const data = Buffer.concat(Array.from({ length: 8 }, (_, i) => stampedPage(r.page(i))))
  peer.write(serverFrame(2, pagesMessage(1, 77, 0x50000, data)))
  t.deepEqual(await next(), { type: 'installed', id: 1, bytes: 8 * PS, end: 'done' })
  t.deepEqual([...(await settles(touched, 'touch')).values], [BigInt(r.page(5))], 'the reply, not a zero page')
  const near = r.loop!.nearFaults()
  t.like(near, { waited: 1, installed: 0, pages: 0 })
  t.is(near.serviceUs.length, 0, 'a wait is not an install from a reply at hand')
  t.is(near.waitedUs.length, 1)
  t.is(r.loop!.nearFaults().waitedUs.length, 0, 'service times are handed over once')
})

test('a fault taken for a request that is then given up faults again, for JS', async (t) => {
  const { r, receiver, touched } = await faultTakenFor(t, 4, 2, 0x60000, 1)
  receiver.cancel(2)
  t.deepEqual([...(await settles(touched, 'touch')).values], [0n], "JS's zero page")
  t.deepEqual(r.faults.map((f) => f.address), [r.page(1)])
})

test('faults taken by a connection that ends fault again, for JS', async (t) => {
  const { r, peer, next, touched } = await faultTakenFor(t, 4, 3, 0x70000, 2)
  peer.destroy()
  t.is((await next()).type, 'closed')
  t.deepEqual([...(await settles(touched, 'touch')).values], [0n])
  t.deepEqual(r.faults.map((f) => f.address), [r.page(2)])
})

test('a fault on a background request with more than two replies before it is left to JS; a fault lane request is waited for whatever is before it', async (t) => {
  const r = zeroServed(t, 8)
  const bg = await connected(t, PS)
  const target = (i: number) => r.loop!.installTarget(r.uffd, r.page(i))
  for (let i = 0; i < 4; i++) bg.receiver.request(10 + i, 77, 0x80000 + i * PS, 1, target(i), Buffer.from(`b${i}`))
  for (let i = 0; i < 4; i++) await bg.read()
  // Three replies come before page 3's: JS serves it (a zero page here).
  t.deepEqual([...(await settles(testing.touch({ addresses: [r.page(3)] }), 'touch 3')).values], [0n])
  t.deepEqual(r.faults.map((f) => f.address), [r.page(3)])
  // Two before page 2's: it waits for its reply.
  const touched = testing.touch({ addresses: [r.page(2)] })
  await waitersTaken(r, 1)
  t.is(r.faults.length, 1)
  for (let i = 0; i < 3; i++) bg.peer.write(serverFrame(2, pagesMessage(10 + i, 77, 0x80000 + i * PS, stampedPage(r.page(i)))))
  t.deepEqual([...(await settles(touched, 'touch 2')).values], [BigInt(r.page(2))])
  const fl = await connected(t, PS, 'fault')
  for (let i = 0; i < 3; i++) fl.receiver.request(20 + i, 77, 0x90000 + i * PS, 1, target(5 + i), Buffer.from(`f${i}`))
  for (let i = 0; i < 3; i++) await fl.read()
  const last = testing.touch({ addresses: [r.page(7)] })
  await waitersTaken(r, 2)
  t.is(r.faults.length, 1, 'the fault lane took it')
  for (let i = 0; i < 3; i++) fl.peer.write(serverFrame(2, pagesMessage(20 + i, 77, 0x90000 + i * PS, stampedPage(r.page(5 + i)))))
  t.deepEqual([...(await settles(last, 'touch 7')).values], [BigInt(r.page(7))])
})

test('a fault on a page an event dropped after its request is left to JS, which knows of the event', async (t) => {
  const r = zeroServed(t, 4, ['eventRemove'])
  const { receiver, read } = await connected(t, 4 * PS)
  receiver.request(4, 77, 0xa0000, 4, r.loop!.installTarget(r.uffd, r.start), Buffer.from('r4'))
  await read()
  await settles(testing.madviseOnThread(r.page(1), PS, 'dontneed'), 'madvise')
  await r.waitFor((b) => b.events.some((e) => e.kind === 'remove'), 'the remove event')
  // Its reply would stop there (stale): waiting for it would only delay the zero page.
  t.deepEqual([...(await settles(testing.touch({ addresses: [r.page(1)] }), 'touch')).values], [0n])
  t.deepEqual(r.faults.map((f) => f.address), [r.page(1)])
  t.is(r.loop!.nearFaults().waited, 0)
})
