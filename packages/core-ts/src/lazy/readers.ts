/** PageReaders for the page server: straight from a frozen process, or from images on disk. */
import { processVmRead } from '@lazymig/uffd-rs';
import type { PagesReader } from '../image/index.js';
import type { PageReader } from './page-source.js';

/** Reads a frozen process's memory with process_vm_readv (on the source, dumped pid = live pid). */
export class FrozenProcessReader implements PageReader {
  readonly #range = new Float64Array(2);

  readInto(pid: number, address: number, out: Uint8Array): void {
    this.#range[0] = address;
    this.#range[1] = out.length;
    processVmRead(pid, this.#range, out);
  }
}

/** Serves the present pages of an images directory (`lazymig page-server --images-dir`). */
export class ImagesReader implements PageReader {
  constructor(private readonly readers: ReadonlyMap<number, PagesReader>) {}

  readInto(pid: number, address: number, out: Uint8Array): void {
    const r = this.readers.get(pid);
    if (!r) throw new Error(`pid ${pid} is not in the images`);
    const into = Buffer.from(out.buffer, out.byteOffset, out.length);
    r.readSync(address, out.length / r.pageSize, into);
  }
}
