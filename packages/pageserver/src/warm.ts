/**
 * One page through a throwaway server and client of our own, on loopback: every step of
 * the transport (connect, upgrade, hello, request, reply) runs once before it counts. An
 * armed lazy-pages daemon does this while it waits for the images, so its first real
 * connection and fault are not also the first run of that code.
 */
import { randomBytes } from 'node:crypto';
import { PageClient } from './client.js';
import { LazyRanges } from './protocol/lazy-ranges.js';
import { PageServer } from './server.js';

export async function warmPageTransport(pageSize: number): Promise<void> {
  const pid = 1;
  const start = 16 * pageSize;
  const token = randomBytes(32).toString('hex');
  const server = await PageServer.listen({
    address: '127.0.0.1',
    port: 0,
    token,
    pageSize,
    content: {
      ranges: new LazyRanges([{ pid, start, pages: 1 }], pageSize),
      reader: { readInto: (_pid, _address, out) => void out.fill(0) },
      onComplete: () => undefined,
    },
  });
  try {
    const client = await PageClient.connect({ address: '127.0.0.1', port: server.port, token, retryForMs: 0 });
    try {
      const page = await client.fetch(pid, start, 1, 'fault');
      client.release(page);
    } finally {
      await client.close();
    }
  } finally {
    await server.close();
  }
}
