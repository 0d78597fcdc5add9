import { startWorkload } from '../../tools/workloads/index.ts'
import { ptrace, SyscallInjector, findSyscallGadget } from './ptrace.js'
import { testing } from './index.js'
import { execFileSync } from 'node:child_process'
import * as fs from 'node:fs'
const w = await startWorkload('sleeper', ['--sleep-ms', '200'])
try {
  ptrace.seize(w.pid); ptrace.interrupt(w.pid); ptrace.waitStop(w.pid, 1000)
  const libc = fs.readFileSync(`/proc/${w.pid}/maps`, 'utf8').split('\n').find((l) => /r-xp .*libc/.test(l))!
  const [s, e] = libc.split(' ')[0]!.split('-').map((x) => parseInt(x, 16))
  const inj = new SyscallInjector(w.pid, findSyscallGadget(w.pid, s!, e! - s!)!)
  for (const [me, it] of [[0, 0], [0, 1], [1, 1], [1, 0], [-1, -1]]) {
    if (me >= 0) { testing.setAffinity([me]); execFileSync('taskset', ['-p', '-c', String(it), String(w.pid)]) }
    else { testing.setAffinity([0, 1]); execFileSync('taskset', ['-p', '-c', '0,1', String(w.pid)]) }
    for (let i = 0; i < 100; i++) inj.call(39)
    const lat: number[] = []
    for (let i = 0; i < 2000; i++) { const t0 = process.hrtime.bigint(); inj.call(39); lat.push(Number(process.hrtime.bigint() - t0) / 1000) }
    lat.sort((a, b) => a - b)
    console.log(`tracer cpu ${me} target cpu ${it}: median ${lat[1000]!.toFixed(1)} us p90 ${lat[1800]!.toFixed(1)} mean ${(lat.reduce((a, b) => a + b) / lat.length).toFixed(1)}`)
  }
  inj.restore(); ptrace.detach(w.pid)
} finally { w.kill() }
