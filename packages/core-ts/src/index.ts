export * from './image/index.js';
export * from './proc/index.js';
