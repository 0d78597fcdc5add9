export * from './image/index.js';
export * from './proc/index.js';
export * from './host/index.js';
export * from './dump/index.js';
export * from './lazy/index.js';
export * from './log.js';
export * from './restore/index.js';
