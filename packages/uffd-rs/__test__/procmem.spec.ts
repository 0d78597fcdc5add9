// process_vm_readv/writev against real workloads, and pidfd_getfd.
import test, { type ExecutionContext } from 'ava'
import * as fs from 'node:fs'
import * as path from 'node:path'
import { startWorkload, type Workload } from '../../../tools/workloads/index.js'
import { SyscallInjector, closeFd, findSyscallGadget, pidfdGetfd, pidfdOpen, processVmRead, processVmWrite, type PtraceSystemError } from '../ptrace.js'
import { SYS, freeze, gadgetOf, maps } from './ptrace-helpers.js'

async function workload(t: ExecutionContext, ...args: Parameters<typeof startWorkload>): Promise<Workload> {
  const w = await startWorkload(...args)
  t.teardown(() => w.kill())
  return w
}

const M64 = (1n << 64n) - 1n
/** memhog's pattern() (tools/workloads/src/common.h). */
function pattern(seed: bigint, page: bigint, word: bigint, gen: bigint): bigint {
  let x = ((seed * 0x9e3779b97f4a7c15n) & M64) ^ ((page << 21n) & M64) ^ ((word << 1n) & M64) ^ ((gen << 45n) & M64) ^ 1n
  x ^= x >> 31n
  x = (x * 0xbf58476d1ce4e5b9n) & M64
  x ^= x >> 27n
  return x
}

function memhogRegion(w: Workload): { region: number; size: number; seed: bigint } {
  const m = /region=0x([0-9a-f]+) size=(\d+) .*seed=(\d+)/.exec(w.ready[0])!
  return { region: parseInt(m[1]!, 16), size: Number(m[2]), seed: BigInt(m[3]!) }
}

test('processVmRead of memhog memory equals its pattern (one range, and page by page)', async (t) => {
  const w = await workload(t, 'memhog', ['8', '--seed', '7', '--rewrite-pages', '0', '--interval-ms', '20'])
  const { region, size, seed } = memhogRegion(w)
  t.is(size, 8 << 20)
  const whole = Buffer.alloc(size)
  t.is(processVmRead(w.pid, new Float64Array([region, size]), whole), size)
  const pages = size / 4096
  for (let p = 0; p < pages; p++) {
    for (const word of [0, 1, 255, 511]) {
      t.is(whole.readBigUInt64LE(p * 4096 + word * 8), pattern(seed, BigInt(p), BigInt(word), 0n), `page ${p} word ${word}`)
    }
  }
  // Every word of a few pages.
  for (const p of [0, 1, pages - 1]) {
    let bad = -1
    for (let word = 0; word < 512; word++) {
      if (whole.readBigUInt64LE(p * 4096 + word * 8) !== pattern(seed, BigInt(p), BigInt(word), 0n)) bad = word
    }
    t.is(bad, -1, `page ${p}`)
  }
  // Page-sized ranges, in reverse order, more than IOV_MAX of them: same bytes, reordered.
  const ranges = new Float64Array(pages * 2)
  for (let i = 0; i < pages; i++) {
    ranges[2 * i] = region + (pages - 1 - i) * 4096
    ranges[2 * i + 1] = 4096
  }
  t.true(pages > 1024)
  const rev = Buffer.alloc(size)
  t.is(processVmRead(w.pid, ranges, rev), size)
  for (let i = 0; i < pages; i++) {
    if (!rev.subarray(i * 4096, (i + 1) * 4096).equals(whole.subarray((pages - 1 - i) * 4096, (pages - i) * 4096))) {
      t.fail(`range ${i} differs`)
      break
    }
  }
  // BigUint64Array ranges work too.
  const b = Buffer.alloc(16)
  processVmRead(w.pid, new BigUint64Array([BigInt(region), 16n]), b)
  t.true(b.equals(whole.subarray(0, 16)))
  t.notRegex(w.readLog(), /FAILED/)
})

test('processVmWrite round trip into a scratch mapping made by injection', async (t) => {
  const w = await workload(t, 'sleeper', ['--sleep-ms', '50'])
  const injectors: SyscallInjector[] = []
  freeze(t, [w.pid], injectors)
  const inj = new SyscallInjector(w.pid, gadgetOf(w.pid))
  injectors.push(inj)
  const len = 64 * 4096
  const scratch = Number(inj.call(SYS.mmap, [0, len, 3, 0x22, -1, 0]))
  let mapped = true
  t.teardown(() => {
    if (mapped) inj.call(SYS.munmap, [scratch, len])
  })
  const data = Buffer.alloc(len)
  for (let i = 0; i < len; i++) data[i] = (i * 7 + (i >> 12)) & 0xff
  // Scattered: odd pages first, then even pages, from one contiguous buffer.
  const ranges: number[] = []
  for (const parity of [1, 0]) for (let p = parity; p < 64; p += 2) ranges.push(scratch + p * 4096, 4096)
  t.is(processVmWrite(w.pid, new Float64Array(ranges), data), len)
  const back = Buffer.alloc(len)
  t.is(processVmRead(w.pid, new Float64Array(ranges), back), len)
  t.true(back.equals(data))
  // Read linearly: the first chunk of `data` went to page 1 (the first odd page).
  const linear = Buffer.alloc(4096)
  processVmRead(w.pid, new Float64Array([scratch + 4096, 4096]), linear)
  t.true(linear.equals(data.subarray(0, 4096)), 'page 1 got the first chunk')
  t.is(inj.call(SYS.munmap, [scratch, len]), 0n)
  mapped = false
})

test('EFAULT names the address; ESRCH names the pid; bad arguments are RangeError/TypeError', async (t) => {
  const w = await workload(t, 'memhog', ['1', '--rewrite-pages', '0'])
  const { region, size } = memhogRegion(w)
  const buf = Buffer.alloc(8192)
  // The guard page before the region is PROT_NONE.
  const e1 = t.throws(() => processVmRead(w.pid, new Float64Array([region - 4096, 4096]), buf)) as PtraceSystemError
  t.is(e1.code, 'EFAULT')
  t.is(e1.syscall, 'process_vm_readv')
  t.is(e1.address, region - 4096)
  t.is(e1.pid, w.pid)
  t.regex(e1.message, new RegExp(`^process_vm_readv pid ${w.pid} at 0x${(region - 4096).toString(16)}: EFAULT`))
  // Straddling the end: the short read fails at the first byte not read.
  const e2 = t.throws(() => processVmRead(w.pid, new Float64Array([region + size - 4096, 8192]), buf)) as PtraceSystemError
  t.is(e2.code, 'EFAULT')
  t.is(e2.address, region + size)
  const e3 = t.throws(() => processVmWrite(w.pid, new Float64Array([0x1000, 8]), buf)) as PtraceSystemError
  t.is(e3.code, 'EFAULT')
  t.is(e3.syscall, 'process_vm_writev')
  const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'))
  let ghost = pidMax - 1
  while (fs.existsSync(`/proc/${ghost}`)) ghost--
  const e4 = t.throws(() => processVmRead(ghost, new Float64Array([region, 8]), buf)) as PtraceSystemError
  t.is(e4.code, 'ESRCH')
  t.is(e4.message, `process_vm_readv pid ${ghost}: ESRCH (No such process)`)
  t.throws(() => processVmRead(w.pid, new Float64Array([region, 16384]), buf), { instanceOf: RangeError })
  t.throws(() => processVmRead(w.pid, new Float64Array([region]), buf), { instanceOf: RangeError })
  t.throws(() => processVmRead(w.pid, new Float64Array([region + 0.5, 8]), buf), { instanceOf: RangeError })
  t.throws(() => processVmRead(w.pid, [region, 8] as unknown as Float64Array, buf), { instanceOf: TypeError })
  t.is(processVmRead(w.pid, new Float64Array([]), buf), 0)
})

test('findSyscallGadget finds 0f 05 in libc and in the vdso; null where there is none', async (t) => {
  const w = await workload(t, 'memhog', ['1', '--rewrite-pages', '0'])
  const g = gadgetOf(w.pid)
  const two = Buffer.alloc(2)
  processVmRead(w.pid, new Float64Array([g, 2]), two)
  t.deepEqual([...two], [0x0f, 0x05])
  const vdso = maps(w.pid).find((v) => v.path === '[vdso]')!
  const vg = findSyscallGadget(w.pid, vdso.start, vdso.end - vdso.start)
  t.true(vg === null || (vg >= vdso.start && vg < vdso.end))
  // memhog's region holds its pattern; a zero region holds no 0f 05.
  const zero = /zero=0x([0-9a-f]+) zero_size=(\d+)/.exec(w.ready[0])!
  t.is(findSyscallGadget(w.pid, parseInt(zero[1]!, 16), Number(zero[2])), null)
})

test('pidfdGetfd copies the appender fds: same file, own offset semantics', async (t) => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync(process.env['TMPDIR'] ?? '/tmp'), 'lazymig-pidfd-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'out.txt')
  const w = await workload(t, 'appender', [file, '--interval-ms', '20'])
  const m = /append_fd=(\d+) ro_fd=(\d+) ro_pos=1 ro_path=(\S+)/.exec(w.ready[0])!
  const [appendFd, roFd, roPath] = [Number(m[1]), Number(m[2]), m[3]!]
  const pidfd = pidfdOpen(w.pid)
  t.teardown(() => closeFd(pidfd))
  const mine = pidfdGetfd(pidfd, appendFd)
  t.teardown(() => closeFd(mine))
  const a = fs.fstatSync(mine)
  const b = fs.statSync(file)
  t.is(a.ino, b.ino)
  t.is(a.dev, b.dev)
  const ro = pidfdGetfd(pidfd, roFd)
  t.teardown(() => closeFd(ro))
  t.is(fs.fstatSync(ro).ino, fs.statSync(roPath).ino)
  // Same open file description: the read-only fd is at offset 1, as the appender left it.
  const c = Buffer.alloc(1)
  const whole = fs.readFileSync(roPath)
  if (whole.length > 1) {
    t.is(fs.readSync(ro, c, 0, 1, null), 1)
    t.is(c[0], whole[1])
  }
  const e1 = t.throws(() => pidfdGetfd(pidfd, 999)) as PtraceSystemError
  t.is(e1.code, 'EBADF')
  t.is(e1.syscall, 'pidfd_getfd')
  t.regex(e1.message, /target fd 999/)
  const e2 = t.throws(() => pidfdOpen(0x3fffffff)) as PtraceSystemError
  t.true(e2.code === 'ESRCH' || e2.code === 'EINVAL')
  t.is(e2.pid, 0x3fffffff)
  const e3 = t.throws(() => closeFd(0x7ffffff0)) as PtraceSystemError
  t.is(e3.code, 'EBADF')
  t.notRegex(w.readLog(), /FAILED/)
})

test('measure: processVmRead throughput over 64 MiB', async (t) => {
  const w = await workload(t, 'memhog', ['64', '--rewrite-pages', '0', '--interval-ms', '1000'])
  const { region, size, seed } = memhogRegion(w)
  const buf = Buffer.alloc(size)
  const results: string[] = []
  const run = (name: string, ranges: Float64Array) => {
    processVmRead(w.pid, ranges, buf) // warm
    let best = Infinity
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now()
      t.is(processVmRead(w.pid, ranges, buf), size)
      best = Math.min(best, performance.now() - t0)
    }
    results.push(`${name}: ${best.toFixed(1)} ms = ${((size / (1 << 20)) / (best / 1000)).toFixed(0)} MiB/s`)
  }
  run('one 64 MiB iovec', new Float64Array([region, size]))
  const pages = new Float64Array((size / 4096) * 2)
  for (let i = 0; i < size / 4096; i++) {
    pages[2 * i] = region + i * 4096
    pages[2 * i + 1] = 4096
  }
  run('16384 page iovecs (16 calls)', pages)
  // Reference: pread on /proc/PID/mem in 1 MiB chunks.
  const fd = fs.openSync(`/proc/${w.pid}/mem`, 'r')
  t.teardown(() => fs.closeSync(fd))
  let best = Infinity
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now()
    for (let off = 0; off < size; off += 1 << 20) fs.readSync(fd, buf, off, 1 << 20, region + off)
    best = Math.min(best, performance.now() - t0)
  }
  results.push(`/proc/PID/mem pread, 1 MiB chunks: ${best.toFixed(1)} ms = ${(64 / (best / 1000)).toFixed(0)} MiB/s`)
  for (const r of results) t.log(r)
  t.is(buf.readBigUInt64LE(size - 8), pattern(seed, BigInt(size / 4096 - 1), 511n, 0n))
})
