/**
 * Framing of the msgpack image files (inventory, core, pagemap):
 *
 *   0  "LZMG"            magic
 *   4  kind, 4 ASCII     "INVT" | "CORE" | "PMAP"  ("PAGE" is the pages file, see pages.ts)
 *   8  u16 LE            format version
 *  10  u16 LE            reserved, 0
 *  12  u32 LE            payload length N
 *  16  N bytes           msgpack payload: exactly one value
 *  16+N u32 LE           CRC32C of bytes [0, 16+N)
 */
import { Packr, Unpackr } from 'msgpackr';
import { crc32c } from './crc32c.js';
import { FieldError, ImageError } from './errors.js';
import { FORMAT_VERSION, type CoreImage, type Inventory, type Pagemap } from './types.js';
import { decodeCore, decodeInventory, decodePagemap, normalizePagemap, pagemapToWire } from './validate.js';

export const MAGIC = Buffer.from('LZMG', 'latin1');
export const HEADER_SIZE = 16;
export const TRAILER_SIZE = 4;
/** The largest msgpack image file read into memory (hostile sizes are refused before reading). */
export const MAX_MSGPACK_FILE = 1 << 30;

export type MsgpackKind = 'inventory' | 'core' | 'pagemap';
export type ImageKind = MsgpackKind | 'pages';

export const KIND_TAGS: Record<ImageKind, string> = { inventory: 'INVT', core: 'CORE', pagemap: 'PMAP', pages: 'PAGE' };
const TAG_KINDS = new Map<string, ImageKind>(Object.entries(KIND_TAGS).map(([k, t]) => [t, k as ImageKind]));

const packr = new Packr({ useRecords: false, moreTypes: false, structuredClone: false, bundleStrings: false });
const unpackr = new Unpackr({ useRecords: false, moreTypes: false, structuredClone: false, mapsAsObjects: true, int64AsType: 'bigint' });

export function kindOfTag(tag: string): ImageKind | undefined {
  return TAG_KINDS.get(tag);
}

/** First check of any image file: does it start with the lazymig magic? */
export function checkMagic(file: string, head: Uint8Array): void {
  const b = Buffer.from(head.buffer, head.byteOffset, head.length);
  const n = Math.min(b.length, 4);
  if (n === 0) throw new ImageError(file, 'empty file', 'truncated');
  if (!b.subarray(0, n).equals(MAGIC.subarray(0, n)))
    throw new ImageError(file, `not a lazymig image: bad magic ${JSON.stringify(b.subarray(0, 4).toString('latin1'))} (expected "LZMG")`, 'bad-magic');
  if (b.length < 12) throw new ImageError(file, `truncated: ${b.length} bytes, shorter than the image header`, 'truncated');
}

/**
 * Check kind and version (bytes 4..10). Called once the checksum is known good, so that a
 * corrupted version field reads as corruption, not as "newer version". The preamble (magic,
 * kind, version) and the checksum trailer are frozen across format versions.
 */
export function checkKindVersion(file: string, head: Uint8Array, expected: ImageKind | undefined): { kind: ImageKind; version: number } {
  const b = Buffer.from(head.buffer, head.byteOffset, head.length);
  const tag = b.subarray(4, 8).toString('latin1');
  const kind = kindOfTag(tag);
  if (kind === undefined) throw new ImageError(file, `unknown image kind ${JSON.stringify(tag)}`, 'bad-magic');
  if (expected !== undefined && kind !== expected)
    throw new ImageError(file, `wrong kind of image: expected ${expected} (${KIND_TAGS[expected]}), found ${kind} (${tag})`, 'wrong-kind');
  const version = b.readUInt16LE(8);
  if (version > FORMAT_VERSION)
    throw new ImageError(file, `written by a newer lazymig: format version ${version}, this lazymig reads up to ${FORMAT_VERSION}`, 'newer-version');
  if (version === 0) throw new ImageError(file, 'format version 0 is invalid', 'malformed');
  return { kind, version };
}

export function frame(kind: MsgpackKind, payload: unknown): Buffer {
  const body = packr.pack(payload);
  const out = Buffer.alloc(HEADER_SIZE + body.length + TRAILER_SIZE);
  MAGIC.copy(out, 0);
  out.write(KIND_TAGS[kind], 4, 'latin1');
  out.writeUInt16LE(FORMAT_VERSION, 8);
  out.writeUInt16LE(0, 10);
  out.writeUInt32LE(body.length, 12);
  body.copy(out, HEADER_SIZE);
  out.writeUInt32LE(crc32c(out.subarray(0, HEADER_SIZE + body.length)), HEADER_SIZE + body.length);
  return out;
}

/** Verify the frame of a msgpack image file and decode its payload to an (unvalidated) value. */
export function unframe(file: string, buf: Buffer, expected: MsgpackKind | undefined): { kind: MsgpackKind; version: number; payload: unknown } {
  checkMagic(file, buf);
  if (buf.length < HEADER_SIZE + TRAILER_SIZE)
    throw new ImageError(file, `truncated: ${buf.length} bytes, shorter than header and checksum (${HEADER_SIZE + TRAILER_SIZE})`, 'truncated');
  const declared = buf.readUInt32LE(12);
  const want = HEADER_SIZE + declared + TRAILER_SIZE;
  const stored = buf.readUInt32LE(buf.length - TRAILER_SIZE);
  const actual = crc32c(buf.subarray(0, buf.length - TRAILER_SIZE));
  if (stored !== actual) {
    if (buf.length < want)
      throw new ImageError(file, `truncated: ${buf.length} bytes, its header declares a ${declared}-byte payload (${want} bytes in all)`, 'truncated');
    const v = buf.readUInt16LE(8);
    throw new ImageError(
      file,
      `checksum mismatch: stored CRC32C ${hex32(stored)}, contents give ${hex32(actual)} (file corrupted` +
        (buf.length !== want ? `; size ${buf.length} differs from the declared ${want}` : '') +
        (v > FORMAT_VERSION ? `, or written by a newer lazymig: format version ${v}` : '') +
        ')',
      'checksum',
    );
  }
  const { kind, version } = checkKindVersion(file, buf, expected);
  if (kind === 'pages') throw new ImageError(file, 'a pages file, not a msgpack image', 'wrong-kind');
  if (buf.length < want)
    throw new ImageError(file, `truncated: ${buf.length} bytes, its header declares a ${declared}-byte payload (${want} bytes in all)`, 'truncated');
  if (buf.length > want) throw new ImageError(file, `malformed: ${buf.length} bytes, its header declares ${want} bytes in all`, 'malformed');
  if (buf.readUInt16LE(10) !== 0) throw new ImageError(file, `malformed: reserved header field is ${buf.readUInt16LE(10)}, expected 0`, 'malformed');
  let values: unknown[];
  try {
    values = unpackr.unpackMultiple(buf.subarray(HEADER_SIZE, HEADER_SIZE + declared)) as unknown[];
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new ImageError(file, `malformed: payload is not valid msgpack (${msg})`, 'malformed', { cause: err });
  }
  if (values.length !== 1) throw new ImageError(file, `malformed: payload holds ${values.length} msgpack values, expected 1`, 'malformed');
  return { kind, version, payload: values[0] };
}

function hex32(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}

function validated<T>(file: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof FieldError) throw new ImageError(file, err.message, err.code, { cause: err });
    throw err;
  }
}

/* ------------------------------------------------------------------ per kind */

export function encodeInventory(inv: Inventory, file = 'inventory'): Buffer {
  return frame('inventory', validated(file, () => decodeInventory(inv)));
}
export function decodeInventoryFile(file: string, buf: Buffer): Inventory {
  const { version, payload } = unframe(file, buf, 'inventory');
  const inv = validated(file, () => decodeInventory(payload));
  if (inv.formatVersion !== version)
    throw new ImageError(file, `formatVersion ${inv.formatVersion} in the payload differs from the header's ${version}`, 'layout');
  return inv;
}

export function encodeCore(core: CoreImage, file = 'core'): Buffer {
  return frame('core', validated(file, () => decodeCore(core)));
}
export function decodeCoreFile(file: string, buf: Buffer): CoreImage {
  return validated(file, () => decodeCore(unframe(file, buf, 'core').payload));
}

export function encodePagemap(pm: Pagemap, file = 'pagemap'): Buffer {
  return frame('pagemap', pagemapToWire(validated(file, () => normalizePagemap(pm))));
}
export function decodePagemapFile(file: string, buf: Buffer): Pagemap {
  return validated(file, () => decodePagemap(unframe(file, buf, 'pagemap').payload));
}

export { validated as withFile };
