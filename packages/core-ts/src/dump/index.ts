export { dump, DumpRefusedError, TOKEN_FILE, type DumpOptions, type DumpProgress, type DumpResult } from './dump.js';
export { freezeTree, FreezeError, type FrozenTree } from './freeze.js';
export { dumpRefusals } from './fds.js';
export { StaleFlagsError } from './layout.js';
