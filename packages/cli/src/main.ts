import { commandHelp, parseCommandArgs, type Command } from './command.js';
import { EXIT, UsageError } from './usage-error.js';
import { profiled } from './cpu-profile.js';
import { checkCommand } from './commands/check.js';
import { showCommand } from './commands/show.js';
import { dumpCommand } from './commands/dump.js';
import { restoreCommand } from './commands/restore.js';
import { lazyPagesCommand } from './commands/lazy-pages.js';
import { pageServerCommand } from './commands/page-server.js';
import { demoCommand } from './commands/demo.js';

const commands: Command[] = [checkCommand, dumpCommand, restoreCommand, lazyPagesCommand, pageServerCommand, showCommand, demoCommand];

function mainHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'usage: lazymig <command> [options]',
    '',
    'Post-copy (lazy) live migration of Linux processes.',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    "Run 'lazymig <command> --help' for a command's options.",
  ].join('\n');
}

/** Runs one invocation and returns its exit status; never throws. */
export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '-h' || name === '--help' || name === 'help') {
    process.stdout.write(mainHelp() + '\n');
    return name === undefined ? EXIT.usage : EXIT.ok;
  }
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    process.stderr.write(`lazymig: unknown command '${name}'\n${mainHelp()}\n`);
    return EXIT.usage;
  }
  if (rest.includes('-h') || rest.includes('--help')) {
    process.stdout.write(commandHelp(cmd) + '\n');
    return EXIT.ok;
  }
  try {
    return await profiled(cmd.name, () => cmd.run(parseCommandArgs(cmd, rest)));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`lazymig ${cmd.name}: ${err.message}\n${commandHelp(cmd)}\n`);
      return EXIT.usage;
    }
    const e = err as Error;
    process.stderr.write(`lazymig ${cmd.name}: ${e.message}\n`);
    if (process.env.LAZYMIG_DEBUG) process.stderr.write(`${e.stack}\n`);
    return EXIT.failed;
  }
}

