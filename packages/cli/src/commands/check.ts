import { checkHost } from '@lazymig/core-ts';
import type { Command } from '../command.js';
import { EXIT } from '../usage-error.js';

export const checkCommand: Command = {
  name: 'check',
  summary: 'report whether this kernel and this process have what lazymig needs',
  options: { json: { type: 'boolean' } },
  optionHelp: { json: 'print the full report (probe results included) as JSON' },
  async run({ values }) {
    const report = await checkHost();
    if (values.json) {
      process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    } else {
      const width = Math.max(...report.items.map((i) => i.name.length));
      for (const i of report.items) {
        const mark = i.ok ? 'ok  ' : i.required ? 'FAIL' : 'no  ';
        process.stdout.write(`${mark}  ${i.name.padEnd(width)}  ${i.detail}\n`);
      }
      const failed = report.items.filter((i) => !i.ok && i.required).map((i) => i.name);
      process.stdout.write(
        failed.length === 0
          ? '\nlazymig can migrate processes on this host.\n'
          : `\nlazymig cannot work here: ${failed.join(', ')}.\n`,
      );
    }
    return report.ok ? EXIT.ok : EXIT.failed;
  },
};
