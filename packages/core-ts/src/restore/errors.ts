/**
 * Errors a restore reports. A RestoreError is raised before any restored process resumes:
 * whatever the restore created has been killed by the time the caller sees it.
 */
import { getSystemErrorMap } from 'node:util';

export type RestoreErrorCode =
  /** the images cannot be restored on this host (page size, arch, kernel feature, vdso layout) */
  | 'unsupported'
  /** a file the images refer to is gone or is not the one that was dumped */
  | 'file-changed'
  /** an address range of the dumped layout cannot be had */
  | 'address-taken'
  /** an injected syscall failed */
  | 'syscall'
  /** the stub or a restored process died or misbehaved */
  | 'process'
  /** the images ask for something this restore was not told to do (--shell-job, --lazy-pages) */
  | 'options';

export class RestoreError extends Error {
  override readonly name = 'RestoreError';
  constructor(
    message: string,
    readonly code: RestoreErrorCode,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const errnoMap = getSystemErrorMap();

/** 'ENOENT (no such file or directory)' for 2. */
export function errnoText(errno: number): string {
  const e = errnoMap.get(-errno);
  return e ? `${e[0]} (${e[1]})` : `errno ${errno}`;
}

export function errnoName(errno: number): string {
  return errnoMap.get(-errno)?.[0] ?? `errno ${errno}`;
}

export function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}
