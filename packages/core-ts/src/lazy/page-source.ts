/**
 * Where lazy pages come from, seen from the two ends.
 *
 * On the destination the lazy-pages engine asks a PageSource (the network client, or the
 * local images) for pages and tells it when every page is in. On the source the page
 * server answers from a PageReader (the frozen process itself, or images on disk).
 */
import type { BackgroundEnd, InstallTarget } from '@lazymig/uffd-rs';

export type Priority = 'fault' | 'background';

export interface PageSource {
  /**
   * Pages [address, address + pages·P) of the dumped process `pid`. Fault requests
   * overtake background ones. The returned bytes may be a view into a larger buffer.
   */
  fetch(pid: number, address: number, pages: number, priority: Priority): Promise<Uint8Array>;
  /**
   * Optional: the caller is done with data a fetch returned (it has been installed), so
   * the source may reuse its buffer. Nothing may read the data afterwards.
   */
  release?(data: Uint8Array): void;
  /**
   * Optional, and present only on a source that can: pages fetched and installed by the
   * source itself, on its own threads, into `into` (see FaultLoop.installTarget), so that
   * their bytes never reach the JS thread. For the lanes in `installedLanes` only (fetch
   * serves the others).
   */
  readonly fetchInstalled?: (pid: number, address: number, pages: number, into: InstallTarget, priority: Priority) => InstallingFetch;
  /** The lanes fetchInstalled serves. */
  readonly installedLanes?: ReadonlySet<Priority>;
  /**
   * Optional: requests made from `hold` until `flush` may leave together, one send per
   * connection rather than one per request (a burst of faults: over loopback each send
   * costs the sender the receiving side's processing).
   */
  hold?(): void;
  flush?(): void;
  /** Every page is in: the source may drop the frozen tree. */
  complete(): Promise<void>;
  close(): Promise<void>;
}

export interface PageReader {
  /** Fills `out` with the pages at address of pid; throws naming pid and address on failure. */
  readInto(pid: number, address: number, out: Uint8Array): void;
}

/** How a fetchInstalled ended: `bytes` from the start of its pages are in; `end` says why not all (BackgroundInstaller's ends). */
export interface InstalledPages {
  bytes: number;
  end: BackgroundEnd;
}

export interface InstallingFetch {
  /** Rejects when the pages cannot be had at all (the source is lost, or refused them). */
  readonly done: Promise<InstalledPages>;
  /**
   * Bytes [offset, offset + len) (whole pages) of these pages are in the process already
   * (installed for a fault): the install passes over them. Name only what is truly in.
   */
  present(offset: number, len: number): void;
  /**
   * Installs bytes [offset, offset + len) (whole pages) of these pages now, on the calling
   * thread, if they have arrived and wait to be installed: true when they are in. False
   * when they have not arrived, or when an event about them was read since they were asked for.
   */
  installNow(offset: number, len: number): boolean;
}
