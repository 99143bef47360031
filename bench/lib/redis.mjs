// The redis-server behind the store: redis rows (e)-(g): Debian's, on a loopback
// port of its own with a temp dir, AOF on with fsync always (what the README
// asks of production: a 200 must not outlive a crash of Redis), and the
// counters read back from it with ioredis (redis-cli is not always installed).
import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { findCommand } from './tools.mjs';
import { freePort, makeTempDir, runQuiet, spawnTracked, stopChild } from './processes.mjs';
import { setTimeout as sleep } from 'node:timers/promises';

export const KEY_PREFIX = 'otpgate:'; // otpgate's default state.keyPrefix

/**
 * redis-server's path, or a reason to skip the rows. Not installed here as
 * wrk and nginx are: the store: redis rows are extra, the others run without it.
 */
export function findRedisServer() {
  if (process.env.BENCH_REDIS === 'off') return { reason: 'BENCH_REDIS=off' };
  const path = findCommand('redis-server');
  return path ? { path } : { reason: 'redis-server not found (Debian: `sudo apt-get install redis-server`)' };
}

/** A client that fails fast instead of retrying for ever (the bench only reads and pings). */
const connect = (port) => new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });

/** Until it answers PING (after a restart: until it has replayed its AOF, ioredis's ready check waits for that). */
async function waitForPing(port, child, timeoutMs = 30_000) {
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`redis-server exited (${child.exitCode ?? child.signalCode}) before it answered:\n  ${child.tail.join('\n  ')}`);
    }
    const client = connect(port);
    client.on('error', () => { /* not listening yet: retried below */ });
    try {
      await client.connect();
      if ((await client.ping()) === 'PONG') return;
    } catch { /* not yet */ } finally {
      client.disconnect();
    }
    if (Date.now() - started > timeoutMs) throw new Error(`redis-server did not answer PING within ${timeoutMs / 1000}s`);
    await sleep(25);
  }
}

/**
 * Start redis-server. `kill()` is SIGKILL (a crash), `restart()` starts it
 * again on the same port and data dir, `stop()` is a graceful SIGTERM.
 */
export async function startRedisServer(path, log) {
  const dir = makeTempDir('otpgate-bench-redis-');
  const port = await freePort();
  const version = (runQuiet(path, ['--version']).output.match(/v=(\S+)/) ?? [])[1] ?? 'unknown version';
  let child;
  const run = async () => {
    // --logfile '': its log to stdout, which spawnTracked drains and keeps the tail of for errors.
    child = spawnTracked('redis-server', path, [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--appendonly', 'yes', '--appendfsync', 'always',
      '--save', '', '--protected-mode', 'yes', '--daemonize', 'no', '--logfile', '',
    ]);
    await waitForPing(port, child);
  };
  await run();
  log(`redis-server ${version} on 127.0.0.1:${port} (AOF, appendfsync always)`);
  return {
    port,
    version,
    url: `redis://127.0.0.1:${port}`,
    description: `redis-server ${version}, appendonly yes, appendfsync always`,
    kill: () => stopChild(child, 'SIGKILL'),
    restart: run,
    stop: () => stopChild(child, 'SIGTERM'),
  };
}

/** otpgate's key name of a token line (redisState.ts keyOf): SHA-256 of login, type and key, no secret in it. */
export const tokenKeyOf = (login, typeText, keyHex) =>
  `${KEY_PREFIX}token:${createHash('sha256').update(`${login}\0${typeText}\0${keyHex}`).digest('hex')}`;

/**
 * login -> counter (field c of the user's token hash) as Redis holds it now;
 * undefined for a user Redis holds nothing for (never logged in: the file's counter holds).
 * Also the number of token keys in Redis, for the report.
 */
export async function readRedisCounters(port, users) {
  const client = connect(port);
  client.on('error', () => { /* surfaces as the command's rejection */ });
  try {
    await client.connect();
    const pipeline = client.pipeline();
    for (const u of users) pipeline.hget(tokenKeyOf(u.login, 'HOTP', u.keyHex), 'c');
    const results = await pipeline.exec();
    const counters = new Map();
    users.forEach((u, i) => {
      const [err, value] = results[i];
      if (err) throw err;
      counters.set(u.login, value === null ? undefined : Number(value));
    });
    const tokenKeys = (await client.keys(`${KEY_PREFIX}token:*`)).length;
    return { counters, tokenKeys };
  } finally {
    client.disconnect();
  }
}
