// A real redis-server for tests: a loopback port, a temp dir, AOF on with
// fsync always (what the README asks of production), killable and restartable.
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { accepts, freePort, tempDir } from './harness.js';

export const REDIS_SERVER = '/usr/bin/redis-server';

export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** SIGKILL, as a crash */
  kill(): Promise<void>;
  /** start again on the same port and data */
  restart(): Promise<void>;
  /** SIGSTOP: a hung server, its connections left open */
  pause(): void;
  /** SIGCONT */
  resume(): void;
}

export async function startRedis(t: { teardown(fn: () => void | Promise<void>): void }, options: { replicaOf?: number } = {}): Promise<RedisServer> {
  const dir = tempDir(t, 'otpgate-redis-');
  const port = await freePort();
  let child: ChildProcess | undefined;
  const run = async (): Promise<void> => {
    const proc = spawn(REDIS_SERVER, [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always',
      '--save', '', '--protected-mode', 'yes', '--daemonize', 'no', '--logfile', '',
      ...(options.replicaOf === undefined ? [] : ['--replicaof', '127.0.0.1', String(options.replicaOf)]),
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
  const signal = (s: NodeJS.Signals) => (): void => { child?.kill(s); };
  t.teardown(signal('SIGCONT')); // a paused server ignores nothing but SIGKILL, but may be waited on
  return { port, url: `redis://127.0.0.1:${port}`, kill, restart: run, pause: signal('SIGSTOP'), resume: signal('SIGCONT') };
}

/**
 * A Sentinel (redis-server --sentinel) watching the master on `masterPort` as
 * `name`, quick to act: down after 300 ms, a quorum of one.
 */
export async function startSentinel(t: { teardown(fn: () => void | Promise<void>): void }, masterPort: number, name: string): Promise<{ port: number }> {
  const dir = tempDir(t, 'otpgate-sentinel-');
  const port = await freePort();
  const conf = join(dir, 'sentinel.conf');
  writeFileSync(conf, [
    `port ${port}`, 'bind 127.0.0.1', `dir ${dir}`,
    `sentinel monitor ${name} 127.0.0.1 ${masterPort} 1`,
    `sentinel down-after-milliseconds ${name} 300`,
    `sentinel failover-timeout ${name} 2000`,
    `sentinel parallel-syncs ${name} 1`, '',
  ].join('\n'));
  const proc = spawn(REDIS_SERVER, [conf, '--sentinel'], { stdio: 'ignore' });
  t.teardown(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    proc.kill('SIGKILL');
    await exited;
  });
  for (let i = 0; i < 200 && !(await accepts(port)); i++) await new Promise((r) => setTimeout(r, 25));
  return { port };
}
