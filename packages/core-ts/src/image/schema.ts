/**
 * A small, strict validator for decoded msgpack values. A `Decoder<T>` takes an `unknown` and
 * either returns a fresh, fully typed `T` or throws a FieldError naming the path of the bad field.
 * Objects are strict: every declared field must be present (own property), no other field may be.
 * Nothing here trusts prototypes, lengths or numeric ranges of the input.
 */
import { FieldError } from './errors.js';

export type Decoder<T> = (value: unknown, path: string) => T;

const U64_LIMIT = 1n << 64n;

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (Array.isArray(value)) return `array(${value.length})`;
  if (value instanceof Uint8Array) return `bytes(${value.length})`;
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value) as { constructor?: { name?: string } } | null;
    const name = proto?.constructor?.name;
    return name && name !== 'Object' ? name : 'map';
  }
  if (typeof value === 'string') return `string ${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value)}`;
  if (typeof value === 'bigint') return `integer ${value}`;
  if (typeof value === 'number') return Number.isInteger(value) ? `integer ${value}` : `number ${value}`;
  return typeof value;
}

function fail(path: string, expected: string, value: unknown): never {
  throw new FieldError(path, `expected ${expected}, got ${describe(value)}`);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  const proto = Object.getPrototypeOf(v) as unknown;
  return proto === Object.prototype || proto === null;
}

/** An unsigned integer held in a JS number, 0 <= v <= max (max <= 2^53 - 1 unless exact multiples are guaranteed by the caller). */
export function uint(max: number = Number.MAX_SAFE_INTEGER): Decoder<number> {
  return (v, path) => {
    let n: number;
    if (typeof v === 'number') {
      if (!Number.isInteger(v)) fail(path, 'an integer', v);
      n = v;
    } else if (typeof v === 'bigint') {
      if (v < 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) fail(path, `an integer in 0..${max}`, v);
      n = Number(v);
    } else {
      return fail(path, 'an integer', v);
    }
    if (n < 0 || n > max) fail(path, `an integer in 0..${max}`, v);
    return n;
  };
}

export const u8 = uint(0xff);
export const u16 = uint(0xffff);
export const u32 = uint(0xffffffff);
export const safeUint = uint();

/** A signed 32-bit integer in a number. */
export const i32: Decoder<number> = (v, path) => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) fail(path, 'a signed 32-bit integer', v);
  return v;
};

/** An unsigned 64-bit value as a bigint (also accepts a non-negative safe-integer number). */
export const u64: Decoder<bigint> = (v, path) => {
  if (typeof v === 'bigint') {
    if (v < 0n || v >= U64_LIMIT) fail(path, 'an unsigned 64-bit integer', v);
    return v;
  }
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  return fail(path, 'an unsigned 64-bit integer', v);
};

/**
 * A page-aligned 64-bit address held in a number. Any multiple of 4096 below 2^64 is exact in a
 * double, so this is lossless; the caller checks the range that makes sense (user space).
 */
export const alignedAddress: Decoder<number> = (v, path) => {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'bigint') {
    if (v < 0n || v >= U64_LIMIT || v % 4096n !== 0n) fail(path, 'a page-aligned address', v);
    n = Number(v);
  } else return fail(path, 'a page-aligned address', v);
  if (!Number.isInteger(n) || n < 0 || n >= 2 ** 64 || n % 4096 !== 0) fail(path, 'a page-aligned address', v);
  return n;
};

export const bool: Decoder<boolean> = (v, path) => {
  if (typeof v !== 'boolean') fail(path, 'a boolean', v);
  return v;
};

export function str(maxLength = 4096, opts: { nonEmpty?: boolean } = {}): Decoder<string> {
  return (v, path) => {
    if (typeof v !== 'string') fail(path, 'a string', v);
    if (v.length > maxLength) throw new FieldError(path, `string too long (${v.length} > ${maxLength})`);
    if (opts.nonEmpty && v.length === 0) throw new FieldError(path, 'empty string');
    return v;
  };
}

export function bytes(maxLength: number): Decoder<Buffer> {
  return (v, path) => {
    if (!(v instanceof Uint8Array)) fail(path, 'bytes', v);
    if (v.length > maxLength) throw new FieldError(path, `too many bytes (${v.length} > ${maxLength})`);
    return Buffer.from(v); // a copy: never keep a view into the file buffer
  };
}

export function literal<const T extends readonly (string | number | boolean)[]>(values: T): Decoder<T[number]> {
  return (v, path) => {
    for (const x of values) if (v === x) return x;
    return fail(path, `one of ${values.map((x) => JSON.stringify(x)).join(', ')}`, v);
  };
}

export function nullable<T>(d: Decoder<T>): Decoder<T | null> {
  return (v, path) => (v === null ? null : d(v, path));
}

export function array<T>(item: Decoder<T>, opts: { min?: number; max: number }): Decoder<T[]> {
  return (v, path) => {
    if (!Array.isArray(v)) fail(path, 'an array', v);
    if (v.length > opts.max) throw new FieldError(path, `too many entries (${v.length} > ${opts.max})`);
    if (opts.min !== undefined && v.length < opts.min)
      throw new FieldError(path, `expected ${opts.min === opts.max ? 'exactly' : 'at least'} ${opts.min} entries, got ${v.length}`);
    const out: T[] = new Array<T>(v.length);
    for (let i = 0; i < v.length; i++) out[i] = item(v[i] as unknown, `${path}[${i}]`);
    return out;
  };
}

export function tuple<const D extends readonly Decoder<unknown>[]>(
  ...items: D
): Decoder<{ -readonly [K in keyof D]: D[K] extends Decoder<infer T> ? T : never }> {
  return ((v: unknown, path: string) => {
    if (!Array.isArray(v)) fail(path, `an array of ${items.length}`, v);
    if (v.length !== items.length) throw new FieldError(path, `expected exactly ${items.length} entries, got ${v.length}`);
    return items.map((d, i) => d(v[i] as unknown, `${path}[${i}]`));
  }) as Decoder<{ -readonly [K in keyof D]: D[K] extends Decoder<infer T> ? T : never }>;
}

export type Shape = Record<string, Decoder<unknown>>;
export type Decoded<S extends Shape> = { [K in keyof S]: S[K] extends Decoder<infer T> ? T : never };

export function object<S extends Shape>(shape: S): Decoder<Decoded<S>> {
  const keys = Object.keys(shape);
  return (v, path) => {
    if (!isPlainObject(v)) fail(path, 'a map', v);
    for (const k of Object.keys(v)) {
      if (!Object.hasOwn(shape, k)) throw new FieldError(path ? `${path}.${k}` : k, 'unknown field');
    }
    const out: Record<string, unknown> = {};
    for (const k of keys) {
      const p = path ? `${path}.${k}` : k;
      if (!Object.hasOwn(v, k)) throw new FieldError(p, 'missing field');
      out[k] = shape[k]!(v[k], p);
    }
    return out as Decoded<S>;
  };
}

/** Decode then check: `check` returns an error string or undefined. */
export function refine<T>(d: Decoder<T>, check: (value: T) => string | undefined): Decoder<T> {
  return (v, path) => {
    const out = d(v, path);
    const problem = check(out);
    if (problem !== undefined) throw new FieldError(path, problem);
    return out;
  };
}
