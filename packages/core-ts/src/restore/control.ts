/**
 * The control area: a few pages placed in a hole of both the stub's and the dumped layouts
 * (the same address in every process of the tree, since children are forked with it). It
 * holds the `syscall` gadget every injection goes through, a parking loop for forked
 * children and cloned threads, a stack for those, and scratch memory for pointer arguments.
 *
 *   +0   0f 05                 syscall          <- the gadget (the injector stops after it)
 *   +2   b8 22 00 00 00        mov eax, 34      <- new children and threads start here
 *   +7   0f 05                 syscall (pause)
 *   +9   eb f7                 jmp +2
 *   +16  SYSCALL_RUNNER_CODE       runs a list of syscalls in one trip (CallList)
 */
import { SYSCALL_RUNNER_CODE, processVmWrite } from '@lazymig/uffd-rs';
import { MAP, PROT, type Remote } from './remote.js';

export const CONTROL_PAGES = 8;
const PAGE = 4096;
export const CONTROL_SIZE = CONTROL_PAGES * PAGE;
const RUNNER_OFFSET = 16;
export const CONTROL_CODE = Buffer.alloc(RUNNER_OFFSET + SYSCALL_RUNNER_CODE.length, 0xcc);
CONTROL_CODE.set([0x0f, 0x05, 0xb8, 0x22, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xeb, 0xf7]);
CONTROL_CODE.set(SYSCALL_RUNNER_CODE, RUNNER_OFFSET);

export interface ControlArea {
  addr: number;
  size: number;
  /** a `syscall` instruction */
  gadget: number;
  /** the syscall runner (SyscallInjector.runList) */
  runner: number;
  /** top of the stack cloned threads park on (they only ever run the pause loop) */
  stackTop: number;
  /** its lowest address (clone3 takes base and size) */
  stackBase: number;
  /** scratch memory for syscall arguments */
  scratch: number;
  scratchSize: number;
}

export function controlArea(addr: number): ControlArea {
  return {
    addr,
    size: CONTROL_SIZE,
    gadget: addr,
    runner: addr + RUNNER_OFFSET,
    stackTop: addr + 3 * PAGE - 64,
    stackBase: addr + PAGE,
    scratch: addr + 3 * PAGE,
    scratchSize: CONTROL_SIZE - 3 * PAGE,
  };
}

/** Maps the control area in the stub (through the stub's own gadget) and writes its code. */
export function mapControlArea(remote: Remote, area: ControlArea): void {
  remote.mmap(area.addr, area.size, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0, 'the control area');
  processVmWrite(remote.pid, new Float64Array([area.addr, CONTROL_CODE.length]), CONTROL_CODE);
}
