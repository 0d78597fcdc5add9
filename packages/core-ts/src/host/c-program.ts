/**
 * The package's small C programs (the restore stub, the lazy-pages guard): built by the
 * package's `build` script into dist/. When a binary is missing or older than its source
 * (tests run from the sources), it is compiled once into a cache dir keyed by a hash of the
 * source and flags. An environment variable may name a binary to use instead.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

// Found through the package name, not this file's place: the CLI runs core-ts bundled.
const PKG_DIR = dirname(createRequire(import.meta.url).resolve('@lazymig/core-ts/package.json'));

export interface CProgram {
  /** Binary name in dist/ (and in the cache dir). */
  name: string;
  /** Source path relative to the package. */
  source: string;
  cflags: readonly string[];
  /** Environment variable that overrides the binary. */
  env: string;
}

export class CProgramError extends Error {
  override readonly name = 'CProgramError';
}

const built = new Map<string, string>();

/** Path of the program's binary, building it if needed. */
export function cProgram(p: CProgram): string {
  const memo = built.get(p.name);
  if (memo) return memo;
  const path = resolve(p);
  built.set(p.name, path);
  return path;
}

function resolve(p: CProgram): string {
  const override = process.env[p.env];
  if (override) return override;
  const source = join(PKG_DIR, p.source);
  const dist = join(PKG_DIR, 'dist', p.name);
  const haveSource = existsSync(source);
  if (existsSync(dist) && (!haveSource || statSync(dist).mtimeMs >= statSync(source).mtimeMs)) return dist;
  if (!haveSource) throw new CProgramError(`no ${p.name}: neither ${dist} nor its source ${source}`);
  const h = createHash('sha256').update(p.cflags.join(' ')).update(readFileSync(source)).digest('hex').slice(0, 16);
  const dir = join(tmpdir(), `${p.name}-${h}`);
  const out = join(dir, p.name);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    execFileSync('gcc', [...p.cflags, '-o', tmp, source], { timeout: 60_000, stdio: ['ignore', 'ignore', 'pipe'] });
    renameSync(tmp, out);
  } catch (err) {
    throw new CProgramError(`cannot build ${p.name} (${source}): ${(err as Error).message}`, { cause: err });
  } finally {
    rmSync(tmp, { force: true });
  }
  return out;
}
