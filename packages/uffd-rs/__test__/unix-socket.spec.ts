// Unix sockets with SCM_RIGHTS: the client calls, and the native-thread server.
import test, { type ExecutionContext } from 'ava'
import { execFileSync, spawn } from 'node:child_process'
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import { pathToFileURL } from 'node:url'
import { UnixSocketServer, closeFd, unixSocket, type PtraceSystemError, type UnixSocketMessage } from '../ptrace.js'

function tmpDir(t: ExecutionContext): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'lazymig-sock-'))
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }))
  return d
}

function settles<T>(p: Promise<T>, what: string, ms = 10_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

/** Collects server messages; next() resolves with the next one. */
class Inbox {
  readonly all: UnixSocketMessage[] = []
  #waiters: Array<(m: UnixSocketMessage) => void> = []
  #read = 0
  push = (m: UnixSocketMessage): void => {
    this.all.push(m)
    const w = this.#waiters.shift()
    if (w) {
      this.#read++
      w(m)
    }
  }
  next(what = 'message'): Promise<UnixSocketMessage> {
    if (this.#read < this.all.length) return Promise.resolve(this.all[this.#read++]!)
    return settles(new Promise((r) => this.#waiters.push(r)), what, 5000)
  }
}

function server(t: ExecutionContext, p: string, inbox: Inbox): UnixSocketServer {
  const s = new UnixSocketServer(p, inbox.push)
  t.teardown(() => s.close())
  return s
}

/** Both ends of a fresh pipe (through a FIFO: Node has no pipe()). */
function pipe(t: ExecutionContext, dir: string): { r: number; w: number } {
  const fifo = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`)
  execFileSync('mkfifo', [fifo])
  const r = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK)
  const w = fs.openSync(fifo, fs.constants.O_WRONLY)
  t.teardown(() => {
    fs.closeSync(r)
    fs.closeSync(w)
  })
  return { r, w }
}

test('payload + 2 fds reach the server usable; replies go back on connFd; close is reported', async (t) => {
  const dir = tmpDir(t)
  const sockPath = path.join(dir, 'lazy-pages.socket')
  const inbox = new Inbox()
  server(t, sockPath, inbox)
  t.true(fs.statSync(sockPath).isSocket())
  const client = unixSocket.connect(sockPath, 1000)
  // Closed exactly once: a second close could hit a number another test reused meanwhile.
  let clientOpen = true
  t.teardown(() => {
    if (clientOpen) closeFd(client)
  })
  const { r, w } = pipe(t, dir)
  unixSocket.send(client, Buffer.from('uffd for pid 42'), [r, w])
  const m = await inbox.next()
  if (!('payload' in m)) return t.fail('expected a message')
  t.is(m.payload.toString(), 'uffd for pid 42')
  t.true(Buffer.isBuffer(m.payload))
  t.is(m.fds.length, 2)
  t.false(m.fds.includes(r) || m.fds.includes(w), 'new fd numbers')
  const [sr, sw] = m.fds as [number, number]
  // Server's write end -> client's read end, and client's write end -> server's read end.
  fs.writeSync(sw, 'from server')
  const got = Buffer.alloc(64)
  t.is(got.subarray(0, fs.readSync(r, got)).toString(), 'from server')
  fs.writeSync(w, 'from client')
  t.is(got.subarray(0, fs.readSync(sr, got)).toString(), 'from client')
  // Received fds are O_CLOEXEC.
  const flags = parseInt(/^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${sr}`, 'utf8'))![1]!, 8)
  t.truthy(flags & 0o2000000, 'O_CLOEXEC set')
  closeFd(sr)
  closeFd(sw)

  // A reply with an fd attached.
  unixSocket.send(m.connFd, Buffer.from('ack'), [w])
  const reply = unixSocket.recv(client, 1024, 1000)
  t.truthy(reply)
  t.is(reply!.payload.toString(), 'ack')
  t.is(reply!.fds.length, 1)
  t.is(fs.fstatSync(reply!.fds[0]!).ino, fs.fstatSync(w).ino)
  closeFd(reply!.fds[0]!)

  // Messages keep their boundaries.
  unixSocket.send(client, Buffer.from('one'))
  unixSocket.send(client, Buffer.from('two'))
  const [m1, m2] = [await inbox.next(), await inbox.next()]
  t.deepEqual([m1, m2].map((x) => ('payload' in x ? x.payload.toString() : 'closed')), ['one', 'two'])

  // recv is bounded.
  const t0 = performance.now()
  const e = t.throws(() => unixSocket.recv(client, 1024, 100)) as PtraceSystemError
  t.is(e.code, 'ETIMEDOUT')
  t.true(performance.now() - t0 >= 99)

  closeFd(client)
  clientOpen = false
  const c = await inbox.next('closed event')
  t.deepEqual(c, { connFd: m.connFd, closed: true })
})

test('close() with a connected client does not hang; the client then sees EOF; the path is gone', async (t) => {
  const dir = tmpDir(t)
  const sockPath = path.join(dir, 's')
  const inbox = new Inbox()
  const s = server(t, sockPath, inbox)
  const client = unixSocket.connect(sockPath, 1000)
  t.teardown(() => closeFd(client))
  unixSocket.send(client, Buffer.from('hello'))
  await inbox.next()
  await settles(s.close(), 'close()')
  t.is(s.close(), s.close(), 'idempotent')
  t.false(fs.existsSync(sockPath))
  t.is(unixSocket.recv(client, 16, 1000), null)
  const e = t.throws(() => unixSocket.send(client, Buffer.from('x'))) as PtraceSystemError
  t.true(e.code === 'EPIPE' || e.code === 'ECONNRESET' || e.code === 'ENOTCONN', e.code)
})

test('a process exits by itself after close(); connect waits for a server that starts later', async (t) => {
  const dir = tmpDir(t)
  const sockPath = path.join(dir, 'late.socket')
  const mod = pathToFileURL(path.resolve(import.meta.dirname, '../ptrace.js')).href
  // The child starts its server 300 ms late, answers one message, closes the server while
  // the client is still connected, and must then exit without any help.
  const script = `
    import { UnixSocketServer, unixSocket } from ${JSON.stringify(mod)}
    await new Promise((r) => setTimeout(r, 300))
    const s = new UnixSocketServer(${JSON.stringify(sockPath)}, (m) => {
      if (!('payload' in m)) return
      unixSocket.send(m.connFd, Buffer.from('pong:' + m.payload.toString()))
      s.close().then(() => console.log('closed'))
    })
  `
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => child.kill('SIGKILL'))
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))

  const client = unixSocket.connect(sockPath, 10_000)
  t.teardown(() => closeFd(client))
  unixSocket.send(client, Buffer.from('ping'))
  const reply = unixSocket.recv(client, 64, 10_000)
  t.is(reply?.payload.toString(), 'pong:ping')
  const code = await settles(exited, `child exit (output: ${out})`, 10_000)
  t.is(code, 0, out)
  t.regex(out, /closed/)
  t.false(fs.existsSync(sockPath))
})

test('errors: connect timeout, EADDRINUSE, stale socket replaced, non-socket kept, bad input', async (t) => {
  const dir = tmpDir(t)
  const nowhere = path.join(dir, 'nobody-here')
  const t0 = performance.now()
  const e1 = t.throws(() => unixSocket.connect(nowhere, 150)) as PtraceSystemError
  const ms = performance.now() - t0
  t.is(e1.code, 'ETIMEDOUT')
  t.is(e1.path, nowhere)
  t.regex(e1.message, new RegExp(`connect ${nowhere}: ETIMEDOUT .*ENOENT`))
  t.true(ms >= 150 && ms < 1000, `${ms} ms`)

  const live = path.join(dir, 'live')
  const inbox = new Inbox()
  server(t, live, inbox)
  const e2 = t.throws(() => new UnixSocketServer(live, () => {})) as PtraceSystemError
  t.is(e2.code, 'EADDRINUSE')
  t.regex(e2.message, /another server is listening/)

  // A socket file nobody listens on any more (its server was SIGKILLed) is replaced.
  const stale = path.join(dir, 'stale')
  try {
    execFileSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`], { stdio: 'ignore', timeout: 10_000 })
  } catch {
    /* it SIGKILLs itself */
  }
  t.true(fs.statSync(stale).isSocket(), 'stale socket left behind')
  const inboxStale = new Inbox()
  const s2 = server(t, stale, inboxStale)
  const c = unixSocket.connect(stale, 1000)
  unixSocket.send(c, Buffer.from('x'))
  const m = await inboxStale.next()
  t.true('payload' in m)
  closeFd(c)
  // The liveness probe of the second bind above connected to `live` and hung up without a
  // word: no event for a connection JS never heard of.
  t.deepEqual(inbox.all, [])
  await s2.close()

  const plain = path.join(dir, 'plain-file')
  fs.writeFileSync(plain, 'keep me')
  const e3 = t.throws(() => new UnixSocketServer(plain, () => {})) as PtraceSystemError
  t.is(e3.code, 'EADDRINUSE')
  t.regex(e3.message, /not a socket/)
  t.is(fs.readFileSync(plain, 'utf8'), 'keep me')

  const e4 = t.throws(() => unixSocket.connect('/tmp/' + 'x'.repeat(200), 10)) as PtraceSystemError
  t.is(e4.code, 'ENAMETOOLONG')
  const client = unixSocket.connect(live, 1000)
  t.teardown(() => closeFd(client))
  t.throws(() => unixSocket.send(client, Buffer.alloc(0)), { instanceOf: RangeError })
  t.throws(() => unixSocket.send(client, Buffer.from('x'), [1.5]), { instanceOf: RangeError })
  t.throws(() => unixSocket.recv(client, 0, 10), { instanceOf: RangeError })
  t.throws(() => new UnixSocketServer(path.join(dir, 'y'), 'nope' as unknown as () => void), { instanceOf: TypeError })
  const e5 = t.throws(() => unixSocket.send(client, Buffer.from('x'), [0x7ffffff0])) as PtraceSystemError
  t.is(e5.code, 'EBADF')
  // Too long for maxBytes: EMSGSIZE, the next message is intact.
  const { r } = pipe(t, dir)
  const inbox2 = new Inbox()
  const echo = path.join(dir, 'echo')
  server(t, echo, inbox2)
  const c2 = unixSocket.connect(echo, 1000)
  t.teardown(() => closeFd(c2))
  unixSocket.send(c2, Buffer.from('hi'))
  const hi = await inbox2.next()
  unixSocket.send(hi.connFd, Buffer.alloc(100, 1), [r])
  unixSocket.send(hi.connFd, Buffer.from('small'))
  const e6 = t.throws(() => unixSocket.recv(c2, 10, 1000)) as PtraceSystemError
  t.is(e6.code, 'EMSGSIZE')
  t.is(unixSocket.recv(c2, 10, 1000)?.payload.toString(), 'small')
})
