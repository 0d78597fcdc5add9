import test from 'ava';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { promisify } from 'node:util';
import { createLogger } from '@lazymig/core-ts';
import { PAGE_SIZE } from '@lazymig/uffd-rs';
import { DEFAULT_CONGESTION, PageServer, type PageServerOptions } from '../src/index.js';

const run = promisify(execFile);
const SYSTEM = readFileSync('/proc/sys/net/ipv4/tcp_congestion_control', 'utf8').trim();
/** An algorithm every kernel has, and not the system's default, so a choice shows. */
const OTHER = SYSTEM === 'reno' ? 'cubic' : 'reno';
/** Words `ss -i` may print before the algorithm's name. */
const FLAG_WORDS = new Set(['ts', 'sack', 'ecn', 'ecnseen', 'fastopen', 'ecn_low']);

async function listen(t: { teardown(f: () => unknown): void }, extra: Partial<PageServerOptions>): Promise<PageServer> {
  const server = await PageServer.listen({ address: '127.0.0.1', port: 0, token: 'a'.repeat(64), pageSize: PAGE_SIZE, ...extra });
  t.teardown(() => server.close());
  return server;
}

/** The congestion control the server's side of a fresh connection sends with, as `ss` shows it. */
async function serverSideAlgorithm(t: { teardown(f: () => unknown): void }, port: number): Promise<string> {
  const sock: Socket = connect({ host: '127.0.0.1', port });
  t.teardown(() => sock.destroy());
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
  // Accepted once the client is connected; bounded wait for the kernel's view to list it.
  for (let i = 0; i < 50; i++) {
    const { stdout } = await run('ss', ['-tinH', 'state', 'established', `( sport = :${port} )`]);
    // The info line: a few flag words (ts, sack, ecn...), then the algorithm, then key:value pairs.
    const info = stdout.split('\n')[1]?.trim().split(/\s+/) ?? [];
    const algorithm = info.find((w) => !w.includes(':') && !FLAG_WORDS.has(w));
    if (algorithm) return algorithm;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`ss never listed the server side of port ${port}`);
}

test('the page server sends with the congestion control it is given, its default, or the system default', async (t) => {
  const chosen = await listen(t, { congestion: { algorithm: OTHER } });
  t.is(await serverSideAlgorithm(t, chosen.port), OTHER);
  const byDefault = await listen(t, {});
  t.is(await serverSideAlgorithm(t, byDefault.port), DEFAULT_CONGESTION);
  const system = await listen(t, { congestion: null });
  t.is(await serverSideAlgorithm(t, system.port), SYSTEM);
});

test('an algorithm the kernel lacks fails listen with its name and errno, and leaves the port free', async (t) => {
  const probe = await listen(t, { congestion: null });
  const port = probe.port;
  await probe.close();
  const err = await t.throwsAsync(listen(t, { port, congestion: { algorithm: 'nosuchcc' } }));
  t.regex(err!.message, /^page server: cannot send with congestion control nosuchcc: setsockopt\(TCP_CONGESTION\) fd \d+: ENOENT .*: algorithm nosuchcc \(not in net\.ipv4\.tcp_available_congestion_control/);
  // Nothing left listening: the same port can be taken again.
  const again = await listen(t, { port, congestion: null });
  t.is(again.port, port);
});

test('an algorithm asked for only if available is skipped with a warning', async (t) => {
  const lines: string[] = [];
  const log = createLogger('page-server', { level: 'warn', write: (l) => lines.push(l) });
  const server = await listen(t, { congestion: { algorithm: 'nosuchcc', ifAvailable: true }, log });
  t.is(await serverSideAlgorithm(t, server.port), SYSTEM);
  t.is(lines.length, 1);
  t.regex(lines[0]!, /level=warn .*what="sending with the system's congestion control" wanted=nosuchcc error=.*ENOENT/);
});
