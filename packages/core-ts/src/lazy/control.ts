/**
 * The work-dir socket between `restore --lazy-pages` and the `lazy-pages` daemon
 * (lazy-pages.socket, as CRIU names it). Restore sends one message per process, with the
 * process's userfaultfd attached (SCM_RIGHTS), and waits for the daemon's ack before it lets
 * the process run; then it says that every process was sent.
 */
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { closeFd, unixSocket, UnixSocketServer } from '@lazymig/uffd-rs';

export const CONTROL_SOCKET = 'lazy-pages.socket';
/**
 * Written by the daemon when every page of the listed processes is in, before it closes the
 * socket: a guard that comes too late to be told (a small process can migrate before its
 * guard connects) reads it instead of mistaking the daemon's exit for its death. The guard
 * (guard/guard.c) reads this file and speaks this protocol in C: keep the two in step.
 */
export const COMPLETE_FILE = 'lazy-pages.complete';

export function completeFilePath(workDir: string): string {
  return join(workDir, COMPLETE_FILE);
}

export function writeCompletion(workDir: string, pids: readonly number[]): void {
  writeFileSync(completeFilePath(workDir), JSON.stringify({ pids }) + '\n', { mode: 0o600 });
}

export function clearCompletion(workDir: string): void {
  rmSync(completeFilePath(workDir), { force: true });
}

export type ControlMessage =
  | { type: 'process'; pid: number; sourcePid: number }
  | { type: 'all-sent'; processes: number }
  | { type: 'ack'; pid: number }
  | { type: 'error'; reason: string }
  /** A guard watches the daemon: told 'complete' when every page is in. */
  | { type: 'guard' }
  | { type: 'complete' };

export function controlSocketPath(workDir: string): string {
  return join(workDir, CONTROL_SOCKET);
}

function encode(m: ControlMessage): Buffer {
  return Buffer.from(JSON.stringify(m));
}

function decode(payload: Buffer): ControlMessage {
  const m = JSON.parse(payload.toString('utf8')) as ControlMessage;
  if (typeof m !== 'object' || m === null || typeof m.type !== 'string') throw new Error('bad control message');
  return m;
}

/** Restore's end. */
export class ControlClient {
  private constructor(private readonly fd: number, private readonly path: string) {}

  static connect(workDir: string, timeoutMs = 5_000): ControlClient {
    const path = controlSocketPath(workDir);
    try {
      return new ControlClient(unixSocket.connect(path, timeoutMs), path);
    } catch (err) {
      throw new Error(`cannot reach the lazy-pages daemon at ${path} (is 'lazymig lazy-pages' running?): ${(err as Error).message}`);
    }
  }

  #reply(timeoutMs: number): ControlMessage {
    const m = unixSocket.recv(this.fd, 4096, timeoutMs);
    if (m === null) throw new Error(`the lazy-pages daemon at ${this.path} went away`);
    return decode(m.payload);
  }

  /** Hands over a process's userfaultfd and waits until the daemon holds it. */
  sendProcess(pid: number, sourcePid: number, uffd: number, timeoutMs = 10_000): void {
    unixSocket.send(this.fd, encode({ type: 'process', pid, sourcePid }), [uffd]);
    const r = this.#reply(timeoutMs);
    if (r.type === 'error') throw new Error(`lazy-pages daemon refused pid ${pid}: ${r.reason}`);
    if (r.type !== 'ack' || r.pid !== pid) throw new Error(`lazy-pages daemon: unexpected reply ${JSON.stringify(r)}`);
  }

  allSent(processes: number): void {
    unixSocket.send(this.fd, encode({ type: 'all-sent', processes }));
  }

  close(): void {
    closeFd(this.fd);
  }
}

export interface ControlHandlers {
  /**
   * Must adopt `uffd` (or close it); the ack goes out when it returns or its promise
   * resolves. Throwing (or rejecting) refuses the process.
   */
  onProcess(pid: number, sourcePid: number, uffd: number): void | Promise<void>;
  onAllSent(processes: number): void;
  /** A guard connected; tell it `complete` through `notify` once every page is in. */
  onGuard(notify: () => void): void;
  /** A restore handed over processes, then went away without saying that it was done. */
  onAbandoned(processes: number): void;
}

/** The daemon's end. */
export function serveControl(workDir: string, h: ControlHandlers): UnixSocketServer {
  // Processes handed over per restore connection, until it says all-sent. A connection's fd
  // number can be reused once it closes: `live` tells a reply whether its asker is still there.
  const unfinished = new Map<number, number>();
  const live = new Map<number, object>();
  const send = (connFd: number, m: ControlMessage): void => unixSocket.send(connFd, encode(m));
  return new UnixSocketServer(controlSocketPath(workDir), (msg) => {
    const conn = msg.connFd;
    if ('closed' in msg) {
      live.delete(conn);
      const n = unfinished.get(conn);
      unfinished.delete(conn);
      if (n !== undefined) h.onAbandoned(n);
      return;
    }
    let asker = live.get(conn);
    if (!asker) live.set(conn, (asker = {}));
    const refuse = (err: unknown): void => {
      for (const fd of msg.fds) {
        try {
          closeFd(fd);
        } catch {
          /* already adopted */
        }
      }
      if (live.get(conn) === asker) send(conn, { type: 'error', reason: (err as Error).message });
    };
    try {
      const m = decode(msg.payload);
      if (m.type === 'process') {
        const fd = msg.fds[0];
        for (const extra of msg.fds.slice(1)) closeFd(extra);
        if (fd === undefined) throw new Error(`no userfaultfd came with pid ${m.pid}`);
        // Counted at once: a restore that goes away while the daemon is still getting ready
        // has handed this process over too.
        unfinished.set(conn, (unfinished.get(conn) ?? 0) + 1);
        void Promise.resolve()
          .then(() => h.onProcess(m.pid, m.sourcePid, fd))
          .then(
            () => {
              if (live.get(conn) === asker) send(conn, { type: 'ack', pid: m.pid });
            },
            (err: unknown) => {
              if (live.get(conn) === asker) {
                const n = (unfinished.get(conn) ?? 1) - 1;
                if (n > 0) unfinished.set(conn, n);
                else unfinished.delete(conn);
              }
              refuse(err);
            },
          );
      } else if (m.type === 'all-sent') {
        unfinished.delete(conn);
        h.onAllSent(m.processes);
      } else if (m.type === 'guard') {
        h.onGuard(() => {
          try {
            if (live.get(conn) === asker) send(conn, { type: 'complete' });
          } catch {
            /* the guard went away: nothing to tell */
          }
        });
      } else throw new Error(`unexpected ${m.type}`);
    } catch (err) {
      refuse(err);
    }
  });
}
