/**
 * The page protocol's messages and their wire form.
 *
 * Every WebSocket frame is one msgpack array whose first element is the message tag.
 * Arrays, not maps: a fault reply is on the latency path, and field names would be most of
 * a small frame. Page data travels as a msgpack bin, which decodes as a view into the
 * received frame (no copy).
 */
import { Packr } from 'msgpackr';

export const PROTOCOL_VERSION = 1;

/**
 * The WebSocket path of the destination's background lane (the fault lane uses `/`). Only a
 * hint: a server may serve that lane on a native thread; the messages are the same.
 */
export const BACKGROUND_PATH = '/background';

/** A fault request overtakes any background transfer. */
export type Priority = 'fault' | 'background';

export type ClientMessage =
  | { type: 'hello'; version: number; token: string }
  | { type: 'request'; id: number; pid: number; address: number; pages: number; priority: Priority }
  /** The destination holds every page: the source may now kill the frozen tree. */
  | { type: 'complete' };

export type ServerMessage =
  | { type: 'welcome'; version: number }
  | { type: 'reject'; reason: string }
  | { type: 'pages'; id: number; pid: number; address: number; pages: number; data: Uint8Array }
  | { type: 'error'; id: number; reason: string }
  /** Answer to `complete`: the source tree is gone. */
  | { type: 'bye' };

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

const TAG = {
  hello: 1,
  request: 2,
  complete: 3,
  welcome: 16,
  reject: 17,
  pages: 18,
  error: 19,
  bye: 20,
} as const;

const PRIORITY_CODE: Record<Priority, number> = { fault: 0, background: 1 };

// Maps keep their order, records off: every field is positional.
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true });

export function encodeClient(m: ClientMessage): Buffer {
  switch (m.type) {
    case 'hello':
      return packr.pack([TAG.hello, m.version, m.token]);
    case 'request':
      return packr.pack([TAG.request, m.id, m.pid, m.address, m.pages, PRIORITY_CODE[m.priority]]);
    case 'complete':
      return packr.pack([TAG.complete]);
  }
}

export function encodeServer(m: ServerMessage): Buffer {
  switch (m.type) {
    case 'welcome':
      return packr.pack([TAG.welcome, m.version]);
    case 'reject':
      return packr.pack([TAG.reject, m.reason]);
    case 'pages':
      return packr.pack([TAG.pages, m.id, m.pid, m.address, m.pages, m.data]);
    case 'error':
      return packr.pack([TAG.error, m.id, m.reason]);
    case 'bye':
      return packr.pack([TAG.bye]);
  }
}

/** Bytes before the page data in a frame from allocPagesFrame. */
export const PAGES_HEADER_SIZE = 1 + 1 + 5 + 5 + 9 + 5 + 5;

/** Length of a `pages` frame carrying `pages` pages (what a buffer for one must hold). */
export function pagesFrameBytes(pages: number, pageSize: number): number {
  return PAGES_HEADER_SIZE + pages * pageSize;
}

/**
 * A `pages` frame with room for the data, which the caller fills in place (e.g. straight
 * from process_vm_readv): no copy between reading the pages and handing them to the socket.
 * Fixed-width fields keep the header size constant; any msgpack decoder reads it.
 */
export function allocPagesFrame(id: number, pid: number, address: number, pages: number, bytes: number): { frame: Buffer; data: Buffer } {
  const frame = Buffer.allocUnsafe(PAGES_HEADER_SIZE + bytes);
  writePagesHeader(frame, id, pid, address, pages, bytes);
  return { frame, data: frame.subarray(PAGES_HEADER_SIZE) };
}

/**
 * Writes the header of a `pages` frame of `bytes` data bytes at the start of `frame` (which
 * must be PAGES_HEADER_SIZE + bytes long): for frames from a pool of reused buffers.
 */
export function writePagesHeader(frame: Buffer, id: number, pid: number, address: number, pages: number, bytes: number): void {
  if (frame.length !== PAGES_HEADER_SIZE + bytes) throw new RangeError(`pages frame is ${frame.length} bytes, expected ${PAGES_HEADER_SIZE + bytes}`);
  let o = 0;
  frame[o++] = 0x96; // fixarray of 6
  frame[o++] = TAG.pages; // positive fixint
  const u32 = (v: number): void => {
    frame[o++] = 0xce; // uint32
    frame.writeUInt32BE(v, o);
    o += 4;
  };
  u32(id);
  u32(pid);
  frame[o++] = 0xcf; // uint64
  frame.writeBigUInt64BE(BigInt(address), o);
  o += 8;
  u32(pages);
  frame[o++] = 0xc6; // bin32
  frame.writeUInt32BE(bytes, o);
  // Field order on the wire must match decodeServer: [tag, id, pid, address, pages, data].
}

function unpackFrame(frame: Uint8Array): unknown[] {
  let value: unknown;
  try {
    value = packr.unpack(frame);
  } catch (err) {
    throw new ProtocolError(`undecodable frame (${frame.length} bytes): ${(err as Error).message}`);
  }
  if (!Array.isArray(value) || value.length === 0) throw new ProtocolError('frame is not a message array');
  return value;
}

/** A non-negative integer that a JS number holds exactly (msgpack uint64 decodes as a bigint). */
function uint(v: unknown, what: string): number {
  if (typeof v === 'bigint' && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new ProtocolError(`${what} must be a non-negative integer, got ${String(v)}`);
  }
  return v;
}

function str(v: unknown, what: string, max: number): string {
  if (typeof v !== 'string' || v.length > max) throw new ProtocolError(`${what} must be a string of at most ${max} characters`);
  return v;
}

function arity(a: unknown[], n: number, what: string): void {
  if (a.length !== n) throw new ProtocolError(`${what} message has ${a.length - 1} fields, expected ${n - 1}`);
}

export function decodeClient(frame: Uint8Array): ClientMessage {
  const a = unpackFrame(frame);
  switch (a[0]) {
    case TAG.hello:
      arity(a, 3, 'hello');
      return { type: 'hello', version: uint(a[1], 'version'), token: str(a[2], 'token', 256) };
    case TAG.request: {
      arity(a, 6, 'request');
      const code = uint(a[5], 'priority');
      if (code > 1) throw new ProtocolError(`unknown priority ${code}`);
      return {
        type: 'request',
        id: uint(a[1], 'id'),
        pid: uint(a[2], 'pid'),
        address: uint(a[3], 'address'),
        pages: uint(a[4], 'pages'),
        priority: code === 0 ? 'fault' : 'background',
      };
    }
    case TAG.complete:
      arity(a, 1, 'complete');
      return { type: 'complete' };
    default:
      throw new ProtocolError(`unknown client message tag ${String(a[0])}`);
  }
}

export function decodeServer(frame: Uint8Array): ServerMessage {
  const a = unpackFrame(frame);
  switch (a[0]) {
    case TAG.welcome:
      arity(a, 2, 'welcome');
      return { type: 'welcome', version: uint(a[1], 'version') };
    case TAG.reject:
      arity(a, 2, 'reject');
      return { type: 'reject', reason: str(a[1], 'reason', 4096) };
    case TAG.pages: {
      arity(a, 6, 'pages');
      const data = a[5];
      if (!(data instanceof Uint8Array)) throw new ProtocolError('pages data must be binary');
      return {
        type: 'pages',
        id: uint(a[1], 'id'),
        pid: uint(a[2], 'pid'),
        address: uint(a[3], 'address'),
        pages: uint(a[4], 'pages'),
        data,
      };
    }
    case TAG.error:
      arity(a, 3, 'error');
      return { type: 'error', id: uint(a[1], 'id'), reason: str(a[2], 'reason', 4096) };
    case TAG.bye:
      arity(a, 1, 'bye');
      return { type: 'bye' };
    default:
      throw new ProtocolError(`unknown server message tag ${String(a[0])}`);
  }
}
