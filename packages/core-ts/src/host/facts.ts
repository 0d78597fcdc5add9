/**
 * Facts about this host that files in /proc tell, as opposed to what only trying a syscall
 * tells (that part is uffd-rs's probe()).
 */
import { readFile, access } from 'node:fs/promises';
import { arch, release } from 'node:os';

/** Capability numbers from linux/capability.h that lazymig cares about. */
export const CAPABILITIES = {
  CAP_NET_ADMIN: 12,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_RESOURCE: 24,
  CAP_CHECKPOINT_RESTORE: 40,
} as const;
export type CapabilityName = keyof typeof CAPABILITIES;

export interface HostFacts {
  kernelRelease: string;
  arch: string;
  uid: number;
  /** Effective capabilities of this process. */
  capabilities: Record<CapabilityName, boolean>;
  /** kernel.yama.ptrace_scope, or null when Yama is not built in. */
  ptraceScope: number | null;
  /** vm.unprivileged_userfaultfd, or null when the sysctl does not exist. */
  unprivilegedUserfaultfd: number | null;
  devUserfaultfd: boolean;
  pipeMaxSize: number | null;
}

async function readNumber(path: string): Promise<number | null> {
  try {
    const n = Number.parseInt((await readFile(path, 'utf8')).trim(), 10);
    return Number.isFinite(n) ? n : null;
  } catch {
    return null;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

export function parseCapEff(status: string): bigint {
  const m = /^CapEff:\s*([0-9a-f]+)$/m.exec(status);
  if (!m) throw new Error('/proc/self/status: no CapEff line');
  return BigInt('0x' + m[1]);
}

export async function readHostFacts(): Promise<HostFacts> {
  const status = await readFile('/proc/self/status', 'utf8');
  const capEff = parseCapEff(status);
  const capabilities = Object.fromEntries(
    Object.entries(CAPABILITIES).map(([name, bit]) => [name, ((capEff >> BigInt(bit)) & 1n) === 1n]),
  ) as Record<CapabilityName, boolean>;
  return {
    kernelRelease: release(),
    arch: arch() === 'x64' ? 'x86_64' : arch(),
    uid: process.getuid?.() ?? -1,
    capabilities,
    ptraceScope: await readNumber('/proc/sys/kernel/yama/ptrace_scope'),
    unprivilegedUserfaultfd: await readNumber('/proc/sys/vm/unprivileged_userfaultfd'),
    devUserfaultfd: await exists('/dev/userfaultfd'),
    pipeMaxSize: await readNumber('/proc/sys/fs/pipe-max-size'),
  };
}
