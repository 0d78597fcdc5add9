// /proc readers used by dump. All synchronous on purpose: they run while the tree is
// frozen, where each event-loop hop would add to the downtime, and each read is a few
// syscalls on an in-kernel file. The exception is readFlaggedVmasOffThread: a lazy dump's check
// of reused VmFlags, a page-table walk that overlaps the frozen work instead of following it.
export * from './errors.js';
export * from './maps.js';
export * from './smaps.js';
export * from './pagemap.js';
export * from './populated.js';
export * from './stat.js';
export * from './status.js';
export * from './auxv.js';
export * from './limits.js';
export * from './fds.js';
export * from './task.js';
export * from './tree.js';
export * from './refusals.js';
