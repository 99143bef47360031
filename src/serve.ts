// `otpgate serve`: validate everything, then start; SIGHUP reloads (parse fully,
// then swap; a bad reload keeps what runs); SIGTERM/SIGINT stop gracefully.
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Server } from 'node:http';
import { loadConfig } from './config.js';
import { policyOf, readConfig, safetyOf, type Config } from './configFile.js';
import { CliError } from './cliError.js';
import { AssertionKeyError, assertionSigner } from './assertion.js';
import { Metrics } from './metrics.js';
import { Gateway } from './gateway.js';
import { createLogger, VERSION } from './logger.js';
import { UnsafeUsersFileError, UsersFile, UsersFileError, safetyProblems, type FileSafety, type WriteObserver } from './usersFile.js';
import { parseUsersFile } from './usersFileFormat.js';
import { RedisUsers } from './redisUsers.js';
import type { UserStore } from './userStore.js';

// Where they lived before the admin CLI needed them without the gateway's modules.
export { CliError } from './cliError.js';
export { configFileFrom, policyOf, readConfig, safetyOf } from './configFile.js';

/** Start, reload and stop are always logged, even at logLevel warn or error (not when silent). */
function lifecycle(log: Logger): Logger {
  return log.level === 'silent' || log.isLevelEnabled('info') ? log : log.child({}, { level: 'info' });
}



/**
 * Open the users file as configured; refuses one that others can read or
 * change, a symbolic link, or one in a directory others can write to (exit 2,
 * each reason one line naming its override).
 */
export function openUsersFile(config: Config, log: Logger, options: { clock?: () => number; pollMs?: number } = {}): UserStore {
  try {
    const common = { path: config.usersFile, policy: policyOf(config), safety: safetyOf(config), log, ...options };
    if (config.state.store === 'redis') return new RedisUsers({ ...common, state: config.state });
    return new UsersFile(common);
  } catch (err) {
    if (err instanceof UnsafeUsersFileError) throw new CliError(err.message, 2);
    if (err instanceof UsersFileError) throw new CliError(err.message, 1);
    // A TLS file of state.tls that cannot be read.
    if ((err as NodeJS.ErrnoException).code !== undefined && (err as NodeJS.ErrnoException).path !== undefined) {
      throw new CliError(`${(err as NodeJS.ErrnoException).path}: cannot read (${(err as NodeJS.ErrnoException).code})`, 1);
    }
    throw err;
  }
}

export interface Running {
  readonly address: AddressInfo;
  /** the metrics listener's, when metricsListen is set */
  readonly metricsAddress: AddressInfo | undefined;
  readonly gateway: Gateway;
  users: UserStore;
  reload(): Promise<boolean>;
  stop(): Promise<void>;
}

const observerOf = (metrics: Metrics): WriteObserver => ({
  lockWaited: (seconds) => metrics.lockWaitSeconds.observe(seconds),
  wrote: (batch, seconds) => {
    metrics.writes.inc();
    metrics.writeBatch.observe(batch);
    metrics.writeSeconds.observe(seconds);
  },
});

/** Start the gateway for a validated config. `clock` (epoch seconds) is for tests. */
export async function start(config: Config, log: Logger, reread?: () => Config, options: { clock?: () => number } = {}): Promise<Running> {
  const users = openUsersFile(config, log, options);
  await users.removeStaleTemp().catch((err: Error) => log.warn({ event: 'stale_temp' }, err.message));
  let gateway: Gateway;
  try {
    gateway = new Gateway(config, users, log, options.clock);
  } catch (err) {
    await users.close();
    if (err instanceof AssertionKeyError) throw new CliError(err.message, 2);
    throw err;
  }
  let address: AddressInfo;
  try {
    address = await gateway.listen();
  } catch (err) {
    await users.close();
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new CliError(`${config.source}: listen: cannot listen on ${config.listen.host}:${config.listen.port} (${code})`, 1);
  }
  let metricsServer: Server | undefined;
  let metrics: Metrics | undefined;
  // What a scrape reads (a reload may swap the users file).
  const scraped = { users };
  if (config.metricsListen) {
    metrics = new Metrics({
      users: () => {
        const u = scraped.users;
        return { users: u.userCount, tokens: u.tokenCount, malformedLines: u.malformedLines, usable: u.usable, lingering: u.lingerCount };
      },
      ...(config.state.store === 'redis' ? { shared: () => scraped.users.shared } : {}),
      throttledKeys: () => gateway.throttle.size,
    });
    try {
      const { host, port } = config.metricsListen;
      const served = await metrics.listen(host, port);
      metricsServer = served.server;
      lifecycle(log).info({ event: 'metrics', listen: `${served.address.address}:${served.address.port}` },
        `metrics on http://${served.address.address}:${served.address.port}/metrics`);
    } catch (err) {
      await gateway.close();
      await users.close();
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      throw new CliError(`${config.source}: metricsListen: cannot listen on ${config.metricsListen.host}:${config.metricsListen.port} (${code})`, 1);
    }
    gateway.metrics = metrics;
    users.observer = observerOf(metrics);
  }
  lifecycle(log).info({
    event: 'start', version: VERSION, listen: `${address.address}:${address.port}`, tls: Boolean(config.tls),
    upstream: config.upstream.href, usersFile: config.usersFile, users: users.userCount, malformedLines: users.malformedLines,
    state: config.state.store === 'redis' ? config.state.url : 'file',
  }, `otpgate ${VERSION} listening on ${config.tls ? 'https' : 'http'}://${address.address}:${address.port}, upstream ${config.upstream.href}`);

  let current = config;
  const running: Running = {
    address,
    metricsAddress: metricsServer?.address() as AddressInfo | undefined,
    gateway,
    users,
    async reload(): Promise<boolean> {
      let next: Config;
      try {
        next = reread ? reread() : current;
      } catch (err) {
        for (const line of (err as Error).message.split('\n')) log.error({ event: 'reload_failed' }, line);
        log.error({ event: 'reload_failed' }, 'reload failed: keeping the running configuration');
        metrics?.reloads.labels('failed').inc();
        return false;
      }
      for (const key of ['listen', 'headersTimeout', 'requestTimeout', 'keepAliveTimeout', 'maxHeaderBytes'] as const) {
        if (JSON.stringify(next[key]) !== JSON.stringify(current[key])) {
          log.warn({ event: 'reload', key }, `${key} changed: takes effect after a restart`);
        }
      }
      let nextUsers = running.users;
      try {
        if (next.usersFile !== current.usersFile || JSON.stringify(next.state) !== JSON.stringify(current.state)) {
          nextUsers = openUsersFile(next, log, options);
          await nextUsers.removeStaleTemp();
        } else {
          running.users.setSafety(safetyOf(next));
          await running.users.reload();
        }
        // A new state store gets a moment to connect before it takes over: logins would get 503 meanwhile.
        for (let waited = 0; nextUsers !== running.users && nextUsers.shared?.up === false && waited < 5000; waited += 50) {
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        gateway.swap(next, nextUsers);
        nextUsers.setPolicy(policyOf(next));
      } catch (err) {
        for (const line of (err as Error).message.split('\n')) {
          log.error({ event: 'reload_failed' }, `reload failed, keeping the running configuration: ${line}`);
        }
        if (nextUsers !== running.users) await nextUsers.close();
        else running.users.setSafety(safetyOf(current));
        return false;
      }
      if (nextUsers !== running.users) {
        const old = running.users;
        running.users = nextUsers;
        scraped.users = nextUsers;
        await old.close();
      }
      log.level = next.logLevel;
      current = next;
      if (metrics) nextUsers.observer = observerOf(metrics);
      metrics?.reloads.labels('ok').inc();
      lifecycle(log).info({ event: 'reload', users: nextUsers.userCount }, 'configuration and users file reloaded');
      return true;
    },
    async stop(): Promise<void> {
      if (metricsServer) await new Promise<void>((resolve) => metricsServer?.close(() => resolve()));
      await gateway.close();
      await running.users.close();
    },
  };
  return running;
}

/** `otpgate serve`: run until SIGTERM/SIGINT. */
export async function serve(configFile: string): Promise<void> {
  const config = readConfig(configFile);
  const log = createLogger(config.logLevel);
  let running: Running | undefined;
  let stopping = false;
  // Handlers go in before the start line is logged: whoever reads that line may signal at once.
  process.on('SIGHUP', () => {
    if (!running || stopping) return;
    log.info({ event: 'reload' }, 'SIGHUP: reloading');
    void running.reload();
  });
  const stop = (signal: string): void => {
    stopping = true;
    lifecycle(log).info({ event: 'stop', signal }, `${signal}: stopping`);
    void (running?.stop() ?? Promise.resolve()).then(() => {
      log.flush();
      process.exit(0);
    }, () => process.exit(1));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  running = await start(config, log, () => readConfig(configFile));
  if (stopping) await running.stop();
}

/** `otpgate check-config`: every problem of the config and its users file, one per line. */
export function checkConfig(configFile: string): { ok: boolean; lines: string[] } {
  const result = loadConfig(configFile);
  if (!result.ok) return { ok: false, lines: result.errors };
  const config = result.config;
  const problems: string[] = [];
  for (const file of config.tls ? [config.tls.cert, config.tls.key] : []) {
    try {
      readFileSync(file);
    } catch (err) {
      problems.push(`${file}: cannot read TLS file (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
    }
  }
  if (config.identityAssertion) {
    try {
      assertionSigner(config.identityAssertion);
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  let summary = '';
  const unsafe = safetyProblems(config.usersFile, safetyOf(config));
  for (const p of unsafe) problems.push(p.message);
  // What a refused link points to is not read: it need not be a users file at all.
  if (!unsafe.some((p) => p.kind === 'symlink')) {
    try {
      UsersFile.statOf(config.usersFile);
      const model = parseUsersFile(readFileSync(config.usersFile));
      for (const p of model.problems) problems.push(`${config.usersFile}:${p.line}: ${p.reason}`);
      summary = `${model.index.size} users, ${model.tokenCount} tokens`;
    } catch (err) {
      problems.push((err as Error).message);
    }
  }
  return problems.length > 0 ? { ok: false, lines: problems } : { ok: true, lines: [`${configFile}: ok (${summary})`] };
}
