import { resolve } from 'node:path';
import { createLogger, readImages } from '@lazymig/core-ts';
import { serveImages } from '@lazymig/pageserver';
import type { Command } from '../command.js';
import { EXIT, UsageError } from '../usage-error.js';
import { CONGESTION_HELP, parseCongestion, parsePort } from './parse.js';

export const pageServerCommand: Command = {
  name: 'page-server',
  summary: 'serve the pages of an images directory to lazy-pages daemons, until interrupted',
  options: {
    'images-dir': { type: 'string', short: 'D' },
    address: { type: 'string' },
    port: { type: 'string' },
    'tcp-congestion': { type: 'string' },
  },
  optionHelp: {
    'images-dir': 'the images to serve (required)',
    address: 'address to listen on (required)',
    port: 'port to listen on (required)',
    'tcp-congestion': CONGESTION_HELP,
  },
  async run({ values }) {
    if (typeof values['images-dir'] !== 'string') throw new UsageError('--images-dir is required');
    if (typeof values.address !== 'string' || typeof values.port !== 'string') throw new UsageError('--address and --port are required');
    const port = parsePort(values.port);
    const congestion = parseCongestion(values['tcp-congestion']);
    const images = await readImages(resolve(values['images-dir']));
    const log = createLogger('page-server');
    const { server, close } = await serveImages({ images, address: values.address, port, ...(congestion !== undefined ? { congestion } : {}), log });
    process.stderr.write(`serving ${images.dir} on ${values.address}:${server.port}\n`);
    await new Promise<void>((r) => {
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => r());
    });
    await close();
    return EXIT.ok;
  },
};
