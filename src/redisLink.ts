// The gateway's two connections to Redis (store: redis): one for commands, one
// subscribed to the events channel. ioredis reconnects both by itself (and
// follows a Sentinel failover); this tracks whether they are up, since when
// they are down, and logs each change once.
import { readFileSync } from 'node:fs';
import { Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import type { StateConfig } from './config.js';
import { eventOf, type StateEvent } from './redisState.js';

/** ioredis's options for the configured URL and TLS files (reads the files: fails the start or reload). */
export function redisOptionsOf(state: StateConfig): RedisOptions {
  const target = state.redis;
  if (target === undefined) throw new Error('state.url: required with store: redis');
  const tls = target.tls ? {
    ...(state.tls?.ca !== undefined ? { ca: readFileSync(state.tls.ca) } : {}),
    ...(state.tls?.cert !== undefined ? { cert: readFileSync(state.tls.cert) } : {}),
    ...(state.tls?.key !== undefined ? { key: readFileSync(state.tls.key) } : {}),
    ...(state.tls?.servername !== undefined ? { servername: state.tls.servername } : {}),
  } : undefined;
  const common: RedisOptions = {
    db: target.db, username: target.username, password: target.password,
    // A command while disconnected fails at once (the login gets 503) instead of
    // waiting in a queue; one cut off by a lost connection is not sent again.
    enableOfflineQueue: false, maxRetriesPerRequest: 0,
    commandTimeout: state.commandTimeout * 1000, connectTimeout: 2000,
    retryStrategy: (times) => Math.min(100 * times, 1000),
    lazyConnect: true,
  };
  if (target.sentinels !== undefined) {
    return {
      ...common, sentinels: target.sentinels.map((s) => ({ host: s.host, port: s.port })), name: target.masterName,
      ...(tls ? { tls, enableTLSForSentinelMode: true, sentinelTLS: tls } : {}),
      sentinelRetryStrategy: (times) => Math.min(100 * times, 1000),
    };
  }
  return { ...common, host: target.server?.host, port: target.server?.port, ...(tls ? { tls } : {}) };
}

export class RedisLink {
  readonly client: Redis;
  private readonly subscriber: Redis;
  /** epoch seconds the link went down (undefined: up); starts down until first connected */
  private downSince: number | undefined;
  private subscribedOnce = false;
  /** the down state has been logged (once per outage, also one from the start) */
  private downLogged = false;
  private closed = false;
  /** told of every message on the channel */
  onEvent: ((e: StateEvent) => void) | undefined;
  /** told when messages may have been missed (the subscription was lost): drop every cached state */
  onMissed: (() => void) | undefined;

  constructor(state: StateConfig, private readonly channel: string, private readonly log: Logger, private readonly clock: () => number) {
    const options = redisOptionsOf(state);
    this.client = new Redis(options);
    // The subscription waits for its connection: subscribing is its only job.
    this.subscriber = new Redis({ ...options, enableOfflineQueue: true });
    this.downSince = clock();
    const where = state.url ?? 'redis';
    const changed = (): void => {
      if (this.closed) return;
      const up = this.up;
      if (up && this.downSince !== undefined) {
        this.downSince = undefined;
        this.downLogged = false;
        this.log.info({ event: 'state_store_up', url: where }, `state store ${where} reachable: logins go on`);
      } else if (!up) {
        this.downSince ??= this.clock();
        if (this.downLogged) return;
        this.downLogged = true;
        this.log.error({ event: 'state_store_down', url: where },
          `state store ${where} unreachable: fresh logins get 503 until it is back (lingering sessions ride on for ${state.lingerWhileDown} s)`);
      }
    };
    this.reportDown = changed;
    for (const conn of [this.client, this.subscriber]) {
      conn.on('ready', changed);
      conn.on('close', changed);
      conn.on('end', changed);
      // Reported as state_store_down once; ioredis retries by itself.
      conn.on('error', (err: Error) => this.log.debug({ event: 'state_store_error', err: err.message }, 'state store connection error'));
    }
    this.subscriber.on('ready', () => {
      // After a reconnect, versions published while it was away are lost.
      if (this.subscribedOnce) this.onMissed?.();
      this.subscribedOnce = true;
    });
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return;
      const e = eventOf(message);
      if (e !== undefined) this.onEvent?.(e);
    });
  }

  private readonly reportDown: () => void;

  /** Connect both (a failure is logged; reconnecting goes on by itself). */
  connect(): void {
    this.client.connect().catch(() => this.reportDown());
    this.subscriber.connect().then(() => this.subscriber.subscribe(this.channel)).catch(() => undefined);
  }

  /** Both connections are ready: commands go through and no version news is missed. */
  get up(): boolean {
    return this.client.status === 'ready' && this.subscriber.status === 'ready';
  }

  /** Commands can be sent (fresh logins work, even while the subscription reconnects). */
  get commandsUp(): boolean {
    return this.client.status === 'ready';
  }

  /** Seconds the link has been down, 0 when up. */
  downFor(now: number): number {
    return this.downSince === undefined ? 0 : Math.max(0, now - this.downSince);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subscriber.disconnect();
    await this.client.quit().catch(() => this.client.disconnect());
  }
}
