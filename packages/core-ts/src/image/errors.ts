/**
 * The one error type of the image codec. Every problem found while reading or writing images
 * (a wrong magic, a newer format version, a truncated file, a bad checksum, a schema violation,
 * an inconsistent layout, an I/O failure) is reported as an `ImageError` naming the file and
 * saying what is wrong.
 */
export type ImageErrorCode =
  /** the file does not start with the lazymig magic (not an image, or a different kind of image) */
  | 'bad-magic'
  /** the file is a lazymig image, but of another kind than expected (e.g. a pagemap where a core was expected) */
  | 'wrong-kind'
  /** written by a newer lazymig whose format this one cannot read */
  | 'newer-version'
  /** the file is shorter than its header/footer says */
  | 'truncated'
  /** the stored CRC32C does not match the contents */
  | 'checksum'
  /** the contents are structurally wrong (msgpack, header fields, lengths, trailing data) */
  | 'malformed'
  /** a field is missing, has a wrong type or is out of range */
  | 'schema'
  /** the values are well-typed but inconsistent (overlapping VMAs, pagemap outside VMAs, …) */
  | 'layout'
  /** a file that must exist is missing */
  | 'missing'
  /** the images dir already exists and may not be replaced */
  | 'exists'
  /** a page that was asked for is not in the images (lazy, or not mapped at all) */
  | 'not-present'
  /** an operating system error while reading or writing */
  | 'io';

export class ImageError extends Error {
  override readonly name = 'ImageError';
  constructor(
    /** the file (or images dir) the problem is in */
    readonly file: string,
    /** what is wrong, in words */
    readonly reason: string,
    /** a machine-readable category */
    readonly code: ImageErrorCode,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${reason}`, options);
  }
}

/** Internal: a schema/layout problem at a path inside a decoded value, wrapped into an ImageError by the caller. */
export class FieldError extends Error {
  constructor(
    readonly path: string,
    readonly problem: string,
    readonly code: 'schema' | 'layout' = 'schema',
  ) {
    super(path ? `${path}: ${problem}` : problem);
  }
}

/** Wrap any error into an ImageError about `file`. */
export function asImageError(file: string, err: unknown, fallback: ImageErrorCode = 'io'): ImageError {
  if (err instanceof ImageError) return err;
  if (err instanceof FieldError) return new ImageError(file, err.message, err.code, { cause: err });
  const e = err as { code?: unknown; message?: unknown };
  const msg = typeof e?.message === 'string' ? e.message : String(err);
  if (e?.code === 'ENOENT') return new ImageError(file, `missing (${msg})`, 'missing', { cause: err });
  return new ImageError(file, msg, fallback, { cause: err });
}
