/**
 * The destination side of the page protocol: a PageSource that fetches pages from the
 * page server. Two connections, one per priority lane, so a fault's reply never waits in a
 * socket buffer behind background data. Requests are pipelined; replies come in any order.
 * A dropped connection is reopened and its outstanding requests sent again, for a bounded
 * time; after that every request fails and `lost` resolves with the cause.
 */
import WebSocket from 'ws';
import { silentLogger, type Logger, type PageSource, type Priority } from '@lazymig/core-ts';
import { decodeServer, encodeClient, PROTOCOL_VERSION, type ServerMessage } from './protocol/messages.js';

export interface PageClientOptions {
  address: string;
  port: number;
  token: string;
  log?: Logger;
  /** How long to keep trying to (re)connect before giving up. Default 10 s. */
  retryForMs?: number;
}

export class PageServerError extends Error {
  override readonly name = 'PageServerError';
}

interface Pending {
  pid: number;
  address: number;
  pages: number;
  resolve: (data: Uint8Array) => void;
  reject: (err: Error) => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Lane {
  ws: WebSocket | null = null;
  readonly pending = new Map<number, Pending>();
  #reconnecting: Promise<void> | null = null;
  #closed = false;
  onBye: (() => void) | null = null;

  constructor(
    readonly name: Priority,
    private readonly opts: PageClientOptions,
    private readonly log: Logger,
    private readonly fail: (err: Error) => void,
  ) {}

  /** Opens the connection and completes the hello; rejects with the server's reason on refusal. */
  async open(): Promise<void> {
    const { address, port, token } = this.opts;
    const host = address.includes(':') ? `[${address}]` : address;
    const ws = new WebSocket(`ws://${host}:${port}/`, { perMessageDeflate: false, maxPayload: 64 << 20, handshakeTimeout: 5_000 });
    ws.binaryType = 'nodebuffer';
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error): void => reject(new PageServerError(`page server ${address}:${port}: ${err.message}`));
      ws.once('error', onError);
      ws.once('close', () => reject(new PageServerError(`page server ${address}:${port} closed the connection`)));
      ws.once('open', () => ws.send(encodeClient({ type: 'hello', version: PROTOCOL_VERSION, token })));
      ws.once('message', (data: Buffer) => {
        ws.off('error', onError);
        ws.removeAllListeners('close');
        let m: ServerMessage;
        try {
          m = decodeServer(data);
        } catch (err) {
          return reject(err as Error);
        }
        if (m.type === 'welcome') return resolve();
        if (m.type === 'reject') return reject(new PageServerError(`page server ${address}:${port} refused us: ${m.reason}`));
        reject(new PageServerError(`page server ${address}:${port}: unexpected ${m.type} before welcome`));
      });
    }).catch((err) => {
      ws.terminate();
      throw err;
    });
    ws.on('message', (data: Buffer) => this.#onMessage(data));
    ws.on('error', (err) => this.log.warn('connection error', { lane: this.name, error: err.message }));
    ws.on('close', () => {
      if (this.ws === ws) this.ws = null;
      if (!this.#closed) void this.reconnect();
    });
    this.ws = ws;
  }

  #onMessage(data: Buffer): void {
    let m: ServerMessage;
    try {
      m = decodeServer(data);
    } catch (err) {
      this.log.error('bad frame from page server', { lane: this.name, error: (err as Error).message });
      this.ws?.terminate();
      return;
    }
    switch (m.type) {
      case 'pages': {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.pid !== p.pid || m.address !== p.address || m.pages !== p.pages) {
          p.reject(new PageServerError(`reply ${m.id} does not match its request`));
          return;
        }
        p.resolve(m.data);
        return;
      }
      case 'error': {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
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

  send(id: number, p: Pending): void {
    this.pending.set(id, p);
    this.ws?.send(encodeClient({ type: 'request', id, pid: p.pid, address: p.address, pages: p.pages, priority: this.name }));
    // Without a connection the request waits in `pending`; reconnect() sends it.
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
          for (const [id, p] of this.pending) {
            this.ws?.send(encodeClient({ type: 'request', id, pid: p.pid, address: p.address, pages: p.pages, priority: this.name }));
          }
          return;
        } catch (err) {
          lastErr = err as Error;
          if (/refused us/.test(lastErr.message)) break;
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
    this.ws?.close();
    this.ws = null;
  }

  rejectAll(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }
}

export class PageClient implements PageSource {
  readonly stats = { requests: 0, pagesReceived: 0, bytesReceived: 0 };
  readonly #lanes: Record<Priority, Lane>;
  #nextId = 1;
  #failure: Error | null = null;
  #onLost!: (err: Error) => void;
  /** Resolves (never rejects) with the cause when the page server is gone for good. */
  readonly lost: Promise<Error>;

  private constructor(opts: PageClientOptions) {
    const log = opts.log ?? silentLogger;
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
    this.#lanes = { fault: new Lane('fault', opts, log, fail), background: new Lane('background', opts, log, fail) };
  }

  static async connect(opts: PageClientOptions): Promise<PageClient> {
    const c = new PageClient(opts);
    try {
      await Promise.all([c.#lanes.fault.open(), c.#lanes.background.open()]);
    } catch (err) {
      c.#lanes.fault.close();
      c.#lanes.background.close();
      throw err;
    }
    return c;
  }

  fetch(pid: number, address: number, pages: number, priority: Priority): Promise<Uint8Array> {
    if (this.#failure) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    this.stats.requests++;
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#lanes[priority].send(id, {
        pid,
        address,
        pages,
        resolve: (data) => {
          this.stats.pagesReceived += pages;
          this.stats.bytesReceived += data.length;
          resolve(data);
        },
        reject,
      });
    });
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
