// ptrace and syscall injection against real workloads (tools/workloads): freeze, read the
// state a dump needs, ask the process questions by injected syscalls, let it go, and check
// it carries on exactly as before. Serial: some checks measure sleeps.
import test, { type ExecutionContext } from 'ava'
import { spawn, execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
import { startWorkload, type Workload } from '../../../tools/workloads/index.js'
import { getThreadAffinity, setThreadAffinity } from '../index.js'
import { ptrace, PTRACE_EVENT, SYSCALL_RUNNER_CODE, SyscallInjector, processVmRead, processVmWrite, type Regs, type PtraceSystemError } from '../ptrace.js'
import { PR_GET_TID_ADDRESS, SYS, errCode, freeze, gadgetOf, maps, statFields, statusField, vmaOf } from './ptrace-helpers.js'

async function workload(t: ExecutionContext, ...args: Parameters<typeof startWorkload>): Promise<Workload> {
  const w = await startWorkload(...args)
  t.teardown(() => w.kill())
  return w
}

const u64 = (x: bigint): bigint => BigInt.asUintN(64, x)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

test.serial('sleeper: freeze mid-sleep, read its state, inject questions, resume with the sleep intact', async (t) => {
  const SLEEP = 1000
  const w = await workload(t, 'sleeper', ['--sleep-ms', String(SLEEP)])
  await w.waitForLine(/^tick counter=1 /, 5000)
  await sleep(100) // well inside the second sleep
  const injectors: SyscallInjector[] = []
  const [st] = freeze(t, [w.pid], injectors)
  t.deepEqual(st, { kind: 'stopped', signal: 5, event: PTRACE_EVENT.STOP, groupStop: false })

  // Registers: frozen inside clock_nanosleep, which the freeze interrupted.
  const regs = ptrace.getRegs(w.pid)
  t.is(Object.keys(regs).length, 27)
  const text = vmaOf(w.pid, regs.rip)
  t.truthy(text, `rip ${regs.rip.toString(16)} is mapped`)
  t.true(text!.perms.includes('x'), 'rip is in an executable mapping')
  t.is(vmaOf(w.pid, regs.rsp)?.path, '[stack]')
  t.is(regs.orig_rax, 230n, 'orig_rax = clock_nanosleep')
  t.is(regs.rax, u64(-516n), 'rax = -ERESTART_RESTARTBLOCK')

  const xs = ptrace.getXstate(w.pid)
  t.true(xs.length >= 512 + 64, `xstate is ${xs.length} bytes`)
  t.true(xs.length % 64 === 0 || xs.length > 512, 'legacy area + header at least')
  t.is(ptrace.getSigmask(w.pid), BigInt('0x' + statusField(w.pid, 'SigBlk')))
  const rseq = ptrace.getRseqConfig(w.pid)
  t.truthy(rseq, 'glibc registered rseq')
  t.not(rseq!.ptr, 0n)
  t.is(rseq!.sig, 0x53053053)
  t.true(rseq!.len >= 32)

  // Injected syscalls.
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid))
  injectors.push(inj)
  t.is(inj.call(SYS.getpid), BigInt(w.pid))
  t.is(inj.call(SYS.gettid), BigInt(w.pid))
  const scratch = inj.call(SYS.mmap, [0, 4096, 3 /* RW */, 0x22 /* PRIVATE|ANON */, -1, 0])
  t.true(scratch > 0n && scratch % 4096n === 0n, `mmap gave ${scratch.toString(16)}`)
  const vma = vmaOf(w.pid, scratch)
  t.truthy(vma)
  t.true(vma!.perms.startsWith('rw'))

  // rt_sigaction(SIGUSR1, NULL, scratch, 8): the sleeper has no handler (SIG_DFL = 0).
  const junk = Buffer.alloc(32, 0xaa)
  processVmWrite(w.pid, new Float64Array([Number(scratch), 32]), junk)
  t.is(inj.call(SYS.rt_sigaction, [10, 0, scratch, 8]), 0n)
  const act = Buffer.alloc(32)
  t.is(processVmRead(w.pid, new Float64Array([Number(scratch), 32]), act), 32)
  t.is(act.readBigUInt64LE(0), 0n, 'handler SIG_DFL')
  t.is(act.readBigUInt64LE(24), 0n, 'empty sa_mask')
  // A bad signal number comes back as a negative errno, not an exception.
  t.is(inj.call(SYS.rt_sigaction, [0, 0, scratch, 8]), -22n)

  // prctl(PR_GET_TID_ADDRESS): glibc points clear_child_tid at the thread's tid in its TCB.
  t.is(inj.call(SYS.prctl, [PR_GET_TID_ADDRESS, scratch, 0, 0, 0]), 0n)
  const tidAddr = Buffer.alloc(8)
  processVmRead(w.pid, new Float64Array([Number(scratch), 8]), tidAddr)
  const clearTid = tidAddr.readBigUInt64LE(0)
  t.not(clearTid, 0n)
  const tidWord = Buffer.alloc(4)
  processVmRead(w.pid, new Float64Array([Number(clearTid), 4]), tidWord)
  t.is(tidWord.readInt32LE(0), w.pid, 'clear_child_tid points at the tid')

  // brk(0) against start_brk (field 47 of /proc/PID/stat).
  const brk = inj.call(SYS.brk, [0])
  const startBrk = BigInt(statFields(w.pid)[47]!)
  t.true(brk >= startBrk && brk - startBrk < 1n << 30n, `brk ${brk.toString(16)} vs start_brk ${startBrk.toString(16)}`)
  const heap = maps(w.pid).find((v) => v.path === '[heap]')
  if (heap) t.is(BigInt(heap.end), brk)

  t.is(inj.call(SYS.munmap, [scratch, 4096]), 0n)
  t.is(vmaOf(w.pid, scratch), undefined)
  t.is(inj.count, 8)
  t.deepEqual(inj.pendingSignals, [])

  inj.restore()
  t.deepEqual(ptrace.getRegs(w.pid), regs, 'registers back as frozen')
  const since = w.logSize()
  ptrace.detach(w.pid)

  // The interrupted sleep finishes at its original deadline; then it goes on ticking.
  const first = await w.waitForLine(/^(tick counter=(\d+) slept_ms=([\d.]+)|sleep FAILED.*)$/, 5000, { since })
  t.truthy(first[2], `no failure: ${first[0]}`)
  t.is(Number(first[2]), 2)
  const slept = Number(first[3])
  t.true(slept >= SLEEP - 2 && slept < SLEEP + 300, `frozen sleep lasted ${slept} ms`)
  await w.waitForLine(/^tick counter=4 /, 5000, { since })
  t.notRegex(w.readLog(), /FAILED/)
  for (const m of w.readLog().matchAll(/^tick counter=(\d+) slept_ms=([\d.]+)$/gm)) {
    t.true(Math.abs(Number(m[2]) - SLEEP) < 300, `tick ${m[1]} slept ${m[2]} ms`)
  }
})

test.serial('threads: every thread frozen, per-thread injection, counters keep going after detach', async (t) => {
  const w = await workload(t, 'threads', ['3', '--interval-ms', '50'])
  const workers = w.ready[0].match(/tids=([\d,]+)/)![1]!.split(',').map(Number)
  t.is(workers.length, 3)
  const before = await w.waitForLine(/^tick counter=\d+ counts=([\d,]+)$/, 5000, { since: w.logSize() })
  const injectors: SyscallInjector[] = []
  const states = freeze(t, [w.pid, ...workers], injectors)
  for (const s of states) t.is(s.kind, 'stopped')

  const stack = maps(w.pid).find((v) => v.path === '[stack]')!
  const gadget = gadgetOf(w.pid)
  for (const tid of [w.pid, ...workers]) {
    const r: Regs = ptrace.getRegs(tid)
    const v = vmaOf(w.pid, r.rsp)
    t.truthy(v, `tid ${tid}: rsp mapped`)
    t.true(v!.perms.startsWith('rw'), `tid ${tid}: rsp in a writable mapping`)
    if (tid === w.pid) t.is(v!.start, stack.start)
    else t.not(v!.start, stack.start, `tid ${tid}: rsp on its own thread stack`)
    t.true(vmaOf(w.pid, r.rip)!.perms.includes('x'))
    t.is(ptrace.getRseqConfig(tid)?.sig, 0x53053053)
    const inj = new SyscallInjector(tid, gadget)
    injectors.push(inj)
    t.is(inj.call(SYS.gettid), BigInt(tid))
    t.is(inj.call(SYS.getpid), BigInt(w.pid))
  }
  for (const inj of injectors.splice(0)) inj.restore()
  const since = w.logSize()
  for (const tid of [w.pid, ...workers]) ptrace.detach(tid)

  const old = before[1]!.split(',').map(Number)
  const later = await w.waitForLine(/^tick counter=\d+ counts=([\d,]+)$/, 5000, { since })
  await w.waitForLine(/^tick /, 5000, { since: w.logSize() })
  const last = w.lastMatch(/^tick counter=\d+ counts=([\d,]+)$/)!
  const now = last[1]!.split(',').map(Number)
  t.truthy(later)
  now.forEach((c, i) => t.true(c > old[i]!, `thread ${i}: ${old[i]} -> ${c}`))
  t.notRegex(w.readLog(), /FAILED/)
})

test.serial('a signal during an injected syscall is remembered and the syscall re-run', async (t) => {
  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  const injectors: SyscallInjector[] = []
  freeze(t, [w.pid], injectors)
  const frozen = ptrace.getRegs(w.pid)
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid))
  injectors.push(inj)
  const scratch = inj.call(SYS.mmap, [0, 4096, 3, 0x22, -1, 0])
  const ts = Buffer.alloc(16)
  ts.writeBigInt64LE(0n, 0)
  ts.writeBigInt64LE(300_000_000n, 8) // 300 ms
  processVmWrite(w.pid, new Float64Array([Number(scratch), 16]), ts)
  // SIGWINCH arrives 100 ms into the injected nanosleep (sent by another process: this
  // thread is busy waiting for the syscall).
  const killer = spawn('/bin/sh', ['-c', `sleep 0.1; kill -s WINCH ${w.pid}`], { stdio: 'ignore' })
  const killed = new Promise((r) => killer.once('exit', r))
  const t0 = performance.now()
  t.is(inj.call(SYS.nanosleep, [scratch, 0]), 0n)
  const ms = performance.now() - t0
  await killed
  t.deepEqual(inj.pendingSignals, [28])
  t.true(ms >= 300, `nanosleep took ${ms.toFixed(0)} ms`)
  t.is(inj.call(SYS.munmap, [scratch, 4096]), 0n)
  inj.restore()
  if (frozen.orig_rax === 230n && frozen.rax === u64(-516n)) {
    // Our nanosleep replaced the restart block: the frozen clock_nanosleep is re-run instead.
    const now = ptrace.getRegs(w.pid)
    t.is(now.rip, frozen.rip - 2n)
    t.is(now.rax, 230n)
  }
  ptrace.detach(w.pid) // SIGWINCH is ignored by default: not re-delivered here
  const since = w.logSize()
  await w.waitForLine(/^tick /, 5000, { since })
  t.notRegex(w.readLog(), /FAILED/)
})

test.serial('an injected syscall that blocks times out, is interrupted, and the injector stays usable', async (t) => {
  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  const injectors: SyscallInjector[] = []
  freeze(t, [w.pid], injectors)
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid), { timeoutMs: 200 })
  injectors.push(inj)
  const t0 = performance.now()
  const err = t.throws(() => inj.call(SYS.pause)) as PtraceSystemError
  const ms = performance.now() - t0
  t.is(err.code, 'ETIMEDOUT')
  t.is(err.tid, w.pid)
  t.regex(err.message, new RegExp(`tid ${w.pid}.*syscall 34`))
  t.true(ms >= 200 && ms < 1500, `gave up after ${ms.toFixed(0)} ms`)
  t.is(inj.call(SYS.getpid), BigInt(w.pid))
  t.is(inj.count, 1)
  inj.restore()
  const since = w.logSize()
  ptrace.detach(w.pid)
  await w.waitForLine(/^tick /, 5000, { since })
  t.notRegex(w.readLog(), /FAILED/)
})

/** runList entries from rows [nr, a1..a6, goOn] (missing words are 0). */
function entries(rows: number[][]): BigUint64Array {
  const out = new BigUint64Array(rows.length * 8)
  rows.forEach((r, i) => r.forEach((w, j) => (out[i * 8 + j] = BigInt(w))))
  return out
}

test.serial('a list of syscalls runs in one trip, stops at the first failure unless that call may fail, and never runs foreign code', async (t) => {
  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  const injectors: SyscallInjector[] = []
  freeze(t, [w.pid], injectors)
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid))
  injectors.push(inj)
  const area = Number(inj.call(SYS.mmap, [0, 8192, 7, 0x22, -1, 0]))
  const list = area + 4096
  const pid = BigInt(w.pid)
  const ppid = BigInt(statFields(w.pid)[4]!)
  const notRunner = t.throws(() => inj.runList(area, list, entries([[SYS.getpid]]))) as PtraceSystemError
  t.is(notRunner.code, 'EINVAL')
  t.regex(notRunner.message, /no syscall runner/)
  processVmWrite(w.pid, new Float64Array([area, SYSCALL_RUNNER_CODE.length]), SYSCALL_RUNNER_CODE)
  const before = inj.count
  t.deepEqual([...inj.runList(area, list, entries([[SYS.getpid], [SYS.getppid]]))], [pid, ppid])
  // munmap of an unaligned address fails with EINVAL: the list stops there...
  t.deepEqual([...inj.runList(area, list, entries([[SYS.getpid], [SYS.munmap, 1, 4096], [SYS.getpid]]))], [pid, -22n])
  // ...unless that call was allowed to fail.
  t.deepEqual([...inj.runList(area, list, entries([[SYS.munmap, 1, 4096, 0, 0, 0, 0, 1], [SYS.getppid]]))], [-22n, ppid])
  t.is(inj.count, before + 6)
  t.is(inj.call(SYS.munmap, [area, 8192]), 0n)
  inj.restore()
  const since = w.logSize()
  ptrace.detach(w.pid)
  await w.waitForLine(/^tick /, 5000, { since })
  t.notRegex(w.readLog(), /FAILED/)
})

test.serial('errors are named: ESRCH, ECHILD, EPERM, ETIMEDOUT, threads not stopped, bad gadget, bad input', async (t) => {
  const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'))
  let ghost = pidMax - 1
  while (fs.existsSync(`/proc/${ghost}`)) ghost--
  const e1 = t.throws(() => ptrace.seize(ghost)) as PtraceSystemError
  t.is(e1.code, 'ESRCH')
  t.is(e1.syscall, 'PTRACE_SEIZE')
  t.is(e1.tid, ghost)
  t.is(e1.message, `PTRACE_SEIZE tid ${ghost}: ESRCH (No such process)`)

  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  const e2 = t.throws(() => ptrace.waitStop(w.pid, 100)) as PtraceSystemError
  t.is(e2.code, 'ECHILD')
  t.regex(e2.message, new RegExp(`^waitpid tid ${w.pid}: ECHILD`))
  t.is(errCode(t.throws(() => ptrace.getRegs(w.pid))), 'ESRCH', 'not traced')

  ptrace.seize(w.pid)
  t.teardown(() => {
    try {
      ptrace.detach(w.pid)
    } catch {
      /* detached by the test */
    }
  })
  t.is(errCode(t.throws(() => ptrace.seize(w.pid))), 'EPERM', 'seized twice')
  // Seized but running: a bounded wait that does not burn the CPU.
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  const e3 = t.throws(() => ptrace.waitStop(w.pid, 300)) as PtraceSystemError
  const wall = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const cpuMs = (cpu.user + cpu.system) / 1000
  t.is(e3.code, 'ETIMEDOUT')
  t.regex(e3.message, new RegExp(`tid ${w.pid}`))
  t.true(wall >= 300 && wall < 400, `waited ${wall.toFixed(1)} ms`)
  t.true(cpuMs < wall * 0.5, `used ${cpuMs.toFixed(1)} ms of CPU in ${wall.toFixed(1)} ms`)
  t.log(`waitStop timeout: ${wall.toFixed(1)} ms wall, ${cpuMs.toFixed(1)} ms CPU`)

  const gadget = gadgetOf(w.pid)
  const e4 = t.throws(() => new SyscallInjector(w.pid, gadget)) as PtraceSystemError
  t.is(e4.code, 'ESRCH')
  t.regex(e4.message, /not a ptrace-stopped tracee/)

  ptrace.interrupt(w.pid)
  t.is(ptrace.waitStop(w.pid, 2000).kind, 'stopped')
  const e5 = t.throws(() => new SyscallInjector(w.pid, gadget + 1)) as PtraceSystemError
  t.is(e5.code, 'EINVAL')
  t.is(e5.address, gadget + 1)
  const inj = new SyscallInjector(w.pid, gadget)
  t.throws(() => inj.call(SYS.getpid, [1, 2, 3, 4, 5, 6, 7]), { instanceOf: RangeError })
  t.throws(() => inj.call(SYS.getpid, ['x' as unknown as number]), { instanceOf: TypeError })
  t.throws(() => ptrace.seize(-1), { instanceOf: RangeError })
  t.throws(() => ptrace.setRegs(w.pid, { rip: 1n } as unknown as Regs), { instanceOf: TypeError })
  t.is(inj.call(SYS.getpid), BigInt(w.pid))
  inj.restore()
  ptrace.detach(w.pid)
  // The injector outlived its stop: a clear error, no crash, no stray syscall.
  const e6 = t.throws(() => inj.call(SYS.getpid)) as PtraceSystemError
  t.is(e6.code, 'ESRCH')
  t.regex(e6.message, /no longer a stopped tracee/)
  t.is(errCode(t.throws(() => ptrace.detach(w.pid))), 'ESRCH')
  const since = w.logSize()
  await w.waitForLine(/^tick /, 5000, { since })
})

test.serial('setRegs / setXstate / setSigmask round trip', async (t) => {
  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  freeze(t, [w.pid])
  const regs = ptrace.getRegs(w.pid)
  const changed = { ...regs, r12: 0x1234_5678_9abc_def0n }
  ptrace.setRegs(w.pid, changed)
  t.is(ptrace.getRegs(w.pid).r12, 0x1234_5678_9abc_def0n)
  ptrace.setRegs(w.pid, regs)
  t.deepEqual(ptrace.getRegs(w.pid), regs)
  const xs = ptrace.getXstate(w.pid)
  ptrace.setXstate(w.pid, xs)
  t.deepEqual(ptrace.getXstate(w.pid), xs)
  const mask = ptrace.getSigmask(w.pid)
  ptrace.setSigmask(w.pid, mask | (1n << 9n)) // block SIGUSR1 (signal n is bit n-1)
  t.is(ptrace.getSigmask(w.pid), mask | (1n << 9n))
  t.is(BigInt('0x' + statusField(w.pid, 'SigBlk')), mask | (1n << 9n))
  ptrace.setSigmask(w.pid, mask)
  t.is(ptrace.getSigmask(w.pid), mask)
})

test.serial('measure: cost of one injected syscall, tracer and target on the same CPU or not', async (t) => {
  const cpus = getThreadAffinity()
  if (cpus.length < 2) return t.pass('needs 2 CPUs')
  const w = await workload(t, 'sleeper', ['--sleep-ms', '1000'])
  const injectors: SyscallInjector[] = []
  freeze(t, [w.pid], injectors)
  t.teardown(() => setThreadAffinity(cpus))
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid))
  injectors.push(inj)
  const pin = (me: number, it: number) => {
    setThreadAffinity([me])
    execFileSync('taskset', ['-p', '-c', String(it), String(w.pid)], { stdio: 'ignore' })
  }
  const results: Record<string, number> = {}
  for (const [name, me, it] of [['same CPU', cpus[0]!, cpus[0]!], ['cross CPU', cpus[0]!, cpus[1]!]] as const) {
    pin(me, it)
    for (let i = 0; i < 200; i++) inj.call(SYS.getpid)
    const lat: number[] = []
    for (let i = 0; i < 2000; i++) {
      const t0 = process.hrtime.bigint()
      inj.call(SYS.getpid)
      lat.push(Number(process.hrtime.bigint() - t0) / 1000)
    }
    lat.sort((a, b) => a - b)
    results[name] = lat[1000]!
    t.log(`injected getpid, ${name}: median ${lat[1000]!.toFixed(1)} us, p10 ${lat[200]!.toFixed(1)}, p90 ${lat[1800]!.toFixed(1)}`)
  }
  execFileSync('taskset', ['-p', '-c', cpus.join(','), String(w.pid)], { stdio: 'ignore' })
  t.true(Object.values(results).every((x) => x > 0))
})
