import test from 'ava'
import { PAGE_SIZE, Userfaultfd, probe } from '../index.js'

test('probe finds a usable userfaultfd and agrees with a real handshake', (t) => {
  const p = probe()
  t.is(p.pageSize, PAGE_SIZE)
  t.regex(p.kernel, /^\d+\.\d+/)
  t.true(p.userfaultfd.syscall.ok || p.userfaultfd.device.ok, 'userfaultfd must be available for this package to work')
  t.true(p.userfaultfd.api.ok)
  const u = Userfaultfd.open()
  t.teardown(() => u.close())
  const h = u.handshake([])
  t.deepEqual(p.userfaultfd.features, h.features)
  t.deepEqual(p.userfaultfd.ioctls, h.ioctls)
  t.true(p.userfaultfd.anonRangeIoctls.includes('copy'))
})

test('probe results are consistent with each other', (t) => {
  const p = probe()
  if (p.userfaultfd.wpAsync.ok) t.true(p.userfaultfd.features.includes('wpAsync'))
  else t.truthy(p.userfaultfd.wpAsync.code)
  // pidfd_getfd cannot work without pidfd_open.
  if (!p.pidfdOpen.ok) t.false(p.pidfdGetfd.ok)
  for (const c of [p.pagemapScan, p.pidfdOpen, p.pidfdGetfd, p.processVmReadv, p.processVmWritev]) {
    t.is(typeof c.ok, 'boolean')
    if (!c.ok) t.regex(c.code ?? '', /^E[A-Z0-9]+$/)
  }
})

test('on this kernel (6.7+) PAGEMAP_SCAN, pidfds and process_vm_* work', (t) => {
  const [major = 0, minor = 0] = probe().kernel.split('.').map(Number)
  if (major < 6 || (major === 6 && minor < 7)) {
    t.pass('older kernel: nothing to assert')
    return
  }
  const p = probe()
  t.true(p.pagemapScan.ok)
  t.true(p.userfaultfd.wpAsync.ok)
  t.true(p.pidfdOpen.ok)
  t.true(p.pidfdGetfd.ok)
  t.true(p.processVmReadv.ok)
  t.true(p.processVmWritev.ok)
})
