/**
 * Serving a page-server connection on a native thread (uffd-rs's PageStream): the page
 * server's background lanes, read straight from the frozen processes. Here so that the
 * page server reaches the native package through core-ts, like everything else.
 */
export { PageStream, type PageStreamEvent } from '@lazymig/uffd-rs';
