/**
 * The source side: serves the lazy pages of a frozen tree (or of images) to the
 * destination over WebSocket.
 *
 * Each connection authenticates with the token dump wrote into the images dir, then asks
 * for page ranges; every range is checked against the dumped lazy ranges before a byte is
 * read. The destination opens one connection per priority lane, so a fault reply never
 * queues behind background data in a socket buffer. A session that goes away leaves the
 * tree frozen and the server listening for the next attempt; only `complete` ends it.
 */
import { timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { silentLogger, type Logger, type PageReader } from '@lazymig/core-ts';
import {
  decodeClient, encodeServer, PAGES_HEADER_SIZE, pagesFrameBytes, ProtocolError, PROTOCOL_VERSION, writePagesHeader, type ClientMessage,
} from './protocol/messages.js';
import type { LazyRanges } from './protocol/lazy-ranges.js';
import { BufferPool } from './buffer-pool.js';
import { FrameSocket } from './ws-client.js';

type Request = Extract<ClientMessage, { type: 'request' }>;

/** Largest request served, in pages (a bigger one is refused): bounds a reply's memory. */
export const MAX_REQUEST_PAGES = 4096;
/** Time a connection has to say hello. */
const HELLO_TIMEOUT_MS = 5_000;
/**
 * Background replies already handed to a connection's socket (queued in Node or the
 * kernel) above which its queued background requests wait: reading further ahead only
 * holds memory and the JS thread, and a fault request must find the thread free.
 */
const BACKGROUND_AHEAD_BYTES = 8 << 20;

/** What a page server serves, and what it does once the destination holds all of it. */
export interface PageServerContent {
  ranges: LazyRanges;
  reader: PageReader;
  /**
   * The destination holds every page. Called once; `bye` is sent after it resolves, and the
   * server then stops listening.
   */
  onComplete: () => Promise<void> | void;
}

export interface PageServerOptions {
  address: string;
  port: number;
  token: string;
  pageSize: number;
  /**
   * Without it the server listens, and takes hellos, but welcomes nobody until `open()`:
   * a dump listens before it freezes (setting up off the downtime) and opens once its
   * images are written and checked. A destination is never welcomed before that.
   */
  content?: PageServerContent;
  log?: Logger;
}

export interface PageServerStats {
  sessions: number;
  requests: number;
  pagesSent: number;
  bytesSent: number;
  refused: number;
}

export class PageServer {
  readonly stats: PageServerStats = { sessions: 0, requests: 0, pagesSent: 0, bytesSent: 0, refused: 0 };
  readonly #opts: PageServerOptions;
  readonly #log: Logger;
  readonly #wss: WebSocketServer;
  readonly #token: Buffer;
  #content: PageServerContent | null;
  /** Authenticated connections waiting for open() to be welcomed. */
  #unwelcomed: Array<() => void> = [];
  #completed = false;
  /** process.cpuUsage() when the first session was welcomed: what serving has cost since. */
  #cpu0: NodeJS.CpuUsage | null = null;
  readonly #pool = new BufferPool();
  /** Background requests not yet read, in arrival order, with their connection. */
  readonly #background: Array<{ ws: WebSocket; m: Request }> = [];
  #drainScheduled = false;
  #resolveDone!: () => void;
  /** Resolves once the destination has confirmed it holds every page and onComplete ran. */
  readonly done: Promise<void>;

  private constructor(opts: PageServerOptions, wss: WebSocketServer) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    this.#wss = wss;
    this.#token = Buffer.from(opts.token);
    this.#content = opts.content ?? null;
    this.done = new Promise((r) => (this.#resolveDone = r));
    wss.on('connection', (ws, req) => this.#accept(ws, `${req.socket.remoteAddress}:${req.socket.remotePort}`));
  }

  static async listen(opts: PageServerOptions): Promise<PageServer> {
    const wss = await new Promise<WebSocketServer>((resolve, reject) => {
      const s = new WebSocketServer({ host: opts.address, port: opts.port, perMessageDeflate: false, maxPayload: 1 << 16 });
      s.once('listening', () => resolve(s));
      s.once('error', (err) => reject(new Error(`page server: cannot listen on ${opts.address}:${opts.port}: ${err.message}`)));
    });
    return new PageServer(opts, wss);
  }

  /** Starts serving `content`, welcoming the destinations that said hello meanwhile. */
  open(content: PageServerContent): void {
    if (this.#content) throw new Error('page server: already open');
    this.#content = content;
    for (const welcome of this.#unwelcomed.splice(0)) welcome();
  }

  /**
   * Opens and drops one connection to ourselves (no hello: it is not a session): fails if
   * the address does not take connections, and runs the accept path once before it counts.
   */
  /**
   * Frames for the background replies of `pages` pages a connection can have ahead of it
   * (and two being read), faulted in now rather than while serving.
   */
  prefill(pages: number): void {
    const len = pagesFrameBytes(pages, this.#opts.pageSize);
    this.#pool.prefill(len, Math.ceil(BACKGROUND_AHEAD_BYTES / len) + 2);
  }

  async selfCheck(): Promise<void> {
    const ws = await FrameSocket.connect({ host: this.#opts.address, port: this.port, handshakeTimeoutMs: 5_000, maxPayload: 1 << 16, pool: this.#pool });
    ws.terminate();
  }

  get port(): number {
    return (this.#wss.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const c of this.#wss.clients) c.terminate();
    await new Promise<void>((r) => this.#wss.close(() => r()));
  }

  #accept(ws: WebSocket, peer: string): void {
    const log = this.#log;
    let authed = false;
    const refuse = (reason: string): void => {
      this.stats.refused++;
      log.warn('connection refused', { peer, reason });
      ws.send(encodeServer({ type: 'reject', reason }), () => ws.close(4001, reason.slice(0, 120)));
    };
    const timer = setTimeout(() => {
      if (!authed) refuse('no hello in time');
    }, HELLO_TIMEOUT_MS);
    ws.on('close', () => {
      clearTimeout(timer);
      if (authed) log.info('session ended', { peer, completed: this.#completed });
    });
    ws.on('error', (err) => log.warn('connection error', { peer, error: err.message }));
    ws.on('message', (data, isBinary) => {
      if (!isBinary || !(data instanceof Buffer)) return refuse('frames must be binary');
      let msg: ClientMessage;
      try {
        msg = decodeClient(data);
      } catch (err) {
        return refuse(err instanceof ProtocolError ? err.message : String(err));
      }
      if (!authed) {
        if (msg.type !== 'hello') return refuse('the first message must be hello');
        if (msg.version !== PROTOCOL_VERSION) return refuse(`protocol version ${msg.version} is not supported (this server speaks ${PROTOCOL_VERSION})`);
        const got = Buffer.from(msg.token);
        if (got.length !== this.#token.length || !timingSafeEqual(got, this.#token)) return refuse('wrong token');
        authed = true;
        clearTimeout(timer);
        const welcome = (): void => {
          if (ws.readyState !== ws.OPEN) return;
          this.stats.sessions++;
          this.#cpu0 ??= process.cpuUsage();
          log.info('session started', { peer });
          ws.send(encodeServer({ type: 'welcome', version: PROTOCOL_VERSION }));
        };
        if (this.#content) welcome();
        else this.#unwelcomed.push(welcome);
        return;
      }
      const content = this.#content;
      if (!content) return refuse('request before welcome');
      switch (msg.type) {
        case 'hello':
          return refuse('hello sent twice');
        case 'request':
          // A fault is read and sent at once; background work waits its turn in a queue
          // served one request per event-loop turn, so a fault request that arrives
          // meanwhile is never behind more than one background read.
          if (msg.priority === 'fault') return this.#serve(ws, msg);
          this.#background.push({ ws, m: msg });
          return this.#scheduleDrain();
        case 'complete':
          return void this.#complete(ws, peer, content);
      }
    });
  }

  #scheduleDrain(): void {
    if (this.#drainScheduled || this.#background.length === 0) return;
    this.#drainScheduled = true;
    setImmediate(() => {
      this.#drainScheduled = false;
      this.#drainOne();
    });
  }

  /**
   * Serves the first queued background request whose connection is not too far ahead, and
   * comes back next turn for another. When every queued request's connection is too far
   * ahead, it does not come back by itself: each of those connections has sends in flight,
   * and their completions call it again. (Coming back anyway made the server poll its queue
   * every event-loop turn, a whole CPU, for as long as a destination read slowly.)
   */
  #drainOne(): void {
    const q = this.#background;
    for (let i = 0; i < q.length; i++) {
      const { ws, m } = q[i]!;
      if (ws.readyState !== ws.OPEN) {
        q.splice(i--, 1);
        continue;
      }
      if (ws.bufferedAmount > BACKGROUND_AHEAD_BYTES) continue;
      q.splice(i, 1);
      this.#serve(ws, m);
      this.#scheduleDrain();
      return;
    }
  }

  /** A reply has left for the socket: a connection that was too far ahead may not be now. */
  readonly #sent = (): void => {
    if (this.#background.length > 0) this.#scheduleDrain();
  };

  #serve(ws: WebSocket, m: Request): void {
    this.stats.requests++;
    const { pid, address, pages, id } = m;
    const content = this.#content!;
    if (pages > MAX_REQUEST_PAGES || !content.ranges.contains(pid, address, pages)) {
      const reason = `pid ${pid} 0x${address.toString(16)}+${pages} pages is not a lazy range of the dump`;
      this.#log.warn('request refused', { pid, address: `0x${address.toString(16)}`, pages });
      ws.send(encodeServer({ type: 'error', id, reason }), this.#sent);
      return;
    }
    const bytes = pages * this.#opts.pageSize;
    const frame = this.#pool.acquire(PAGES_HEADER_SIZE + bytes);
    writePagesHeader(frame, id, pid, address, pages, bytes);
    try {
      content.reader.readInto(pid, address, frame.subarray(PAGES_HEADER_SIZE));
    } catch (err) {
      this.#pool.release(frame);
      const reason = `reading pid ${pid} at 0x${address.toString(16)}: ${(err as Error).message}`;
      this.#log.error('read failed', { pid, address: `0x${address.toString(16)}`, error: (err as Error).message });
      ws.send(encodeServer({ type: 'error', id, reason }), this.#sent);
      return;
    }
    // The frame goes to the socket as is (ws writes header and data with one writev); it is
    // reused once the socket is done with it.
    ws.send(frame, { binary: true }, () => {
      this.#pool.release(frame);
      this.#sent();
    });
    this.stats.pagesSent += pages;
    this.stats.bytesSent += frame.length;
  }

  async #complete(ws: WebSocket, peer: string, content: PageServerContent): Promise<void> {
    if (this.#completed) return;
    this.#completed = true;
    const cpu = process.cpuUsage(this.#cpu0 ?? undefined);
    // This whole process's CPU (every thread) since the first welcome: with few CPUs the
    // transfer is bound by it, and it is a steadier measure than the wall clock.
    this.#log.info('destination holds every page', { peer, pages: this.stats.pagesSent, cpuMs: Math.round((cpu.user + cpu.system) / 1000) });
    try {
      await content.onComplete();
    } finally {
      ws.send(encodeServer({ type: 'bye' }), () => {
        this.#resolveDone();
      });
    }
  }
}
