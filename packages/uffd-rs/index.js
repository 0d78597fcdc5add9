// @lazymig/uffd-rs: userfaultfd, the fault loop and write-protect tracking for Node.
// The native module exports raw functions taking fds and numbers; this file wraps them in
// the small classes of index.d.ts. Only this file loads the .node.
import { closeSync, writeSync } from 'node:fs'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

function load() {
  const file = `./uffd-rs.${process.platform}-${process.arch}-gnu.node`
  try {
    return require(file)
  } catch (err) {
    const hint = process.platform === 'linux' ? 'run `npm run build` in packages/uffd-rs' : 'userfaultfd exists on Linux only'
    throw new Error(`@lazymig/uffd-rs: cannot load ${file} (${hint}): ${err.message}`, { cause: err })
  }
}

const native = load()

export const PAGE_SIZE = native.PAGE_SIZE

/** kind values of installBatch ranges. */
export const RangeKind = Object.freeze({ copy: 0, zero: 1 })

const STATUS = ['ok', 'exists', 'again', 'gone', 'unmapped']
const INTERNAL = Symbol('internal')

/** Loops each Userfaultfd was added to, so close() can detach it first. */
const attachedLoops = new WeakMap()

export class Userfaultfd {
  #fd

  constructor(token, fd) {
    if (token !== INTERNAL) throw new TypeError('use Userfaultfd.open() or Userfaultfd.adopt(fd)')
    this.#fd = fd
  }

  static open(opts = {}) {
    if (opts === null || typeof opts !== 'object') throw new TypeError('options must be an object')
    return new Userfaultfd(INTERNAL, native.uffdOpen(opts.nonBlocking ?? true))
  }

  static adopt(fd) {
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new RangeError(`fd must be a non-negative integer, got ${fd}`)
    return new Userfaultfd(INTERNAL, fd)
  }

  /** The fd number, or -1 once closed. */
  get fd() {
    return this.#fd
  }

  get closed() {
    return this.#fd < 0
  }

  handshake(features = []) {
    return native.uffdHandshake(this.#fd, features)
  }

  register(start, len, mode) {
    return native.uffdRegister(this.#fd, start, len, mode)
  }

  unregister(start, len) {
    native.uffdUnregister(this.#fd, start, len)
  }

  copy(dst, src, opts) {
    return native.uffdCopy(this.#fd, dst, src, opts)
  }

  zeropage(dst, len, opts) {
    return native.uffdZeropage(this.#fd, dst, len, opts)
  }

  wake(start, len) {
    native.uffdWake(this.#fd, start, len)
  }

  installBatch(data, ranges, opts) {
    return native.uffdInstallBatch(this.#fd, data, ranges, opts)
  }

  writeProtect(start, len, protect, opts) {
    native.uffdWriteProtect(this.#fd, start, len, protect, opts)
  }

  close() {
    if (this.#fd < 0) return
    const fd = this.#fd
    for (const loop of attachedLoops.get(this) ?? []) loop.remove(fd)
    attachedLoops.delete(this)
    this.#fd = -1
    native.uffdClose(fd)
  }
}

function decodeFaults(flat) {
  const n = flat.length >>> 2
  const faults = new Array(n)
  for (let i = 0, j = 0; i < n; i++, j += 4) {
    const flags = flat[j + 2]
    faults[i] = { fd: flat[j], address: flat[j + 1], write: (flags & 1) !== 0, wp: (flags & 2) !== 0, minor: (flags & 4) !== 0, tid: flat[j + 3] }
  }
  return faults
}

export class FaultLoop {
  #handle
  #mode
  #stopped = null
  #uffds = new Map()

  constructor(onBatch, opts) {
    if (typeof onBatch !== 'function') throw new TypeError('onBatch must be a function')
    this.#handle = native.loopCreate((flat, events) => onBatch({ faults: decodeFaults(flat), events }), opts)
    this.#mode = opts?.mode ?? 'thread'
  }

  /** 'thread' or 'event-loop'. */
  get mode() {
    return this.#mode
  }

  add(uffd) {
    if (this.#stopped) throw new Error('FaultLoop is stopped')
    const isObj = uffd instanceof Userfaultfd
    const fd = isObj ? uffd.fd : uffd
    native.loopAdd(this.#handle, fd)
    if (isObj) {
      this.#uffds.set(fd, uffd)
      let loops = attachedLoops.get(uffd)
      if (!loops) attachedLoops.set(uffd, (loops = new Set()))
      loops.add(this)
    }
  }

  remove(fd) {
    if (fd instanceof Userfaultfd) fd = fd.fd
    const uffd = this.#uffds.get(fd)
    if (uffd) {
      this.#uffds.delete(fd)
      attachedLoops.get(uffd)?.delete(this)
    }
    if (this.#stopped) return
    native.loopRemove(this.#handle, fd)
  }

  /** Let Node exit while this loop runs (it keeps Node alive by default). */
  unref() {
    if (!this.#stopped) native.loopRef(this.#handle, false)
    return this
  }

  ref() {
    if (!this.#stopped) native.loopRef(this.#handle, true)
    return this
  }

  /** Background installs ordered with this loop's reads ('event-loop' mode only); see index.d.ts. */
  backgroundInstaller(onDone, opts) {
    if (this.#mode !== 'event-loop') throw new Error("background installs need a FaultLoop in 'event-loop' mode")
    if (this.#stopped) throw new Error('FaultLoop is stopped')
    if (typeof onDone !== 'function') throw new TypeError('onDone must be a function')
    return new BackgroundInstaller(native.installerCreate(this.#handle, onDone, opts?.threads ?? 1))
  }

  /** Where a PageReceiver may install pages: dst in uffd's process, until this loop reads an event from it. */
  installTarget(uffd, dst) {
    if (this.#mode !== 'event-loop') throw new Error("install targets need a FaultLoop in 'event-loop' mode")
    if (this.#stopped) throw new Error('FaultLoop is stopped')
    return new InstallTarget(native.installTargetCreate(this.#handle, uffd instanceof Userfaultfd ? uffd.fd : uffd, dst))
  }

  /** The page of the latest missing-page fault read from uffd, whoever served it; see index.d.ts. */
  lastFault(uffd) {
    return native.loopLastFault(this.#handle, uffd instanceof Userfaultfd ? uffd.fd : uffd)
  }

  /** Faults this loop's connections took without JS so far; see index.d.ts. */
  nearFaults() {
    return native.loopNearFaults(this.#handle)
  }

  stop() {
    if (!this.#stopped) {
      for (const uffd of this.#uffds.values()) attachedLoops.get(uffd)?.delete(this)
      this.#uffds.clear()
      this.#stopped = native.loopStop(this.#handle)
    }
    return this.#stopped
  }
}

export class BackgroundInstaller {
  #handle
  #stopped = false

  constructor(handle) {
    this.#handle = handle
  }

  submit(id, uffd, dst, data) {
    if (this.#stopped) throw new Error('BackgroundInstaller is stopped')
    native.installerSubmit(this.#handle, id, uffd instanceof Userfaultfd ? uffd.fd : uffd, dst, data)
  }

  present(id, offset, len) {
    if (!this.#stopped) native.installerPresent(this.#handle, id, offset, len)
  }

  stop() {
    if (this.#stopped) return
    this.#stopped = true
    native.installerStop(this.#handle)
  }
}

export class InstallTarget {
  #handle

  constructor(handle) {
    this.#handle = handle
  }

  static handleOf(t) {
    return t.#handle
  }
}

export class PageReceiver {
  #handle
  #closed = false
  #closeTimer = null

  constructor(fd, head, maxBytes, onEvent, lane = 'background') {
    this.#handle = native.pageReceiverStart(fd, head, maxBytes, (e) => {
      if (e.type === 'closed') {
        this.#closed = true
        clearTimeout(this.#closeTimer)
      }
      onEvent(e)
    }, lane)
  }

  get closed() {
    return this.#closed
  }

  request(id, pid, address, pages, target, payload) {
    native.pageReceiverRequest(this.#handle, id, pid, address, pages, InstallTarget.handleOf(target), payload)
  }

  cancel(id) {
    native.pageReceiverCancel(this.#handle, id)
  }

  present(id, offset, len) {
    native.pageReceiverPresent(this.#handle, id, offset, len)
  }

  installNow(id, offset, len) {
    return native.pageReceiverInstallNow(this.#handle, id, offset, len)
  }

  send(payload) {
    native.pageReceiverSend(this.#handle, payload)
  }

  ping() {
    native.pageReceiverPing(this.#handle)
  }

  hold(on) {
    native.pageReceiverHold(this.#handle, on)
  }

  close(code = 1000) {
    if (this.#closed || this.#closeTimer) return
    native.pageReceiverClose(this.#handle, code)
    // A server that never answers the close frame: the connection ends anyway.
    this.#closeTimer = setTimeout(() => this.terminate(), 1000)
    this.#closeTimer.unref()
  }

  terminate() {
    native.pageReceiverTerminate(this.#handle)
  }

  get state() {
    return native.pageReceiverState(this.#handle)
  }
}

export function probe() {
  return native.probe()
}

export function pagemapScan(start, len, opts) {
  return native.pagemapScan(start, len, opts)
}

/** CRC32C of data, continuing seed (a finished CRC32C; 0 starts a new one). */
export function crc32c(data, seed = 0) {
  return native.crc32c(data, seed)
}

/** How far into its page the first byte of `data` lies (0 ≤ result < PAGE_SIZE). */
export function pageOffset(data) {
  return native.pageOffset(data)
}

/** Each page's CRC32C into out[outOffset..]; returns crc32c(data, seed). */
export function crc32cPages(data, pageSize, out, outOffset = 0, seed = 0) {
  if (!(out instanceof Uint32Array)) throw new TypeError('out must be a Uint32Array')
  return native.crc32cPages(data, pageSize, out, outOffset, seed)
}

/** sched_setaffinity(tid ?? 0, cpus): the CPUs the calling (JS) thread, or thread tid, may run on. */
export function setThreadAffinity(cpus, tid) {
  if (tid === undefined) native.setThreadAffinity(cpus)
  else native.setThreadAffinity(cpus, tid)
}

/** sched_getaffinity(0): the CPUs the calling (JS) thread may run on, ascending. */
export function getThreadAffinity(tid) {
  return tid === undefined ? native.getThreadAffinity() : native.getThreadAffinity(tid)
}

/** setsockopt(fd, TCP_CONGESTION, name): the algorithm a TCP socket sends with from now on. */
export function setTcpCongestion(fd, name) {
  native.setTcpCongestion(fd, name)
}

/** getsockopt(fd, TCP_CONGESTION): the algorithm a TCP socket sends with. */
export function tcpCongestion(fd) {
  return native.tcpCongestion(fd)
}

export const testing = Object.freeze({
  mapAnonymous: (len) => native.testMapAnonymous(len),
  unmap: (addr, len) => native.testUnmap(addr, len),
  madvise: (addr, len, advice) => native.testMadvise(addr, len, advice),
  mremap: (addr, oldLen, newLen, newAddr) => native.testMremap(addr, oldLen, newLen, newAddr),
  touch: (opts) => native.testTouch(opts),
  readU64: (addr) => native.testReadU64(addr),
  writeU64: (addr, value) => native.testWriteU64(addr, value),
  fill: (addr, len, pattern) => native.testFill(addr, len, pattern),
  /** Alias of setThreadAffinity (kept for older tests). */
  setAffinity: (cpus) => setThreadAffinity(cpus),
  /** Alias of getThreadAffinity (kept for older tests). */
  getAffinity: () => getThreadAffinity(),
  benchRustHandler: (opts) => native.testBenchRustHandler(opts),
  gateTurns: (rounds) => native.testGateTurns(rounds),
  madviseOnThread: (addr, len, advice) => native.testOnThread('madvise', addr, len, advice).then(() => undefined),
  unmapOnThread: (addr, len) => native.testOnThread('munmap', addr, len).then(() => undefined),
  mremapOnThread: (addr, oldLen, newLen, newAddr) => native.testOnThread('mremap', addr, oldLen, newLen, newAddr),
  forkTarget: (opts = {}) => {
    const t = native.testForkTarget(opts.pages ?? 4, opts.timeoutMs)
    let sock = t.sock
    const closeSock = () => {
      if (sock >= 0) closeSync(sock)
      sock = -1
    }
    t.done.finally(closeSock).catch(() => {})
    return {
      pid: t.pid,
      uffd: t.uffd,
      start: t.start,
      done: t.done,
      go() {
        if (sock < 0) throw new Error('go() was already called')
        writeSync(sock, Buffer.of(1))
        closeSock()
      },
    }
  },
})

export { STATUS as OUTCOME_STATUSES }

export * from './ptrace.js'
