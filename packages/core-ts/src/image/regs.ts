/** Conversions between UserRegs and the raw 216-byte user_regs_struct that ptrace uses. */
import { USER_REGS_FIELDS, USER_REGS_SIZE, type UserRegs } from './types.js';

/** Parse a little-endian `struct user_regs_struct` (PTRACE_GETREGS). */
export function regsFromBuffer(buf: Uint8Array): UserRegs {
  if (buf.length < USER_REGS_SIZE) throw new RangeError(`user_regs_struct needs ${USER_REGS_SIZE} bytes, got ${buf.length}`);
  const view = new DataView(buf.buffer, buf.byteOffset, USER_REGS_SIZE);
  const out: Partial<Record<keyof UserRegs, bigint>> = {};
  USER_REGS_FIELDS.forEach((k, i) => {
    out[k] = view.getBigUint64(i * 8, true);
  });
  return out as UserRegs;
}

/** Serialise to a little-endian `struct user_regs_struct` (PTRACE_SETREGS). */
export function regsToBuffer(regs: UserRegs): Buffer {
  const buf = Buffer.alloc(USER_REGS_SIZE);
  USER_REGS_FIELDS.forEach((k, i) => buf.writeBigUInt64LE(BigInt.asUintN(64, regs[k]), i * 8));
  return buf;
}
