import { startWorkload } from '../../tools/workloads/index.ts'
import { ptrace, SyscallInjector, findSyscallGadget, processVmRead } from './ptrace.js'
import * as fs from 'node:fs'
const w = await startWorkload('sleeper', ['--sleep-ms', '200'])
try {
  await w.waitForLine(/^tick counter=2 /, 3000)
  ptrace.seize(w.pid)
  ptrace.interrupt(w.pid)
  console.log(ptrace.waitStop(w.pid, 1000))
  const r = ptrace.getRegs(w.pid)
  console.log('rip', r.rip.toString(16), 'rax', r.rax, 'orig', r.orig_rax, 'rsp', r.rsp.toString(16))
  console.log('xstate', ptrace.getXstate(w.pid).length, 'mask', ptrace.getSigmask(w.pid), ptrace.getRseqConfig(w.pid))
  const maps = fs.readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n')
  const libc = maps.find((l) => /r-xp .*libc/.test(l))!
  const [s, e] = libc.split(' ')[0]!.split('-').map((x) => parseInt(x, 16))
  const g = findSyscallGadget(w.pid, s!, e! - s!)!
  console.log('gadget', g.toString(16))
  const inj = new SyscallInjector(w.pid, g)
  console.log('getpid', inj.call(39), 'gettid', inj.call(186), 'brk', inj.call(12, [0]).toString(16))
  const t0 = process.hrtime.bigint()
  for (let i = 0; i < 1000; i++) inj.call(39)
  console.log('per call us', Number(process.hrtime.bigint() - t0) / 1000 / 1000)
  inj.restore()
  console.log('after restore', ptrace.getRegs(w.pid).rax, inj.count, inj.pendingSignals)
  ptrace.detach(w.pid)
  const before = w.logSize()
  await w.waitForLine(/^tick /, 3000, { since: before })
  await new Promise((r) => setTimeout(r, 700))
  console.log(w.readLog().split('\n').slice(-6).join('\n'))
} finally {
  w.kill()
}
