/**
 * A minimal WebSocket client (RFC 6455) for the page client's lanes, built for one job:
 * receiving large binary frames without copying them around.
 *
 * The `ws` package reads the socket into fresh 64 KiB chunks and, once a frame is whole,
 * concatenates them into another fresh buffer: two allocations and a copy per byte, and
 * for a 2 MiB frame a 2 MiB malloc (an mmap whose every page faults in). Here the socket
 * reads straight into the buffer the frame ends in (Node's `onread` with a buffer chosen
 * per read): small reads go into a scratch buffer; once a frame's header says how long its
 * payload is, the rest of the payload is read directly into a buffer of that size from a
 * pool, which the consumer gives back when done. The kernel's copy into it is the only one.
 *
 * What it supports is what the page server (ws, no extensions) sends: unfragmented binary
 * frames, ping (answered), pong (ignored), close. Text or fragmented frames, a frame larger
 * than maxPayload, a masked server frame or an RSV bit are protocol errors that end the
 * connection. Frames it sends are masked, as a client's must be.
 */
import { createHash, randomBytes, randomFillSync } from 'node:crypto';
import net from 'node:net';
import type { BufferPool } from './buffer-pool.js';
import { tcpHandle } from './tcp-handle.js';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const SCRATCH = 256 << 10;
/** Payloads at least this long are read into a pooled buffer of their own. */
const DIRECT_MIN = 16 << 10;

export interface FrameSocketOptions {
  host: string;
  port: number;
  path?: string;
  handshakeTimeoutMs?: number;
  maxPayload: number;
  pool: BufferPool;
}

type State = 'handshake' | 'open' | 'closed';

export class FrameSocket {
  /** A whole binary message. `data` may come from the pool: give it back with pool.release. */
  onMessage: (data: Buffer) => void = () => undefined;
  /** The connection is gone (once). */
  onClose: (err?: Error) => void = () => undefined;

  readonly #sock: net.Socket;
  readonly #opts: FrameSocketOptions;
  readonly #scratch = Buffer.allocUnsafeSlow(SCRATCH);
  /** Bytes of #scratch not yet parsed: [#lo, #hi). */
  #lo = 0;
  #hi = 0;
  /** A payload being read directly into its own buffer. */
  #direct: { buf: Buffer; filled: number; opcode: number } | null = null;
  #state: State = 'handshake';
  readonly #key = randomBytes(16).toString('base64');
  readonly #maskPool = Buffer.allocUnsafe(4096);
  #maskAt = 4096;
  #openResolve!: () => void;
  #openReject!: (e: Error) => void;
  readonly #opened: Promise<void>;
  #closeErr: Error | undefined;
  /** performance.now() of the last bytes received (any frame, or part of one). */
  #heardAt = performance.now();

  private constructor(opts: FrameSocketOptions) {
    this.#opts = opts;
    this.#opened = new Promise((res, rej) => {
      this.#openResolve = res;
      this.#openReject = rej;
    });
    this.#sock = net.connect({
      host: opts.host,
      port: opts.port,
      noDelay: true,
      onread: {
        buffer: () => this.#readBuffer(),
        callback: (n: number) => {
          this.#onRead(n);
          return true;
        },
      },
    });
    this.#sock.setNoDelay(true);
    const timer = setTimeout(() => this.#fail(new Error('opening handshake timed out')), opts.handshakeTimeoutMs ?? 5_000);
    this.#opened.then(() => clearTimeout(timer), () => clearTimeout(timer));
    this.#sock.on('connect', () => {
      const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
      this.#sock.write(
        `GET ${opts.path ?? '/'} HTTP/1.1\r\nHost: ${host}:${opts.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${this.#key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    this.#sock.on('error', (err) => this.#fail(err));
    this.#sock.on('close', () => this.#fail(new Error('connection closed')));
  }

  /** Connects and completes the opening handshake. */
  static async connect(opts: FrameSocketOptions): Promise<FrameSocket> {
    const s = new FrameSocket(opts);
    await s.#opened;
    return s;
  }

  get open(): boolean {
    return this.#state === 'open';
  }

  /** Milliseconds since bytes last came from the server. */
  get silentMs(): number {
    return performance.now() - this.#heardAt;
  }

  /**
   * Hands the connection to a native thread: Node reads no further byte of it. Returns
   * the socket's fd and the bytes read past the last whole frame, or null (not a TCP
   * socket, or not between frames). `release()` closes Node's socket once the new owner
   * holds its own duplicate of the fd (the connection lives on in that). onClose is not
   * called: the connection is not over.
   */
  detach(): { fd: number; head: Buffer; release(): void } | null {
    const handle = tcpHandle(this.#sock);
    if (this.#state !== 'open' || this.#direct || handle === null) return null;
    handle.readStop();
    const head = Buffer.from(this.#scratch.subarray(this.#lo, this.#hi));
    this.#state = 'closed';
    this.#closeErr = new Error('handed over');
    return { fd: handle.fd, head, release: () => this.#sock.destroy() };
  }

  /** Sends one binary message (masked). */
  send(data: Uint8Array, cb?: (err?: Error | null) => void): void {
    if (this.#state !== 'open') {
      if (cb) process.nextTick(cb, new Error('not open'));
      return;
    }
    this.#sock.write(this.#frame(0x2, data), cb);
  }

  /** Sends a ping (the server answers with a pong, which counts as hearing from it). */
  ping(): void {
    if (this.#state === 'open') this.#sock.write(this.#frame(0x9, Buffer.alloc(0)));
  }

  /** Sends a close frame and ends the connection. */
  close(code = 1000): void {
    if (this.#state !== 'open') return this.terminate();
    const body = Buffer.allocUnsafe(2);
    body.writeUInt16BE(code, 0);
    this.#sock.end(this.#frame(0x8, body));
    this.#state = 'closed';
    setTimeout(() => this.#sock.destroy(), 1_000).unref();
  }

  terminate(): void {
    this.#sock.destroy();
    this.#fail(new Error('terminated'));
  }

  #frame(opcode: number, data: Uint8Array): Buffer {
    const n = data.length;
    const hdr = n < 126 ? 2 : n < 65536 ? 4 : 10;
    const out = Buffer.allocUnsafe(hdr + 4 + n);
    out[0] = 0x80 | opcode;
    if (n < 126) out[1] = 0x80 | n;
    else if (n < 65536) {
      out[1] = 0x80 | 126;
      out.writeUInt16BE(n, 2);
    } else {
      out[1] = 0x80 | 127;
      out.writeBigUInt64BE(BigInt(n), 2);
    }
    const m = this.#nextMask();
    m.copy(out, hdr);
    for (let i = 0; i < n; i++) out[hdr + 4 + i] = data[i]! ^ m[i & 3]!;
    return out;
  }

  /**
   * A fresh random masking key. Taken from a pool filled 1024 keys at a time: one call into
   * the CSPRNG per request frame cost more than the rest of sending it.
   */
  #nextMask(): Buffer {
    if (this.#maskAt >= this.#maskPool.length) {
      randomFillSync(this.#maskPool);
      this.#maskAt = 0;
    }
    const m = this.#maskPool.subarray(this.#maskAt, this.#maskAt + 4);
    this.#maskAt += 4;
    return m;
  }

  #fail(err: Error): void {
    if (this.#state === 'handshake') this.#openReject(err);
    const wasClosed = this.#closeErr !== undefined;
    this.#state = 'closed';
    this.#closeErr ??= err;
    if (!this.#sock.destroyed) this.#sock.destroy();
    if (!wasClosed) {
      if (this.#direct) this.#opts.pool.release(this.#direct.buf);
      this.#direct = null;
      this.onClose(err);
    }
  }

  /** Where the next read goes: the rest of a direct payload, or the scratch buffer. */
  #readBuffer(): Buffer {
    const d = this.#direct;
    if (d) return d.buf.subarray(d.filled);
    if (this.#lo === this.#hi) this.#lo = this.#hi = 0;
    else if (this.#hi > SCRATCH - 4096) {
      this.#scratch.copy(this.#scratch, 0, this.#lo, this.#hi);
      this.#hi -= this.#lo;
      this.#lo = 0;
    }
    return this.#scratch.subarray(this.#hi);
  }

  #onRead(n: number): void {
    if (this.#state === 'closed') return;
    this.#heardAt = performance.now();
    const d = this.#direct;
    if (d) {
      d.filled += n;
      if (d.filled === d.buf.length) {
        this.#direct = null;
        this.#deliver(d.opcode, d.buf);
      }
      return;
    }
    this.#hi += n;
    try {
      if (this.#state === 'handshake' && !this.#parseHandshake()) return;
      this.#parseFrames();
    } catch (err) {
      this.#fail(err as Error);
    }
  }

  /** True once the 101 response has been read and checked. */
  #parseHandshake(): boolean {
    const text = this.#scratch.toString('latin1', this.#lo, this.#hi);
    const end = text.indexOf('\r\n\r\n');
    if (end < 0) {
      if (this.#hi - this.#lo > 16 << 10) throw new Error('opening handshake response too long');
      return false;
    }
    const [status, ...lines] = text.slice(0, end).split('\r\n');
    if (!/^HTTP\/1\.1 101 /.test(status!)) throw new Error(`unexpected server response: ${status}`);
    const headers = new Map(lines.map((l) => {
      const i = l.indexOf(':');
      return [l.slice(0, i).trim().toLowerCase(), l.slice(i + 1).trim()] as const;
    }));
    const accept = createHash('sha1').update(this.#key + GUID).digest('base64');
    if (headers.get('sec-websocket-accept') !== accept) throw new Error('invalid Sec-WebSocket-Accept header');
    if (headers.get('upgrade')?.toLowerCase() !== 'websocket') throw new Error('invalid Upgrade header');
    if (headers.has('sec-websocket-extensions')) throw new Error('server negotiated an extension');
    this.#lo += end + 4;
    this.#state = 'open';
    this.#openResolve();
    return true;
  }

  #parseFrames(): void {
    const b = this.#scratch;
    while (this.#state === 'open' && this.#hi - this.#lo >= 2) {
      const lo = this.#lo;
      const b0 = b[lo]!;
      const b1 = b[lo + 1]!;
      if ((b0 & 0x70) !== 0) throw new Error('RSV bits set');
      if ((b1 & 0x80) !== 0) throw new Error('server frames must not be masked');
      const opcode = b0 & 0x0f;
      const fin = (b0 & 0x80) !== 0;
      let len = b1 & 0x7f;
      let hdr = 2;
      if (len === 126) {
        if (this.#hi - lo < 4) return;
        len = b.readUInt16BE(lo + 2);
        hdr = 4;
      } else if (len === 127) {
        if (this.#hi - lo < 10) return;
        const big = b.readBigUInt64BE(lo + 2);
        if (big > BigInt(this.#opts.maxPayload)) throw new Error(`frame of ${big} bytes exceeds ${this.#opts.maxPayload}`);
        len = Number(big);
        hdr = 10;
      }
      if (!fin || opcode === 0x0) throw new Error('fragmented frames are not supported');
      if (opcode === 0x1) throw new Error('text frames are not supported');
      if (opcode !== 0x2 && opcode !== 0x8 && opcode !== 0x9 && opcode !== 0xa) throw new Error(`unknown opcode ${opcode}`);
      if (opcode >= 0x8 && len > 125) throw new Error('control frame too long');
      if (len > this.#opts.maxPayload) throw new Error(`frame of ${len} bytes exceeds ${this.#opts.maxPayload}`);
      const have = this.#hi - lo - hdr;
      if (have < 0) return;
      if (len >= DIRECT_MIN && have < len) {
        // The rest of this payload goes straight into its own buffer.
        const buf = this.#opts.pool.acquire(len);
        b.copy(buf, 0, lo + hdr, this.#hi);
        this.#lo = this.#hi = 0;
        this.#direct = { buf, filled: have, opcode };
        return;
      }
      if (have < len) return;
      const start = lo + hdr;
      this.#lo = start + len;
      if (opcode === 0x2) {
        const buf = this.#opts.pool.acquire(len);
        b.copy(buf, 0, start, start + len);
        this.#deliver(opcode, buf);
      } else this.#deliver(opcode, Buffer.from(b.subarray(start, start + len)));
    }
  }

  #deliver(opcode: number, data: Buffer): void {
    switch (opcode) {
      case 0x2:
        this.onMessage(data);
        return;
      case 0x9:
        this.#sock.write(this.#frame(0xa, data));
        return;
      case 0xa:
        return;
      case 0x8: {
        const code = data.length >= 2 ? data.readUInt16BE(0) : 1005;
        const reason = data.length > 2 ? data.toString('utf8', 2) : '';
        if (this.#state === 'open') {
          const body = Buffer.allocUnsafe(2);
          body.writeUInt16BE(code === 1005 ? 1000 : code, 0);
          this.#sock.end(this.#frame(0x8, body));
        }
        this.#fail(new Error(`closed by the server (${code}${reason ? `: ${reason}` : ''})`));
        return;
      }
    }
  }
}
