/**
 * `lazymig check`: does this host have what a lazy migration needs? Each item says whether
 * it is required (a migration cannot work without it) or only used by some feature.
 */
import { probe, type KernelProbe, type ProbeCheck, type UffdFeature } from '@lazymig/uffd-rs';
import { readHostFacts, type HostFacts } from './facts.js';

export interface CheckItem {
  name: string;
  ok: boolean;
  /** false: only some feature needs it, and the item says which. */
  required: boolean;
  detail: string;
}

export interface HostCheck {
  ok: boolean;
  items: CheckItem[];
  probe: KernelProbe;
  facts: HostFacts;
}

/** userfaultfd features the lazy-pages daemon asks for in every restored process. */
export const REQUIRED_UFFD_FEATURES: readonly UffdFeature[] = ['eventFork', 'eventRemap', 'eventRemove', 'eventUnmap'];

function why(c: ProbeCheck): string {
  return c.ok ? 'works' : `${c.code ?? 'failed'}${c.message ? `: ${c.message}` : ''}`;
}

export function evaluateHost(p: KernelProbe, f: HostFacts): HostCheck {
  const items: CheckItem[] = [];
  const add = (name: string, ok: boolean, required: boolean, detail: string): void => {
    items.push({ name, ok, required, detail });
  };
  add('architecture', f.arch === 'x86_64', true, `${f.arch} (lazymig restores x86-64 register state)`);
  add('kernel', true, false, `${f.kernelRelease}, page size ${p.pageSize}`);
  add('root', f.uid === 0, true, f.uid === 0 ? 'running as root' : `uid ${f.uid}: dump and restore need root`);
  add('CAP_SYS_PTRACE', f.capabilities.CAP_SYS_PTRACE, true, 'freeze and rebuild processes with ptrace');
  add('CAP_SYS_ADMIN', f.capabilities.CAP_SYS_ADMIN, true, 'read /proc/PID/map_files, set the exe file, pidfd_getfd');
  add(
    'ptrace scope',
    f.ptraceScope === null || f.ptraceScope <= 2,
    true,
    f.ptraceScope === null ? 'no Yama: ptrace limited only by capabilities' : `kernel.yama.ptrace_scope = ${f.ptraceScope}${f.ptraceScope === 3 ? ' (ptrace disabled)' : ''}`,
  );
  add('userfaultfd', p.userfaultfd.api.ok, true, `syscall: ${why(p.userfaultfd.syscall)}; /dev/userfaultfd: ${why(p.userfaultfd.device)}`);
  const missing = REQUIRED_UFFD_FEATURES.filter((x) => !p.userfaultfd.features.includes(x));
  add(
    'userfaultfd events',
    missing.length === 0,
    true,
    missing.length === 0 ? REQUIRED_UFFD_FEATURES.join(', ') : `missing ${missing.join(', ')}`,
  );
  add('userfaultfd thread id', p.userfaultfd.features.includes('threadId'), false, 'each fault names the thread that took it');
  add(
    'userfaultfd write-protect',
    p.userfaultfd.features.includes('pagefaultFlagWp') && p.userfaultfd.wpAsync.ok,
    false,
    `not used yet (dirty-page tracking for pre-copy): WP_ASYNC ${why(p.userfaultfd.wpAsync)}`,
  );
  add('PAGEMAP_SCAN', p.pagemapScan.ok, false, `list written pages (Linux 6.7+): ${why(p.pagemapScan)}`);
  add('pidfd_open', p.pidfdOpen.ok, true, why(p.pidfdOpen));
  add('pidfd_getfd', p.pidfdGetfd.ok, true, `take the userfaultfd out of a restored process: ${why(p.pidfdGetfd)}`);
  add('process_vm_readv', p.processVmReadv.ok, true, `read pages of a frozen process: ${why(p.processVmReadv)}`);
  add('process_vm_writev', p.processVmWritev.ok, true, `fill pages of a restored process: ${why(p.processVmWritev)}`);
  add('CAP_NET_ADMIN', f.capabilities.CAP_NET_ADMIN, false, 'the demo creates network namespaces');
  add(
    'CAP_SYS_RESOURCE',
    f.capabilities.CAP_SYS_RESOURCE,
    false,
    f.capabilities.CAP_SYS_RESOURCE ? 'rlimits above the hard limit can be restored' : 'absent: hard rlimits cannot be raised on restore (PR_SET_MM_MAP does not need it)',
  );
  return { ok: items.every((i) => i.ok || !i.required), items, probe: p, facts: f };
}

export async function checkHost(): Promise<HostCheck> {
  return evaluateHost(probe(), await readHostFacts());
}
