/**
 * Structured log lines for the daemons: `ts=… level=… pid=… comp=… what="…" key=value…`,
 * one event a line, greppable and parseable, never interleaved mid-line.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type LogFields = Record<string, string | number | bigint | boolean | null | undefined>;

export interface Logger {
  debug(what: string, fields?: LogFields): void;
  info(what: string, fields?: LogFields): void;
  warn(what: string, fields?: LogFields): void;
  error(what: string, fields?: LogFields): void;
  child(comp: string): Logger;
}

const ORDER: Record<LogLevel, number> = { debug: 0, info: 1, warn: 2, error: 3 };

function value(v: string | number | bigint | boolean | null): string {
  if (typeof v === 'string') return /^[\w.:/@+-]+$/.test(v) ? v : JSON.stringify(v);
  return String(v);
}

export function formatLogLine(level: LogLevel, comp: string, what: string, fields: LogFields = {}): string {
  let line = `ts=${new Date().toISOString()} level=${level} pid=${process.pid} comp=${comp} what=${JSON.stringify(what)}`;
  for (const [k, v] of Object.entries(fields)) if (v !== undefined) line += ` ${k}=${value(v)}`;
  return line + '\n';
}

export function createLogger(comp: string, opts: { level?: LogLevel; write?: (line: string) => void } = {}): Logger {
  const min = ORDER[opts.level ?? (process.env.LAZYMIG_LOG as LogLevel | undefined) ?? 'info'] ?? ORDER.info;
  const write = opts.write ?? ((line: string) => process.stderr.write(line));
  const at =
    (level: LogLevel) =>
    (what: string, fields?: LogFields): void => {
      if (ORDER[level] >= min) write(formatLogLine(level, comp, what, fields));
    };
  return {
    debug: at('debug'),
    info: at('info'),
    warn: at('warn'),
    error: at('error'),
    child: (c) => createLogger(`${comp}.${c}`, opts),
  };
}

/** A logger that drops everything (library callers that did not ask for logs). */
export const silentLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silentLogger,
};
