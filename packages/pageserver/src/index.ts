export * from './protocol/messages.js';
export * from './protocol/lazy-ranges.js';
export { PageServer, MAX_REQUEST_PAGES, type PageServerOptions, type PageServerStats } from './server.js';
export { PageClient, PageServerError, type PageClientOptions } from './client.js';
export { serveFrozenTree, serveImages, readToken, type ServeFrozenOptions, type ServeImagesOptions } from './serve.js';
