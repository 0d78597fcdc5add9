import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UsageError } from './usage-error.js';

type Options = NonNullable<ParseArgsConfig['options']>;

export interface ParsedArgs {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

/** One `lazymig <name>` subcommand. Its help text is built from the same option table the parser uses, so the two cannot drift apart. */
export interface Command {
  name: string;
  summary: string;
  /** Positional part of the synopsis, e.g. "<dir|file>". */
  args?: string;
  options: Options;
  /** One line per option, keyed by option name. */
  optionHelp: Record<string, string>;
  positionals?: { min: number; max: number };
  run(args: ParsedArgs): Promise<number>;
}

export function parseCommandArgs(cmd: Command, argv: string[]): ParsedArgs {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: cmd.options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message.replace(/\. To specify .*$/s, ''));
  }
  const { min, max } = cmd.positionals ?? { min: 0, max: 0 };
  const n = parsed.positionals.length;
  if (n < min) throw new UsageError(`missing argument: ${cmd.args ?? ''}`.trim());
  if (n > max) throw new UsageError(`unexpected argument: ${parsed.positionals[max]}`);
  return { values: parsed.values as ParsedArgs['values'], positionals: parsed.positionals };
}

export function commandHelp(cmd: Command): string {
  const lines = [`usage: lazymig ${cmd.name}${cmd.args ? ' ' + cmd.args : ''} [options]`, '', cmd.summary, ''];
  const rows = Object.entries(cmd.options).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : '    '}--${name}${spec.type === 'string' ? ' <value>' : ''}`;
    return [flag, cmd.optionHelp[name] ?? ''] as const;
  });
  rows.push(['-h, --help', 'show this help']);
  const width = Math.max(...rows.map(([f]) => f.length));
  for (const [flag, text] of rows) lines.push(`  ${flag.padEnd(width)}  ${text}`);
  return lines.join('\n');
}
