import { renderShowJson, renderShowSummary } from '@lazymig/core-ts';
import type { Command } from '../command.js';
import { EXIT } from '../usage-error.js';

export const showCommand: Command = {
  name: 'show',
  summary: 'print an images directory or one image file as JSON, or as a short table',
  args: '<dir|file>',
  positionals: { min: 1, max: 1 },
  options: { summary: { type: 'boolean' } },
  optionHelp: { summary: 'processes, threads, VMAs, pages present/lazy/zero and bytes, as a table' },
  async run({ values, positionals }) {
    const path = positionals[0]!;
    const text = values.summary ? await renderShowSummary(path) : await renderShowJson(path);
    process.stdout.write(text.endsWith('\n') ? text : text + '\n');
    return EXIT.ok;
  },
};
