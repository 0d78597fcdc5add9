/**
 * The libuv handle under a Node TCP socket: its fd, and a way to stop Node reading it.
 * Both ends hand a connection's fd to a native thread (PageStream, PageReceiver) once the
 * WebSocket handshake is done; from then on every byte on it is that thread's.
 */
import type { Server, Socket } from 'node:net';
import type { Duplex } from 'node:stream';

export interface TcpHandle {
  fd: number;
  readStop(): number;
}

/** The handle, or null for any other kind of stream (a TLS socket, a test double). */
export function tcpHandle(socket: Duplex): TcpHandle | null {
  const handle = (socket as Socket & { _handle?: { fd?: unknown; readStop?: unknown } })._handle;
  if (!handle || typeof handle.fd !== 'number' || handle.fd < 0 || typeof handle.readStop !== 'function') return null;
  return handle as TcpHandle;
}

/** The fd of a listening Node server's socket, or null (not listening, or not on TCP). */
export function listenerFd(server: Server): number | null {
  const handle = (server as Server & { _handle?: { fd?: unknown } | null })._handle;
  return handle && typeof handle.fd === 'number' && handle.fd >= 0 ? handle.fd : null;
}
