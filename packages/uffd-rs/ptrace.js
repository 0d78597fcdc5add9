// @lazymig/uffd-rs: ptrace, syscall injection, process memory I/O, pidfd and unix-socket
// fd passing (the native `ptrace` feature). Types and contracts: ptrace.d.ts.
// Every ptrace call must come from the JS main thread: the kernel ties a tracee to the
// tracer *thread*, and this module is only ever called synchronously from it.
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
const file = `./uffd-rs.${process.platform}-${process.arch}-gnu.node`
let native
try {
  // The same module object index.js gets (require caches it).
  native = require(file)
} catch (err) {
  throw new Error(`@lazymig/uffd-rs: cannot load ${file} (run \`npm run build\` in packages/uffd-rs): ${err.message}`, { cause: err })
}
if (typeof native.ptraceSeize !== 'function') {
  throw new Error(`@lazymig/uffd-rs: ${file} was built without the "ptrace" feature (run \`npm run build\` in packages/uffd-rs)`)
}

/** PTRACE_EVENT_* values as reported in StopState.event. */
export const PTRACE_EVENT = Object.freeze({ FORK: 1, VFORK: 2, CLONE: 3, EXEC: 4, VFORK_DONE: 5, EXIT: 6, SECCOMP: 7, STOP: 128 })

export const ptrace = Object.freeze({
  seize: (tid, opts) => native.ptraceSeize(tid, opts),
  interrupt: (tid) => native.ptraceInterrupt(tid),
  waitStop: (tid, timeoutMs) => native.ptraceWaitStop(tid, timeoutMs),
  getRegs: (tid) => native.ptraceGetRegs(tid),
  setRegs: (tid, regs) => native.ptraceSetRegs(tid, regs),
  getXstate: (tid) => native.ptraceGetXstate(tid),
  setXstate: (tid, xstate) => native.ptraceSetXstate(tid, xstate),
  getSigmask: (tid) => native.ptraceGetSigmask(tid),
  setSigmask: (tid, mask) => native.ptraceSetSigmask(tid, mask),
  getRseqConfig: (tid) => native.ptraceGetRseqConfig(tid),
  cont: (tid, signal) => native.ptraceCont(tid, signal),
  syscall: (tid, signal) => native.ptraceSyscall(tid, signal),
  detach: (tid, signal) => native.ptraceDetach(tid, signal),
})

export class SyscallInjector {
  #h
  #tid

  constructor(tid, gadget, opts) {
    this.#h = native.injectorCreate(tid, gadget, opts)
    this.#tid = tid
  }

  get tid() {
    return this.#tid
  }

  call(nr, args) {
    return native.injectorCall(this.#h, nr, args)
  }

  runList(runner, list, calls) {
    return native.injectorRunList(this.#h, runner, list, calls)
  }

  get count() {
    return native.injectorCount(this.#h)
  }

  get pendingSignals() {
    return native.injectorPendingSignals(this.#h)
  }

  restore() {
    native.injectorRestore(this.#h)
  }
}

/** The machine code SyscallInjector.runList runs (write it into the target first). */
export const SYSCALL_RUNNER_CODE = native.syscallRunnerCode()

export function findSyscallGadget(pid, start, len) {
  return native.findSyscallGadget(pid, start, len)
}

export function processVmRead(pid, ranges, into) {
  return native.processVmRead(pid, ranges, into)
}

export function processVmWrite(pid, ranges, from) {
  return native.processVmWrite(pid, ranges, from)
}

export function pidfdOpen(pid) {
  return native.pidfdOpen(pid)
}

export function pidfdGetfd(pidfd, targetFd) {
  return native.pidfdGetfd(pidfd, targetFd)
}

export function closeFd(fd) {
  native.closeFd(fd)
}

export const unixSocket = Object.freeze({
  connect: (path, timeoutMs) => native.unixConnect(path, timeoutMs),
  send: (fd, payload, fds) => native.unixSend(fd, payload, fds),
  recv: (fd, maxBytes, timeoutMs) => native.unixRecv(fd, maxBytes, timeoutMs),
})

export class UnixSocketServer {
  #h
  #closed = null
  #path

  constructor(path, onMessage) {
    if (typeof onMessage !== 'function') throw new TypeError('onMessage must be a function')
    this.#path = path
    this.#h = native.unixServerStart(path, onMessage)
  }

  get path() {
    return this.#path
  }

  close() {
    if (!this.#closed) this.#closed = native.unixServerClose(this.#h)
    return this.#closed
  }
}

/** PAGEMAP_SCAN page categories (PAGE_IS_*, include/uapi/linux/fs.h) as bits. */
export const PAGE_IS = Object.freeze({
  WPALLOWED: 1 << 0, WRITTEN: 1 << 1, FILE: 1 << 2, PRESENT: 1 << 3, SWAPPED: 1 << 4, PFNZERO: 1 << 5, HUGE: 1 << 6, SOFT_DIRTY: 1 << 7, GUARD: 1 << 8,
})

export function pagemapScanPid(pid, ranges, anyof, report) {
  return native.pagemapScanPid(pid, ranges, anyof, report)
}

export function syscallExitCounter(tid, nrs) {
  return native.syscallExitCounter(tid, nrs)
}

export function readSyscallCounter(fd) {
  return native.readSyscallCounter(fd)
}

export function getRobustList(tid) {
  return native.getRobustList(tid)
}

/**
 * One page-server connection served on a native thread (see ptrace.d.ts). Tokens of
 * queued frames are kept here, so a send's callback runs once its frame is written.
 */
export class PageStream {
  #handle
  #sent = new Map()
  #nextToken = 1
  #closed = false

  constructor(fd, head, greeting, bufferBytes, onEvent) {
    this.#handle = native.pageStreamStart(fd, head, bufferBytes, greeting, (e) => {
      if (e.type === 'sent') {
        const cb = this.#sent.get(e.token)
        this.#sent.delete(e.token)
        cb?.()
        return
      }
      if (e.type === 'closed') this.#closed = true
      onEvent(e)
    })
  }

  get closed() {
    return this.#closed
  }

  serve(ranges, maxPages) {
    native.pageStreamServe(this.#handle, ranges, maxPages)
  }

  resume() {
    native.pageStreamResume(this.#handle)
  }

  send(payload, onSent) {
    const token = this.#nextToken++
    if (onSent) this.#sent.set(token, onSent)
    native.pageStreamSend(this.#handle, payload, token)
  }

  close(code, reason) {
    native.pageStreamClose(this.#handle, code, reason)
  }

  terminate() {
    native.pageStreamTerminate(this.#handle)
  }

  get stats() {
    return native.pageStreamStats(this.#handle)
  }
}
