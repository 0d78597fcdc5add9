import test from 'ava'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { getThreadAffinity, setThreadAffinity, testing } from '../index.js'

test('setThreadAffinity / getThreadAffinity act on the calling thread and round-trip', (t) => {
  const before = getThreadAffinity()
  t.true(before.length > 0)
  t.deepEqual([...before].sort((a, b) => a - b), before, 'ascending')
  t.teardown(() => setThreadAffinity(before))
  setThreadAffinity([before[0]!])
  t.deepEqual(getThreadAffinity(), [before[0]])
  t.deepEqual(testing.getAffinity(), [before[0]], 'the testing alias reads the same')
  setThreadAffinity(before)
  t.deepEqual(getThreadAffinity(), before)
})

test('setThreadAffinity rejects an empty set and out-of-range CPUs', (t) => {
  t.throws(() => setThreadAffinity([]), { instanceOf: RangeError })
  const e = t.throws(() => setThreadAffinity([1 << 20])) as Error & { code?: string; syscall?: string }
  t.is(e.code, 'EINVAL')
  t.is(e.syscall, 'sched_setaffinity')
})

test('setThreadAffinity with a tid pins that thread, read back from /proc; ESRCH names the tid', async (t) => {
  const cpus = getThreadAffinity()
  const child = spawn('sleep', ['30'], { stdio: 'ignore' })
  t.teardown(() => child.kill('SIGKILL'))
  await new Promise((resolve) => child.once('spawn', resolve))
  const allowed = (): string => /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))![1]!
  setThreadAffinity([cpus[cpus.length - 1]!], child.pid!)
  t.is(allowed(), String(cpus[cpus.length - 1]))
  t.deepEqual(getThreadAffinity(), cpus, 'ours is untouched')
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'))
  const e = t.throws(() => setThreadAffinity(cpus, pidMax - 1)) as Error & { code?: string }
  t.is(e.code, 'ESRCH')
  t.regex(e.message, new RegExp(`tid ${pidMax - 1}`))
})
