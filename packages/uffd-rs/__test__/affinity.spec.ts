import test from 'ava'
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
