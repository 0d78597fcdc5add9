/**
 * Where lazy pages come from, seen from the two ends.
 *
 * On the destination the lazy-pages engine asks a PageSource (the network client, or the
 * local images) for pages and tells it when every page is in. On the source the page
 * server answers from a PageReader (the frozen process itself, or images on disk).
 */
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
  /** Every page is in: the source may drop the frozen tree. */
  complete(): Promise<void>;
  close(): Promise<void>;
}

export interface PageReader {
  /** Fills `out` with the pages at address of pid; throws naming pid and address on failure. */
  readInto(pid: number, address: number, out: Uint8Array): void;
}
