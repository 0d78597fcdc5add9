import { DEFAULT_CONGESTION, type CongestionChoice } from '@lazymig/pageserver';
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

/** `--tcp-congestion`, shared by the commands that run a page server. */
export const CONGESTION_HELP =
  `TCP congestion control the page server sends with, or 'system' for the system's default (default: ${DEFAULT_CONGESTION}, where the kernel has it)`;

/**
 * The page server's congestion control: one the user named (which must then be there),
 * none chosen ('system': null), or the page server's default (undefined).
 */
export function parseCongestion(text: string | boolean | undefined): CongestionChoice | null | undefined {
  if (text === undefined) return undefined;
  if (text === 'system') return null;
  if (typeof text !== 'string' || !/^[a-z][a-z0-9_-]{0,14}$/.test(text)) throw new UsageError(`--tcp-congestion: not an algorithm name: ${String(text)}`);
  return { algorithm: text };
}
