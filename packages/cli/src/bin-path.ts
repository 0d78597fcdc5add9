import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/**
 * The `lazymig` executable, for the commands that start another lazymig (the demo). Found
 * through the package, not this file's place: the CLI runs bundled.
 */
export function lazymigBin(): string {
  return join(dirname(createRequire(import.meta.url).resolve('@lazymig/cli/package.json')), 'bin', 'lazymig');
}
