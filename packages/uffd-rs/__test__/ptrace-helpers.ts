// Helpers of the ptrace / procmem / unix-socket specs: /proc readers and a freeze that is
// always undone (t.teardown), also when the test fails half-way.
import type { ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import { ptrace, SyscallInjector, findSyscallGadget, type StopState } from '../ptrace.js'

export interface Vma {
  start: number
  end: number
  perms: string
  path: string
}

export function maps(pid: number): Vma[] {
  return fs
    .readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/.exec(l)
      if (!m) throw new Error(`bad maps line: ${l}`)
      return { start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, path: m[4]! }
    })
}

export function vmaOf(pid: number, addr: bigint | number): Vma | undefined {
  const a = Number(addr)
  return maps(pid).find((v) => v.start <= a && a < v.end)
}

export function statusField(pid: number, name: string): string {
  const m = new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`no ${name} in /proc/${pid}/status`)
  return m[1]!
}

/** Fields of /proc/PID/stat, numbered like proc(5) (1 = pid, 2 = comm, ...). */
export function statFields(pid: number): string[] {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const close = s.lastIndexOf(')')
  return ['', s.slice(0, s.indexOf(' ')), s.slice(s.indexOf('(') + 1, close), ...s.slice(close + 2).trim().split(' ')]
}

/** A `syscall` instruction in the target's libc text. */
export function gadgetOf(pid: number): number {
  const text = maps(pid).find((v) => v.perms.includes('x') && /libc[.-]/.test(v.path))
  if (!text) throw new Error(`pid ${pid}: no executable libc mapping`)
  const g = findSyscallGadget(pid, text.start, text.end - text.start)
  if (g === null) throw new Error(`pid ${pid}: no syscall instruction in libc text`)
  return g
}

/**
 * Seizes and interrupts every tid; detaches them all at teardown (whatever state they are
 * in: an injector is restored first). Returns the stop each reported.
 */
export function freeze(t: ExecutionContext, tids: number[], injectors: SyscallInjector[] = []): StopState[] {
  const seized: number[] = []
  t.teardown(() => {
    for (const inj of injectors) {
      try {
        inj.restore()
      } catch {
        /* best effort */
      }
    }
    for (const tid of seized) {
      try {
        ptrace.detach(tid)
      } catch {
        /* exited, or already detached by the test */
      }
    }
  })
  const states: StopState[] = []
  for (const tid of tids) {
    ptrace.seize(tid)
    seized.push(tid)
    ptrace.interrupt(tid)
    states.push(ptrace.waitStop(tid, 2000))
  }
  return states
}

export const SYS = {
  read: 0,
  write: 1,
  close: 3,
  mmap: 9,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  pause: 34,
  nanosleep: 35,
  getpid: 39,
  getppid: 110,
  prctl: 157,
  gettid: 186,
} as const

export const PR_GET_TID_ADDRESS = 40

export function errCode(e: unknown): string | undefined {
  return (e as { code?: string }).code
}

/** Polls `pred` every 20 ms until true or `ms` passed. */
export async function until(pred: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`)
    await new Promise((r) => setTimeout(r, 20))
  }
}
