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
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer } from 'ws';
import { FrozenProcessReader, setTcpCongestion, silentLogger, type Logger, type PageReader, type PageStream } from '@lazymig/core-ts';
import {
  BACKGROUND_PATH, decodeClient, encodeServer, PAGES_HEADER_SIZE, pagesFrameBytes, ProtocolError, PROTOCOL_VERSION, writePagesHeader, type ClientMessage,
} from './protocol/messages.js';
import type { LazyRanges } from './protocol/lazy-ranges.js';
import { BufferPool } from './buffer-pool.js';
import { FrameSocket } from './ws-client.js';
import { streamPeer, upgradeResponse, wsPeer, type Peer } from './peer.js';
import { listenerFd } from './tcp-handle.js';

type Request = Extract<ClientMessage, { type: 'request' }>;

/** One connection's protocol state, fed by whichever carries it (ws or a PageStream). */
interface Session {
  /** A message; null for a frame that was not binary. */
  message(data: Buffer | null): void;
  closed(): void;
}

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

/** Sets the listening socket's congestion control (CongestionChoice). */
function chooseCongestion(http: Server, choice: CongestionChoice, log: Logger): void {
  const fd = listenerFd(http);
  try {
    if (fd === null) throw new Error('not listening on a TCP socket');
    setTcpCongestion(fd, choice.algorithm);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint =
      e.code === 'ENOENT' ? ' (not in net.ipv4.tcp_available_congestion_control, nor a module to load)'
      : e.code === 'EPERM' ? ' (not in net.ipv4.tcp_allowed_congestion_control)'
      : '';
    const why = e.message + hint;
    if (!choice.ifAvailable) throw new Error(`page server: cannot send with congestion control ${choice.algorithm}: ${why}`);
    log.warn('sending with the system\'s congestion control', { wanted: choice.algorithm, error: why });
  }
}

/** What a page server serves, and what it does once the destination holds all of it. */
export interface PageServerContent {
  ranges: LazyRanges;
  reader: PageReader;
  /**
   * The destination holds every page. Called once; `bye` is sent after it resolves, and the
   * server then stops listening. Only what `bye` promises belongs here (the source tree is
   * killed); slow cleanup goes in afterBye, which the destination does not wait for.
   */
  onComplete: () => Promise<void> | void;
  /** After `bye` went out: cleanup the destination need not wait for. `done` waits for it. */
  afterBye?: () => Promise<void> | void;
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
  /**
   * Background lanes are served on native threads straight from the dumped processes
   * (process_vm_readv), not on the JS thread. Only for content read from those live
   * processes (a FrozenProcessReader: a lazy dump's frozen tree); open() refuses other
   * content then.
   */
  streamBackground?: boolean;
  /**
   * The congestion control the server's connections send with (set on the listening
   * socket, whose connections inherit it). Default: DEFAULT_CONGESTION where the kernel
   * has it; null: the system's default.
   */
  congestion?: CongestionChoice | null;
  log?: Logger;
}

/**
 * What a page server sends with unless told otherwise: an algorithm that does not pace.
 * A machine's default may be BBR, which paces with a timer inside TCP when the interface
 * has no fq qdisc. On a link faster than the two ends' CPUs (a LAN, loopback, a veth)
 * that timer costs the sender's CPU and holds the transfer back (docs/PERFORMANCE.md,
 * "The sender's congestion control").
 */
export const DEFAULT_CONGESTION = 'cubic';

export interface CongestionChoice {
  /** A TCP congestion control algorithm, as in net.ipv4.tcp_available_congestion_control. */
  algorithm: string;
  /** One the kernel does not have (or lets us not choose) leaves the system's default, with a warning, instead of failing listen(). */
  ifAvailable?: boolean;
}

export interface PageServerStats {
  sessions: number;
  requests: number;
  pagesSent: number;
  bytesSent: number;
  refused: number;
}

export class PageServer {
  /** What the JS thread served; `stats` adds the native streams' counts. */
  readonly #stats: PageServerStats = { sessions: 0, requests: 0, pagesSent: 0, bytesSent: 0, refused: 0 };
  readonly #opts: PageServerOptions;
  readonly #log: Logger;
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  /** Background lanes served by native threads, open or not. */
  readonly #streams = new Set<PageStream>();
  /** Page buffer a stream's thread starts with: the background request size expected. */
  #streamBytes = 0;
  readonly #token: Buffer;
  #content: PageServerContent | null;
  /** Authenticated connections waiting for open() to be welcomed. */
  #unwelcomed: Array<() => void> = [];
  #completed = false;
  /** process.cpuUsage() when the first session was welcomed: what serving has cost since. */
  #cpu0: NodeJS.CpuUsage | null = null;
  readonly #pool = new BufferPool();
  /** Background requests not yet read, in arrival order, with their connection. */
  readonly #background: Array<{ peer: Peer; m: Request }> = [];
  #drainScheduled = false;
  #resolveDone!: () => void;
  /** Resolves once the destination has confirmed it holds every page, and onComplete and afterBye ran. */
  readonly done: Promise<void>;

  private constructor(opts: PageServerOptions, http: Server) {
    this.#opts = opts;
    this.#log = opts.log ?? silentLogger;
    this.#http = http;
    this.#wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1 << 16 });
    this.#token = Buffer.from(opts.token);
    this.#content = null;
    if (opts.content) this.open(opts.content);
    this.done = new Promise((r) => (this.#resolveDone = r));
    http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.#upgrade(req, socket, head));
    http.on('request', (_req, res) => res.writeHead(426, { 'content-type': 'text/plain' }).end('a lazymig page server speaks WebSocket only\n'));
  }

  static async listen(opts: PageServerOptions): Promise<PageServer> {
    const http = createServer();
    await new Promise<void>((resolve, reject) => {
      http.once('listening', resolve);
      http.once('error', (err) => reject(new Error(`page server: cannot listen on ${opts.address}:${opts.port}: ${err.message}`)));
      http.listen(opts.port, opts.address);
    });
    const congestion = opts.congestion === undefined ? { algorithm: DEFAULT_CONGESTION, ifAvailable: true } : opts.congestion;
    if (congestion) {
      try {
        chooseCongestion(http, congestion, opts.log ?? silentLogger);
      } catch (err) {
        await new Promise<void>((r) => http.close(() => r()));
        throw err;
      }
    }
    return new PageServer(opts, http);
  }

  /** Starts serving `content`, welcoming the destinations that said hello meanwhile. */
  open(content: PageServerContent): void {
    if (this.#content) throw new Error('page server: already open');
    if (this.#opts.streamBackground && !(content.reader instanceof FrozenProcessReader)) {
      throw new Error('page server: streamBackground needs content read from the live processes (FrozenProcessReader)');
    }
    this.#content = content;
    for (const welcome of this.#unwelcomed.splice(0)) welcome();
  }

  get stats(): PageServerStats {
    const s = { ...this.#stats };
    for (const st of this.#streams) {
      const n = st.stats;
      s.requests += n.requests;
      s.pagesSent += n.pagesSent;
      s.bytesSent += n.bytesSent;
    }
    return s;
  }

  /**
   * Buffers for background replies of `pages` pages, faulted in now rather than while
   * serving: the frames a connection can have ahead of it (and two being read), or, on a
   * streaming server, the size each stream's thread starts its own buffer at.
   */
  prefill(pages: number): void {
    this.#streamBytes = pages * this.#opts.pageSize;
    if (this.#opts.streamBackground) return;
    const len = pagesFrameBytes(pages, this.#opts.pageSize);
    this.#pool.prefill(len, Math.ceil(BACKGROUND_AHEAD_BYTES / len) + 2);
  }

  /**
   * Opens and drops one connection to ourselves (no hello: it is not a session): fails if
   * the address does not take connections, and runs the accept path once before it counts.
   */
  async selfCheck(): Promise<void> {
    const ws = await FrameSocket.connect({ host: this.#opts.address, port: this.port, handshakeTimeoutMs: 5_000, maxPayload: 1 << 16, pool: this.#pool });
    ws.terminate();
  }

  get port(): number {
    return (this.#http.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const c of this.#wss.clients) c.terminate();
    for (const st of this.#streams) st.terminate();
    await new Promise<void>((r) => this.#wss.close(() => r()));
    await new Promise<void>((r) => this.#http.close(() => r()));
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const name = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    const path = (req.url ?? '/').split('?')[0];
    if (this.#opts.streamBackground && path === BACKGROUND_PATH && this.#stream(req, socket, head, name)) return;
    this.#wss.handleUpgrade(req, socket, head, (ws) => {
      const peer = wsPeer(ws, name);
      const session = this.#session(peer, null);
      ws.on('close', () => session.closed());
      ws.on('error', (err) => this.#log.warn('connection error', { peer: name, error: err.message }));
      ws.on('message', (data, isBinary) => session.message(isBinary && data instanceof Buffer ? data : null));
    });
  }

  /** Hands a background lane to a native PageStream; false when ws must take it instead. */
  #stream(req: IncomingMessage, socket: Duplex, head: Buffer, name: string): boolean {
    const r = upgradeResponse(req);
    if ('refusal' in r) {
      socket.end(`HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n${r.refusal}\n`);
      return true;
    }
    // Events come on later turns of the event loop, once `session` is set.
    let session: Session | null = null;
    const taken = streamPeer(socket, head, r.response, this.#streamBytes, name, {
      message: (data) => session?.message(data),
      problem: (e) => {
        const address = `0x${e.address.toString(16)}`;
        if (e.type === 'refused') this.#log.warn('request refused', { pid: e.pid, address, pages: e.pages });
        else this.#log.error('read failed', { pid: e.pid, address, error: e.error });
      },
      closed: (error) => {
        if (error) this.#log.warn('connection error', { peer: name, error });
        session?.closed();
      },
    });
    if (!taken) return false;
    this.#streams.add(taken.stream);
    session = this.#session(taken.peer, taken.stream);
    return true;
  }

  /**
   * The protocol on one connection: hello and token, then requests and `complete`.
   * `stream`: the native thread serving this connection's requests, told the ranges at welcome.
   */
  #session(peer: Peer, stream: PageStream | null): Session {
    const log = this.#log;
    const name = peer.name;
    let authed = false;
    const refuse = (reason: string): void => {
      this.#stats.refused++;
      log.warn('connection refused', { peer: name, reason });
      peer.send(encodeServer({ type: 'reject', reason }), () => peer.close(4001, reason.slice(0, 120)));
    };
    const timer = setTimeout(() => {
      if (!authed) refuse('no hello in time');
    }, HELLO_TIMEOUT_MS);
    const closed = (): void => {
      clearTimeout(timer);
      if (authed) log.info('session ended', { peer: name, completed: this.#completed });
    };
    const message = (data: Buffer | null): void => {
      if (data === null) return refuse('frames must be binary');
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
          if (!peer.open) return;
          this.#stats.sessions++;
          this.#cpu0 ??= process.cpuUsage();
          log.info('session started', { peer: name, ...(stream ? { streamed: true } : {}) });
          // Before the welcome: the destination sends no request until it has it.
          stream?.serve(this.#content!.ranges.flat(), MAX_REQUEST_PAGES);
          peer.send(encodeServer({ type: 'welcome', version: PROTOCOL_VERSION }));
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
          if (msg.priority === 'fault') return this.#serve(peer, msg);
          this.#background.push({ peer, m: msg });
          return this.#scheduleDrain();
        case 'complete':
          return void this.#complete(peer, content);
      }
    };
    return { message, closed };
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
      const { peer, m } = q[i]!;
      if (!peer.open) {
        q.splice(i--, 1);
        continue;
      }
      if (peer.bufferedAmount > BACKGROUND_AHEAD_BYTES) continue;
      q.splice(i, 1);
      this.#serve(peer, m);
      this.#scheduleDrain();
      return;
    }
  }

  /** A reply has left for the socket: a connection that was too far ahead may not be now. */
  readonly #sent = (): void => {
    if (this.#background.length > 0) this.#scheduleDrain();
  };

  #serve(peer: Peer, m: Request): void {
    this.#stats.requests++;
    const { pid, address, pages, id } = m;
    const content = this.#content!;
    if (pages > MAX_REQUEST_PAGES || !content.ranges.contains(pid, address, pages)) {
      const reason = `pid ${pid} 0x${address.toString(16)}+${pages} pages is not a lazy range of the dump`;
      this.#log.warn('request refused', { pid, address: `0x${address.toString(16)}`, pages });
      peer.send(encodeServer({ type: 'error', id, reason }), this.#sent);
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
      peer.send(encodeServer({ type: 'error', id, reason }), this.#sent);
      return;
    }
    // The frame goes to the socket as is (ws writes header and data with one writev); it is
    // reused once the socket is done with it.
    peer.send(frame, () => {
      this.#pool.release(frame);
      this.#sent();
    });
    this.#stats.pagesSent += pages;
    this.#stats.bytesSent += frame.length;
  }

  async #complete(peer: Peer, content: PageServerContent): Promise<void> {
    if (this.#completed) return;
    this.#completed = true;
    const cpu = process.cpuUsage(this.#cpu0 ?? undefined);
    // This whole process's CPU (every thread) since the first welcome: with few CPUs the
    // transfer is bound by it, and it is a steadier measure than the wall clock.
    this.#log.info('destination holds every page', { peer: peer.name, pages: this.stats.pagesSent, cpuMs: Math.round((cpu.user + cpu.system) / 1000) });
    try {
      await content.onComplete();
    } finally {
      peer.send(encodeServer({ type: 'bye' }), () => {
        void (async () => {
          try {
            await content.afterBye?.();
          } catch (err) {
            this.#log.error('cleanup after the session failed', { error: (err as Error).message });
          }
          this.#resolveDone();
        })();
      });
    }
  }
}
