/**
 * Two "hosts" on this one machine: network namespaces joined by a veth pair, playing source
 * and destination of a migration. Used by the integration tests and by `lazymig demo`.
 * With `link: 'loopback'` both "hosts" are one namespace and talk over its loopback (the
 * setting of CRIU's published lazy-migration figures; the bench offers both).
 *
 * Names carry the creating pid, so namespaces left behind by a process that died (a test
 * runner killed mid-run) are recognised and removed by the next create; nothing else is
 * ever touched.
 */
import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PREFIX = 'lazymig-';

export interface Host {
  /** Network namespace name, for `ip netns exec`. */
  ns: string;
  address: string;
}

export interface TwoHosts {
  src: Host;
  dst: Host;
  /** Starts a program inside a host's namespace. */
  spawnIn(host: Host, argv: string[], opts?: SpawnOptions): ChildProcess;
  /** Runs a program inside a host's namespace to completion, returning stdout. */
  execIn(host: Host, argv: string[]): Promise<string>;
  /** Which link joins them. */
  link: Link;
  /** Takes the link between the hosts down (true) or up again (false): a network partition (veth only). */
  partition(down: boolean): Promise<void>;
  /** Deletes both namespaces (and with them the veth pair). Idempotent. */
  destroy(): Promise<void>;
}

export type Link = 'veth' | 'loopback';

let counter = 0;

async function ip(...args: string[]): Promise<string> {
  try {
    return (await run('ip', args, { timeout: 10_000 })).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

async function tc(...args: string[]): Promise<void> {
  try {
    await run('tc', args, { timeout: 10_000 });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`tc ${args.join(' ')}: ${(e.stderr ?? e.message).trim()}`);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes namespaces this tool made for processes that no longer exist. */
export async function removeStaleHosts(): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir('/run/netns');
  } catch {
    return [];
  }
  const stale = names.filter((n) => {
    const m = new RegExp(`^${PREFIX}(\\d+)-\\d+-(src|dst|lo)$`).exec(n);
    return m !== null && !alive(Number(m[1]));
  });
  for (const n of stale) await ip('netns', 'del', n).catch(() => undefined);
  return stale;
}

export interface TwoHostsOptions {
  link?: Link;
  /** veth only: each end sends at most this many Mbit/s (a tbf qdisc), as a slower network would. */
  rateMbit?: number;
}

export async function createTwoHosts(opts: TwoHostsOptions = {}): Promise<TwoHosts> {
  await removeStaleHosts();
  const id = counter++;
  const tag = `${process.pid}-${id}`;
  if (opts.link === 'loopback') {
    if (opts.rateMbit !== undefined) throw new Error('a loopback topology has no link to limit (rateMbit)');
    return loopbackHosts(`${PREFIX}${tag}-lo`);
  }
  // Addresses of our own namespaces only: nothing outside them is routed there.
  const subnet = `10.${200 + (process.pid % 50)}.${id % 250}`;
  const src: Host = { ns: `${PREFIX}${tag}-src`, address: `${subnet}.1` };
  const dst: Host = { ns: `${PREFIX}${tag}-dst`, address: `${subnet}.2` };
  // IFNAMSIZ is 16: keep veth names short, and unique per creating process.
  const vethA = `lzm${(process.pid % 100000).toString(36)}${id}a`;
  const vethB = `lzm${(process.pid % 100000).toString(36)}${id}b`;

  const destroy = deleter([src.ns, dst.ns]);
  try {
    await ip('netns', 'add', src.ns);
    await ip('netns', 'add', dst.ns);
    await ip('link', 'add', vethA, 'netns', src.ns, 'type', 'veth', 'peer', 'name', vethB, 'netns', dst.ns);
    for (const [h, dev] of [[src, vethA], [dst, vethB]] as const) {
      await ip('-n', h.ns, 'addr', 'add', `${h.address}/24`, 'dev', dev);
      await ip('-n', h.ns, 'link', 'set', dev, 'up');
      await ip('-n', h.ns, 'link', 'set', 'lo', 'up');
      if (opts.rateMbit !== undefined) await tc('-n', h.ns, 'qdisc', 'add', 'dev', dev, 'root', 'tbf', 'rate', `${opts.rateMbit}mbit`, 'burst', '256kb', 'latency', '100ms');
    }
  } catch (err) {
    await destroy();
    throw err;
  }

  return {
    src,
    dst,
    link: 'veth',
    spawnIn,
    execIn,
    partition: async (down) => {
      await ip('-n', src.ns, 'link', 'set', vethA, down ? 'down' : 'up');
    },
    destroy,
  };
}

/** An idempotent destroy(): deletes these namespaces (what is in them goes with them). */
function deleter(namespaces: string[]): () => Promise<void> {
  let destroyed = false;
  return async () => {
    if (destroyed) return;
    destroyed = true;
    for (const ns of namespaces) await ip('netns', 'del', ns).catch(() => undefined);
  };
}

const spawnIn = (host: Host, argv: string[], opts: SpawnOptions = {}): ChildProcess => spawn('ip', ['netns', 'exec', host.ns, ...argv], opts);
const execIn = async (host: Host, argv: string[]): Promise<string> => (await run('ip', ['netns', 'exec', host.ns, ...argv], { timeout: 30_000 })).stdout;

/** Both hosts in one namespace of our own, over its loopback. */
async function loopbackHosts(ns: string): Promise<TwoHosts> {
  const destroy = deleter([ns]);
  try {
    await ip('netns', 'add', ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  } catch (err) {
    await destroy();
    throw err;
  }
  const host: Host = { ns, address: '127.0.0.1' };
  return {
    src: host,
    dst: host,
    link: 'loopback',
    spawnIn,
    execIn,
    partition: () => Promise.reject(new Error('a loopback topology has no link to take down')),
    destroy,
  };
}
