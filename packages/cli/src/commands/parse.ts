import { UsageError } from '../usage-error.js';

export function parsePid(text: string): number {
  if (!/^[1-9]\d{0,9}$/.test(text) || Number(text) > 4194304) throw new UsageError(`not a pid: ${text}`);
  return Number(text);
}

export function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) throw new UsageError(`not a port: ${text}`);
  return Number(text);
}

/** A non-negative number of seconds (fractions allowed), for `option`. */
export function parseSeconds(option: string, text: string | boolean | undefined): number {
  const n = typeof text === 'string' && /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  if (!(n >= 0) || n > 86_400) throw new UsageError(`${option} must be a number of seconds, got ${String(text)}`);
  return n;
}
