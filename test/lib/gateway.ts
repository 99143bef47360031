// A real gateway for end-to-end tests: start() from src/serve.ts in front of a
// recording backend, with its users file and config in a temp dir and its log
// kept in memory.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { parseConfig } from '../../src/config.js';
import { start, type Running } from '../../src/serve.js';
import { memoryLogger, startBackend, tempDir, writeFile600, type Seen } from './harness.js';

export interface Gw {
  running: Running;
  port: number;
  dir: string;
  usersPath: string;
  backend: Awaited<ReturnType<typeof startBackend>>;
  logs: ReturnType<typeof memoryLogger>;
}

export interface GwOptions {
  config?: Record<string, unknown>;
  backend?: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void;
  /** upstream URL instead of the recording backend's */
  upstream?: string;
  /** epoch seconds, for the gateway and its users file */
  clock?: () => number;
}

/** YAML text, one `key: value` line per key (JSON scalars and flow collections are YAML). */
const yamlOf = (o: Record<string, unknown>): string =>
  Object.entries(o).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n') + '\n';

/** Start a gateway for `users` (the users file's text); stopped at the end of `t`. */
export async function startGateway(
  t: { teardown(fn: () => void | Promise<void>): void }, users: string, opts: GwOptions = {},
): Promise<Gw> {
  const dir = tempDir(t);
  const usersPath = writeFile600(join(dir, 'otp-users'), users);
  const backend = await startBackend(t, opts.backend);
  const result = parseConfig(yamlOf({
    listen: '127.0.0.1:0', upstream: opts.upstream ?? backend.url, usersFile: 'otp-users', logLevel: 'debug',
    ...opts.config,
  }), 'test.yaml', dir);
  if (!result.ok) throw new Error(result.errors.join('\n'));
  const logs = memoryLogger('debug');
  const running = await start(result.config, logs.log, undefined, opts.clock ? { clock: opts.clock } : {});
  t.teardown(() => running.stop());
  return { running, port: running.address.port, dir, usersPath, backend, logs };
}

/** Every header the backend got that a CGI-style backend reads as REMOTE_USER, as [name, value]. */
export const identityHeaders = (s: Seen): string[][] => {
  const found: string[][] = [];
  for (let i = 0; i < s.rawHeaders.length; i += 2) {
    const name = s.rawHeaders[i] as string;
    if (name.toLowerCase().replace(/[-_.]/g, '') === 'remoteuser') found.push([name, s.rawHeaders[i + 1] as string]);
  }
  return found;
};
