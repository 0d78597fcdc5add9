/** A PageSource over local images: `lazy-pages` without --page-server. */
import type { PagesReader } from '../image/index.js';
import type { PageSource } from './page-source.js';

export class ImagesPageSource implements PageSource {
  constructor(private readonly readers: ReadonlyMap<number, PagesReader>) {}

  async fetch(pid: number, address: number, pages: number): Promise<Uint8Array> {
    const r = this.readers.get(pid);
    if (!r) throw new Error(`pid ${pid} is not in the images`);
    return r.read(address, pages);
  }

  async complete(): Promise<void> {}

  async close(): Promise<void> {
    for (const r of this.readers.values()) await r.close();
  }
}
