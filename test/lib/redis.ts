// A real redis-server for tests: a loopback port, a temp dir, AOF on with
// fsync always (what the README asks of production), killable and restartable.
import { spawn, type ChildProcess } from 'node:child_process';
import { accepts, freePort, tempDir } from './harness.js';

export const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** SIGKILL, as a crash */
  kill(): Promise<void>;
  /** start again on the same port and data */
  restart(): Promise<void>;
}

export async function startRedis(t: { teardown(fn: () => void | Promise<void>): void }): Promise<RedisServer> {
  const dir = tempDir(t, 'otpgate-redis-');
  const port = await freePort();
  let child: ChildProcess | undefined;
  const run = async (): Promise<void> => {
    const proc = spawn(REDIS_SERVER, [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always',
      '--save', '', '--protected-mode', 'yes', '--daemonize', 'no', '--logfile', '',
    ], { stdio: 'ignore' });
    child = proc;
    for (let i = 0; i < 200 && !(await accepts(port)); i++) {
      if (proc.exitCode !== null) throw new Error(`redis-server exited (${proc.exitCode})`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  const kill = async (): Promise<void> => {
    const proc = child;
    if (proc === undefined || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGKILL');
    await exited;
  };
  t.teardown(kill);
  await run();
  return { port, url: `redis://127.0.0.1:${port}`, kill, restart: run };
}
