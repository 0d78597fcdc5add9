import { UsageError } from '../usage-error.js';

export function parsePid(text: string): number {
  if (!/^[1-9]\d{0,9}$/.test(text) || Number(text) > 4194304) throw new UsageError(`not a pid: ${text}`);
  return Number(text);
}

export function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text) || Number(text) < 1 || Number(text) > 65535) throw new UsageError(`not a port: ${text}`);
  return Number(text);
}
