export * from './image/index.js';
export * from './proc/index.js';
export * from './host/index.js';
export * from './dump/index.js';
