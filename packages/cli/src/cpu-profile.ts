/**
 * LAZYMIG_CPU_PROFILE=<dir>: a V8 CPU profile of the command (100 µs samples), written to
 * <dir>/<command>-<pid>.cpuprofile when it ends; open it in Chrome DevTools. For finding
 * where a migration's downtime goes (Node refuses --cpu-prof in NODE_OPTIONS, and these
 * commands are started by scripts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';

export async function profiled<T>(name: string, body: () => Promise<T>): Promise<T> {
  const dir = process.env['LAZYMIG_CPU_PROFILE'];
  if (!dir) return body();
  const session = new Session();
  session.connect();
  const post = (method: string, params?: object): Promise<unknown> =>
    new Promise((resolve, reject) => session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))));
  await post('Profiler.enable');
  await post('Profiler.setSamplingInterval', { interval: 100 });
  await post('Profiler.start');
  try {
    return await body();
  } finally {
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${name}-${process.pid}.cpuprofile`), JSON.stringify(profile));
    session.disconnect();
  }
}
