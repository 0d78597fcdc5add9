/**
 * A lane's connection once its hello was welcomed, when its replies are installed as they
 * arrive: the FrameSocket's TCP connection handed to uffd-rs's PageReceiver, whose threads
 * read each reply's pages and install them into the target its request named (see
 * page_receiver.rs for why). JS hears once per reply, and gets every other frame (error,
 * bye, reject) as a FrameSocket would hand it over.
 */
import { PageReceiver, type InstallTarget, type PageReceiverEvent, type Priority } from '@lazymig/core-ts';
import type { FrameSocket } from './ws-client.js';

type Installed = Extract<PageReceiverEvent, { type: 'installed' }>;

export class ReceiverSocket {
  /** A binary frame that is not a reply to a registered request. */
  onMessage: (data: Buffer) => void = () => undefined;
  /** The reply to request `id` is dealt with. */
  onInstalled: (e: Installed) => void = () => undefined;
  /** The reply to request `id` does not match it; nothing of it was installed. */
  onBadReply: (id: number, error: string) => void = () => undefined;
  /** The connection is gone (once). */
  onClose: (err?: Error) => void = () => undefined;

  readonly #r: PageReceiver;
  /** Why a write failed, when that is what ended the connection. */
  #writeError: Error | undefined;

  private constructor(fd: number, head: Buffer, maxBytes: number, lane: Priority) {
    this.#r = new PageReceiver(fd, head, maxBytes, (e) => {
      switch (e.type) {
        case 'installed':
          return this.onInstalled(e);
        case 'bad-reply':
          return this.onBadReply(e.id, e.error);
        case 'message':
          return this.onMessage(Buffer.from(e.data.buffer, e.data.byteOffset, e.data.length));
        case 'closed':
          return this.onClose(e.error === undefined ? this.#writeError : new Error(e.error));
      }
    }, lane);
  }

  /**
   * Takes ws's connection over (null: it cannot be handed over). `maxBytes`: the largest
   * reply's pages. `lane`: which lane it carries (PageReceiver's threads differ).
   */
  static take(ws: FrameSocket, maxBytes: number, lane: Priority): ReceiverSocket | null {
    const d = ws.detach();
    if (d === null) return null;
    try {
      return new ReceiverSocket(d.fd, d.head, maxBytes, lane);
    } finally {
      d.release();
    }
  }

  get silentMs(): number {
    return this.#r.state.silentMs;
  }

  /**
   * Sends request `payload` for request `id`, whose pages go to `target`. A connection
   * that cannot take it is ended: the lane reconnects and asks again.
   */
  request(id: number, pid: number, address: number, pages: number, target: InstallTarget, payload: Uint8Array): void {
    this.#write(() => this.#r.request(id, pid, address, pages, target, payload));
  }

  present(id: number, offset: number, len: number): void {
    this.#r.present(id, offset, len);
  }

  /** See PageReceiver.installNow. */
  installNow(id: number, offset: number, len: number): ReturnType<PageReceiver['installNow']> {
    return this.#r.installNow(id, offset, len);
  }

  cancel(id: number): void {
    this.#r.cancel(id);
  }

  send(data: Uint8Array): void {
    this.#write(() => this.#r.send(data));
  }

  ping(): void {
    this.#write(() => this.#r.ping());
  }

  /** See PageReceiver.hold: true holds the frames written from now on, false sends them. */
  hold(on: boolean): void {
    this.#write(() => this.#r.hold(on));
  }

  close(): void {
    this.#r.close(1000);
  }

  terminate(): void {
    this.#r.terminate();
  }

  #write(op: () => void): void {
    if (this.#r.closed) return;
    try {
      op();
    } catch (err) {
      // The closed event follows; it names this as the cause.
      this.#writeError ??= err as Error;
      this.#r.terminate();
    }
  }
}
