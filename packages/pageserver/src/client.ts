/**
 * The destination side of the page protocol: a PageSource that fetches pages from the
 * page server. Two connections, one per priority lane, so a fault's reply never waits in a
 * socket buffer behind background data. Requests are pipelined; replies come in any order.
 * A dropped connection is reopened and its outstanding requests sent again, for a bounded
 * time; after that every request fails and `lost` resolves with the cause.
 *
 * Replies are received by FrameSocket straight into reused buffers: the page data a fetch
 * resolves with belongs to the client's pool, and the caller hands it back with release()
 * once it has installed it (a caller that never does just costs fresh allocations).
 *
 * With `installBackground` (and `installFaults`), the background (fault) lane's replies
 * never reach JS: once its hello is welcomed, the connection goes to a native receiver
 * (ReceiverSocket) that installs each reply into the target its request named
 * (fetchInstalled).
 */
import {
  silentLogger, type InstallTarget, type InstalledPages, type InstallingFetch, type Logger, type PageSource, type Priority,
} from '@lazymig/core-ts';
import { BufferPool } from './buffer-pool.js';
import { BACKGROUND_PATH, decodeServer, encodeClient, PROTOCOL_VERSION, type ServerMessage } from './protocol/messages.js';
import { ReceiverSocket } from './receiver-socket.js';
import { FrameSocket } from './ws-client.js';

export interface PageClientOptions {
  address: string;
  port: number;
  /**
   * The dump's token. A promise lets the connections be made while it is still on its way
   * (an armed destination waiting for the images): only the hello waits for it. A rejected
   * promise fails the connect.
   */
  token: string | Promise<string>;
  log?: Logger;
  /** How long to keep trying to (re)connect before giving up. Default 10 s. */
  retryForMs?: number;
  /** Page size of the dump (checks reply lengths). Default 4096. */
  pageSize?: number;
  /** Where reply frames are read into: one made (and prefilled) beforehand, or a fresh one. */
  pool?: BufferPool;
  /**
   * The background lane installs its replies itself, on a native thread: background pages
   * come through fetchInstalled, not fetch. Default false.
   */
  installBackground?: boolean;
  /** Largest background request in pages, with installBackground (its buffer is made at connect). Default 512. */
  maxBackgroundPages?: number;
  /**
   * The fault lane too installs its replies itself, on a native thread of its own: fault
   * pages come through fetchInstalled, not fetch. Needs installBackground. Default false.
   */
  installFaults?: boolean;
  /** Largest fault request in pages, with installFaults. Default 64. */
  maxFaultPages?: number;
}

export class PageServerError extends Error {
  override readonly name = 'PageServerError';
}

interface Asked {
  pid: number;
  address: number;
  pages: number;
  /** Expected data length (pages × page size). */
  bytes: number;
  reject: (err: Error) => void;
}

/** A request whose pages come back to JS, or one whose pages the lane's receiver installs. */
type Pending = Asked & (
  | { kind: 'data'; resolve: (data: Uint8Array) => void }
  | { kind: 'installed'; target: InstallTarget; resolve: (r: InstalledPages) => void }
);

const HEARTBEAT_MS = 500;
/**
 * A connection made before the token is known is replaced by a fresh one after this long
 * without it: the server drops a connection that has not said hello within 5 s.
 */
const TOKEN_WAIT_PER_CONNECTION_MS = 3_000;

/** Raised when the token promise rejects: nothing to retry. */
class NoToken extends Error {}

async function tokenWithin(token: string | Promise<string>, ms: number): Promise<string | null> {
  if (typeof token === 'string') return token;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      token.catch((err: Error) => {
        throw new NoToken(err.message);
      }),
      new Promise<null>((r) => (timer = setTimeout(() => r(null), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
/** Silence after which a connection counts as dead (a busy server still answers pings). */
const SILENCE_MS = 3_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Lane {
  ws: FrameSocket | ReceiverSocket | null = null;
  readonly pending = new Map<number, Pending>();
  #reconnecting: Promise<void> | null = null;
  #closed = false;
  #heartbeat: NodeJS.Timeout | null = null;
  onBye: (() => void) | null = null;

  constructor(
    readonly name: Priority,
    private readonly opts: PageClientOptions,
    private readonly log: Logger,
    private readonly fail: (err: Error) => void,
    private readonly pool: BufferPool,
    /** Hand the connection to a ReceiverSocket after the welcome, for replies of this many bytes at most. */
    private readonly installUpTo: number | null,
  ) {}

  /** Opens the connection and completes the hello; rejects with the server's reason on refusal. */
  async open(): Promise<void> {
    const { address, port } = this.opts;
    let ws: FrameSocket;
    let token: string | null;
    do {
      try {
        ws = await FrameSocket.connect({ host: address, port, path: this.name === 'background' ? BACKGROUND_PATH : '/', maxPayload: 64 << 20, handshakeTimeoutMs: 5_000, pool: this.pool });
      } catch (err) {
        throw new PageServerError(`page server ${address}:${port}: ${(err as Error).message}`);
      }
      try {
        token = await tokenWithin(this.opts.token, TOKEN_WAIT_PER_CONNECTION_MS);
      } catch (err) {
        ws.terminate();
        throw err;
      }
      if (token === null) ws.terminate();
    } while (token === null);
    await new Promise<void>((resolve, reject) => {
      ws.onClose = () => reject(new PageServerError(`page server ${address}:${port} closed the connection`));
      ws.onMessage = (data: Buffer) => {
        let m: ServerMessage;
        try {
          m = decodeServer(data);
        } catch (err) {
          return reject(err as Error);
        } finally {
          this.pool.release(data);
        }
        if (m.type === 'welcome') return resolve();
        if (m.type === 'reject') return reject(new PageServerError(`page server ${address}:${port} refused us: ${m.reason}`));
        reject(new PageServerError(`page server ${address}:${port}: unexpected ${m.type} before welcome`));
      };
      ws.send(encodeClient({ type: 'hello', version: PROTOCOL_VERSION, token: token! }));
    }).catch((err) => {
      ws.onClose = () => undefined;
      ws.terminate();
      throw err;
    });
    const conn = this.installUpTo === null ? ws : ReceiverSocket.take(ws, this.installUpTo, this.name);
    if (conn === null) {
      ws.terminate();
      throw new PageServerError(`page server ${address}:${port}: the ${this.name} connection cannot be handed to the native receiver`);
    }
    conn.onMessage = (data) => this.#onMessage(data);
    if (conn instanceof ReceiverSocket) {
      conn.onInstalled = ({ id, bytes, end }) => this.#installed(id, { bytes, end });
      conn.onBadReply = (id, error) => this.#installed(id, new PageServerError(error));
    }
    conn.onClose = (err) => {
      // Once we closed the lane (the migration is over), a reset while closing is no news.
      if (err && !this.#closed && !/closed by the server \(1000|connection closed|terminated/.test(err.message)) {
        this.log.warn('connection error', { lane: this.name, error: err.message });
      }
      if (this.ws === conn) this.ws = null;
      if (!this.#closed) void this.reconnect();
    };
    this.ws = conn;
    // A connection can die without a FIN (the network goes away): ping, and drop a connection
    // that has been silent too long, so reconnecting (and, in the end, giving up) starts.
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = setInterval(() => {
      const w = this.ws;
      if (!w) return;
      const silentMs = w.silentMs;
      if (silentMs > SILENCE_MS) {
        this.log.warn('page server silent, dropping the connection', { lane: this.name, silentMs: Math.round(silentMs) });
        w.terminate();
      } else w.ping();
    }, HEARTBEAT_MS);
    this.#heartbeat.unref();
  }

  #onMessage(data: Buffer): void {
    let m: ServerMessage;
    try {
      m = decodeServer(data);
    } catch (err) {
      this.pool.release(data);
      this.log.error('bad frame from page server', { lane: this.name, error: (err as Error).message });
      this.ws?.terminate();
      return;
    }
    // Only a matching pages reply keeps the buffer (its data is a view into it).
    if (m.type !== 'pages') this.pool.release(data);
    switch (m.type) {
      case 'pages': {
        const p = this.#settle(m.id);
        if (!p) return this.pool.release(data);
        // An installed request's reply reaches JS only if the receiver could not read it as one.
        if (p.kind !== 'data' || m.pid !== p.pid || m.address !== p.address || m.pages !== p.pages || m.data.length !== p.bytes) {
          if (this.ws instanceof ReceiverSocket) this.ws.cancel(m.id);
          this.pool.release(data);
          p.reject(new PageServerError(`reply ${m.id} does not match its request`));
          return;
        }
        p.resolve(m.data);
        return;
      }
      case 'error': {
        const p = this.#settle(m.id);
        if (!p) return;
        if (this.ws instanceof ReceiverSocket) this.ws.cancel(m.id);
        p.reject(new PageServerError(`page server: ${m.reason}`));
        return;
      }
      case 'bye':
        this.onBye?.();
        return;
      case 'reject':
        this.fail(new PageServerError(`page server refused us: ${m.reason}`));
        return;
      case 'welcome':
        return;
    }
  }

  /** The pending request `id`, taken out. */
  #settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (p) this.pending.delete(id);
    return p;
  }

  /** The receiver is done with request `id` (only installed requests are registered with it). */
  #installed(id: number, outcome: InstalledPages | Error): void {
    const p = this.#settle(id);
    if (p?.kind !== 'installed') return;
    if (outcome instanceof Error) p.reject(outcome);
    else p.resolve(outcome);
  }

  send(id: number, p: Pending): void {
    this.pending.set(id, p);
    // Without a connection the request waits in `pending`; reconnect() sends it.
    if (this.ws) this.#write(this.ws, id, p);
  }

  #write(ws: FrameSocket | ReceiverSocket, id: number, p: Pending): void {
    const payload = encodeClient({ type: 'request', id, pid: p.pid, address: p.address, pages: p.pages, priority: this.name });
    if (p.kind === 'data') return ws.send(payload);
    if (ws instanceof ReceiverSocket) {
      // Corked at the first request of a hold, not at the hold: a burst of faults that sends
      // nothing costs no syscall.
      if (this.#holding && this.#corked !== ws) {
        ws.hold(true);
        this.#corked = ws;
      }
      return ws.request(id, p.pid, p.address, p.pages, p.target, payload);
    }
    this.#settle(id);
    p.reject(new PageServerError('this lane does not install pages'));
  }

  /** Bytes [offset, offset + len) of request id's pages are in already. */
  present(id: number, offset: number, len: number): void {
    if (this.ws instanceof ReceiverSocket && this.pending.has(id)) this.ws.present(id, offset, len);
  }

  /** While true, requests stay in the socket until hold(false) sends them together (PageClient.hold). */
  #holding = false;
  /** The socket corked during this hold, once a request was written to it. */
  #corked: ReceiverSocket | null = null;

  hold(on: boolean): void {
    this.#holding = on;
    if (!on && this.#corked) {
      this.#corked.hold(false);
      this.#corked = null;
    }
  }

  /** Installs bytes [offset, offset + len) of request id's pages now, if they have arrived. */
  installNow(id: number, offset: number, len: number): boolean {
    return this.ws instanceof ReceiverSocket && this.pending.has(id) && this.ws.installNow(id, offset, len) === 'installed';
  }

  reconnect(): Promise<void> {
    this.#reconnecting ??= (async () => {
      const deadline = performance.now() + (this.opts.retryForMs ?? 10_000);
      let delay = 50;
      let lastErr: Error = new PageServerError('connection lost');
      this.log.warn('connection lost, reconnecting', { lane: this.name, outstanding: this.pending.size });
      while (!this.#closed && performance.now() < deadline) {
        try {
          await this.open();
          this.log.info('reconnected', { lane: this.name, resending: this.pending.size });
          for (const [id, p] of this.pending) if (this.ws) this.#write(this.ws, id, p);
          return;
        } catch (err) {
          lastErr = err as Error;
          if (/refused us/.test(lastErr.message) || lastErr instanceof NoToken) break;
          await sleep(delay);
          delay = Math.min(delay * 2, 1_000);
        }
      }
      if (!this.#closed) this.fail(new PageServerError(`page server unreachable: ${lastErr.message}`));
    })().finally(() => (this.#reconnecting = null));
    return this.#reconnecting;
  }

  close(): void {
    this.#closed = true;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    this.ws?.close();
    this.ws = null;
  }

  rejectAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

export class PageClient implements PageSource {
  /** pagesInstalled: of pagesReceived, those the background lane's receiver reported in (installed by it, or there already). */
  readonly stats = { requests: 0, pagesReceived: 0, bytesReceived: 0, pagesInstalled: 0 };
  readonly #lanes: Record<Priority, Lane>;
  readonly #pool: BufferPool;
  readonly #pageSize: number;
  #nextId = 1;
  #failure: Error | null = null;
  #onLost!: (err: Error) => void;
  /** Resolves (never rejects) with the cause when the page server is gone for good. */
  readonly lost: Promise<Error>;

  private constructor(opts: PageClientOptions) {
    const log = opts.log ?? silentLogger;
    this.#pageSize = opts.pageSize ?? 4096;
    this.#pool = opts.pool ?? new BufferPool();
    this.lost = new Promise((r) => (this.#onLost = r));
    const fail = (err: Error): void => {
      if (this.#failure) return;
      this.#failure = err;
      log.error('page server lost', { error: err.message });
      for (const l of Object.values(this.#lanes)) {
        l.close();
        l.rejectAll(err);
      }
      this.#onLost(err);
    };
    if (opts.installFaults && !opts.installBackground) throw new PageServerError('installFaults needs installBackground');
    this.#lanes = {
      fault: new Lane('fault', opts, log, fail, this.#pool, opts.installFaults ? (opts.maxFaultPages ?? 64) * this.#pageSize : null),
      background: new Lane('background', opts, log, fail, this.#pool, opts.installBackground ? (opts.maxBackgroundPages ?? 512) * this.#pageSize : null),
    };
    if (opts.installBackground) {
      this.installedLanes = new Set<Priority>(opts.installFaults ? ['background', 'fault'] : ['background']);
      this.fetchInstalled = (pid, address, pages, into, priority) => this.#fetchInstalled(pid, address, pages, into, priority);
    }
  }

  /**
   * Opens both lanes. A page server that does not answer yet (a dump still writing or
   * checking its images; a destination armed before the dump) is tried again for
   * `retryForMs`; a refusal (wrong token or version) is final.
   */
  static async connect(opts: PageClientOptions): Promise<PageClient> {
    const deadline = performance.now() + (opts.retryForMs ?? 10_000);
    // Short steps: an armed destination waits here for a dump about to start, and a refused
    // connect on a local network costs next to nothing.
    for (let delay = 5; ; delay = Math.min(delay * 2, 20)) {
      const c = new PageClient(opts);
      try {
        await Promise.all([c.#lanes.fault.open(), c.#lanes.background.open()]);
        return c;
      } catch (err) {
        c.#lanes.fault.close();
        c.#lanes.background.close();
        if (/refused us/.test((err as Error).message) || err instanceof NoToken || performance.now() + delay > deadline) throw err;
        await sleep(delay);
      }
    }
  }

  /** Present with installBackground (PageSource.fetchInstalled): pages of the installedLanes installed as they arrive. */
  readonly fetchInstalled?: (pid: number, address: number, pages: number, into: InstallTarget, priority: Priority) => InstallingFetch;
  readonly installedLanes?: ReadonlySet<Priority>;

  /** PageSource.hold: requests on either lane leave together at the matching flush. */
  hold(): void {
    this.#lanes.fault.hold(true);
    this.#lanes.background.hold(true);
  }

  flush(): void {
    this.#lanes.fault.hold(false);
    this.#lanes.background.hold(false);
  }

  fetch(pid: number, address: number, pages: number, priority: Priority): Promise<Uint8Array> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (this.installedLanes?.has(priority)) {
      return Promise.reject(new PageServerError(`the ${priority} lane installs its pages itself: use fetchInstalled`));
    }
    const id = this.#nextId++;
    this.stats.requests++;
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#lanes[priority].send(id, {
        kind: 'data',
        pid,
        address,
        pages,
        bytes: pages * this.#pageSize,
        resolve: (data) => {
          this.stats.pagesReceived += pages;
          this.stats.bytesReceived += data.length;
          resolve(data);
        },
        reject,
      });
    });
  }

  #fetchInstalled(pid: number, address: number, pages: number, into: InstallTarget, priority: Priority): InstallingFetch {
    const lane = this.#lanes[priority];
    const id = this.#nextId++;
    this.stats.requests++;
    const done = this.#failure
      ? Promise.reject(this.#failure)
      : new Promise<InstalledPages>((resolve, reject) => {
        lane.send(id, {
          kind: 'installed',
          pid,
          address,
          pages,
          bytes: pages * this.#pageSize,
          target: into,
          resolve: (r) => {
            this.stats.pagesReceived += pages;
            this.stats.bytesReceived += pages * this.#pageSize;
            this.stats.pagesInstalled += r.bytes / this.#pageSize;
            resolve(r);
          },
          reject,
        });
      });
    return { done, present: (offset, len) => lane.present(id, offset, len), installNow: (offset, len) => lane.installNow(id, offset, len) };
  }

  /** Gives back the data of a fetch once it is no longer used: its buffer is reused. */
  release(data: Uint8Array): void {
    this.#pool.release(data);
  }

  async complete(): Promise<void> {
    if (this.#failure) throw this.#failure;
    const lane = this.#lanes.fault;
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new PageServerError('page server did not confirm completion')), 10_000);
      lane.onBye = () => {
        clearTimeout(timer);
        // The server closes both connections next: that is the end, not a loss.
        for (const l of Object.values(this.#lanes)) l.close();
        resolve();
      };
      if (!lane.ws) return reject(new PageServerError('page server connection is down'));
      lane.ws.send(encodeClient({ type: 'complete' }));
    });
  }

  async close(): Promise<void> {
    for (const l of Object.values(this.#lanes)) l.close();
  }
}
