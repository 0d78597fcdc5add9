/**
 * The libuv handle under a Node TCP socket: its fd, and a way to stop Node reading it.
 * Both ends hand a connection's fd to a native thread (PageStream, PageReceiver) once the
 * WebSocket handshake is done; from then on every byte on it is that thread's.
 */
import type { Socket } from 'node:net';
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
