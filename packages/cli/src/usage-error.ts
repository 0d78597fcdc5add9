/** Bad command-line input: printed with the command's usage, exit status 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

/** Exit statuses, so scripts can tell a bad invocation from a failed operation. */
export const EXIT = {
  ok: 0,
  failed: 1,
  usage: 2,
} as const;
