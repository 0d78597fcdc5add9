export * from './protocol/messages.js';
export * from './protocol/lazy-ranges.js';
export {
  PageServer, MAX_REQUEST_PAGES, DEFAULT_CONGESTION, type CongestionChoice, type PageServerContent, type PageServerOptions, type PageServerStats,
} from './server.js';
export { PageClient, PageServerError, type PageClientOptions } from './client.js';
export { frozenTreeContent, serveFrozenTree, serveImages, readToken, type ServeFrozenOptions, type ServeImagesOptions } from './serve.js';
export { warmPageTransport } from './warm.js';
export { BufferPool } from './buffer-pool.js';
