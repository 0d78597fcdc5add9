import test from 'ava'
import { closeSync, openSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { setTcpCongestion, tcpCongestion } from '../index.js'

async function listening(t: { teardown(f: () => unknown): void }): Promise<number> {
  const server: Server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  return (server as Server & { _handle: { fd: number } })._handle.fd
}

test('a TCP socket sends with the congestion control set on it', async (t) => {
  const fd = await listening(t)
  for (const name of ['reno', 'cubic']) {
    setTcpCongestion(fd, name)
    t.is(tcpCongestion(fd), name)
  }
})

test('congestion control errors name the call, the fd and the errno', async (t) => {
  const fd = await listening(t)
  t.throws(() => setTcpCongestion(fd, 'nosuchcc'), { message: new RegExp(`^setsockopt\\(TCP_CONGESTION\\) fd ${fd}: ENOENT .*: algorithm nosuchcc$`) })
  t.throws(() => setTcpCongestion(fd, 'x'.repeat(16)), { message: /EINVAL .*not an algorithm name/ })
  const file = openSync('/dev/null', 'r')
  t.teardown(() => closeSync(file))
  t.throws(() => tcpCongestion(file), { message: new RegExp(`^getsockopt\\(TCP_CONGESTION\\) fd ${file}: ENOTSOCK`) })
})
