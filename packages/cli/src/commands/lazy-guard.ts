/**
 * `lazymig lazy-guard` (started by `restore --lazy-pages`, not by people): holds a copy of
 * each restored process's userfaultfd and watches the lazy-pages daemon. If the daemon goes
 * away before every page is in, the processes are killed: with the guard's copies open,
 * their missing pages stay missing (a faulting thread waits) instead of silently turning
 * into zero pages, and a process that can never get its memory must not run on.
 */
import { readCompletion, watchDaemon } from '@lazymig/core-ts';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../usage-error.js';

export const lazyGuardCommand: Command = {
  name: 'lazy-guard',
  summary: 'internal: started by restore --lazy-pages to kill restored processes if lazy-pages dies',
  options: {
    'work-dir': { type: 'string' },
    pids: { type: 'string' },
  },
  optionHelp: {
    'work-dir': 'where lazy-pages.socket is',
    pids: 'comma-separated pids of the restored processes',
  },
  async run({ values }) {
    if (typeof values['work-dir'] !== 'string' || typeof values.pids !== 'string') throw new UsageError('--work-dir and --pids are required');
    const pids = values.pids.split(',').map(Number);
    if (pids.some((p) => !Number.isInteger(p) || p <= 0)) throw new UsageError(`bad --pids ${values.pids}`);
    // The uffd copies arrive as fds 3.. and are simply held until we exit.
    if (watchDaemon(values['work-dir'])) return EXIT.ok;
    // Gone before we could ask, or without telling us: did it finish our processes first?
    const served = readCompletion(values['work-dir']);
    if (served && pids.every((p) => served.includes(p))) return EXIT.ok;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
        process.stderr.write(`${new Date().toISOString()} lazymig lazy-guard: the lazy-pages daemon went away before every page was in: killed pid ${pid}\n`);
      } catch {
        /* already gone */
      }
    }
    return EXIT.failed;
  },
};
