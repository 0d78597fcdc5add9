export * from './protocol/messages.js';
export * from './protocol/lazy-ranges.js';
