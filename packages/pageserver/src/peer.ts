/**
 * A destination's connection as the page server's protocol code sees it, carried either by
 * the `ws` package (on the JS thread) or by a native PageStream thread that serves the
 * background lane's requests itself (see uffd-rs's page_stream.rs for why).
 *
 * The background lane asks for BACKGROUND_PATH (protocol/messages.ts). When the server
 * streams from live processes, that upgrade is answered here: the socket's fd goes to a
 * PageStream, which writes the 101 response and from then on reads the connection; Node's
 * socket is closed without a FIN (the stream holds its own duplicate of the fd).
 */
import { createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';
import { PageStream, type PageStreamEvent } from '@lazymig/core-ts';
import { tcpHandle } from './tcp-handle.js';

export interface Peer {
  /** "address:port" of the destination, for logs. */
  readonly name: string;
  readonly open: boolean;
  /** Bytes of replies handed to the connection and not yet written out. */
  readonly bufferedAmount: number;
  /** Sends one binary message; cb runs once it has been handed to the socket. */
  send(frame: Uint8Array, cb?: () => void): void;
  close(code: number, reason: string): void;
  terminate(): void;
}

export function wsPeer(ws: WebSocket, name: string): Peer {
  return {
    name,
    get open() {
      return ws.readyState === ws.OPEN;
    },
    get bufferedAmount() {
      return ws.bufferedAmount;
    },
    send: (frame, cb) => ws.send(frame, { binary: true }, () => cb?.()),
    close: (code, reason) => ws.close(code, reason),
    terminate: () => ws.terminate(),
  };
}

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

/**
 * The 101 response to a WebSocket upgrade request, or why it cannot have one. What ws
 * checks, for the one kind of client we serve this way: version 13, a 16-byte key, no
 * extension is negotiated (any offered is declined by not answering it).
 */
export function upgradeResponse(req: IncomingMessage): { response: string } | { refusal: string } {
  const key = req.headers['sec-websocket-key'];
  if (req.method !== 'GET' || req.headers.upgrade?.toLowerCase() !== 'websocket') return { refusal: 'not a WebSocket upgrade' };
  if (req.headers['sec-websocket-version'] !== '13') return { refusal: 'unsupported WebSocket version' };
  if (typeof key !== 'string' || !/^[+/0-9A-Za-z]{21}[AQgw]==$/.test(key)) return { refusal: 'invalid Sec-WebSocket-Key' };
  const accept = createHash('sha1').update(key + GUID).digest('base64');
  return { response: `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n` };
}

export interface StreamHandlers {
  /** A binary message the native thread passed on (hello, complete, anything it does not serve). */
  message(data: Buffer): void;
  /** A request the thread refused, or a read that failed: for the log. */
  problem(e: Extract<PageStreamEvent, { type: 'refused' | 'read-failed' }>): void;
  /** The connection is over (error: why, when it was not a clean close). */
  closed(error: string | undefined): void;
}

/**
 * Takes an upgraded socket over with a PageStream, or returns null (not a TCP socket: the
 * caller lets ws serve it). `head`: bytes read past the upgrade request.
 */
export function streamPeer(
  socket: Duplex, head: Buffer, response: string, bufferBytes: number, name: string, on: StreamHandlers,
): { peer: Peer; stream: PageStream } | null {
  const handle = tcpHandle(socket);
  if (handle === null) return null;
  // Node must read no further byte: from the moment the stream starts, they are its own.
  handle.readStop();
  const stream = new PageStream(handle.fd, head, Buffer.from(response, 'latin1'), bufferBytes, (e) => {
    switch (e.type) {
      case 'message':
        // Handled (a welcome queued, serve() called) before the thread reads on.
        on.message(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.length));
        return stream.resume();
      case 'refused':
      case 'read-failed':
        return on.problem(e);
      case 'closed':
        return on.closed(e.error);
    }
  });
  // Closes Node's fd only: the connection lives on in the stream's duplicate.
  socket.destroy();
  // Frames JS queued and the thread has not written yet (a reply JS itself served).
  let queued = 0;
  const peer: Peer = {
    name,
    get open() {
      return !stream.closed;
    },
    get bufferedAmount() {
      return queued;
    },
    send: (frame, cb) => {
      queued += frame.length;
      stream.send(frame, () => {
        queued -= frame.length;
        cb?.();
      });
    },
    close: (code, reason) => stream.close(code, reason),
    terminate: () => stream.terminate(),
  };
  return { peer, stream };
}
