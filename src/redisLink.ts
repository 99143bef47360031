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
  /** with state.waitReplicas: grants and their WAIT, which blocks its connection */
  readonly writer: Redis | undefined;
  private readonly subscriber: Redis;
  /** epoch seconds the link went down (undefined: up); starts down until first connected */
  private downSince: number | undefined;
  /** the channel's subscription is confirmed (not just the connection ready) */
  private subscribed = false;
  private subscribedOnce = false;
  /** the down state has been logged (once per outage, also one from the start) */
  private downLogged = false;
  private closed = false;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly where: string;
  /** told of every message on the channel */
  onEvent: ((e: StateEvent) => void) | undefined;
  /** told when messages may have been missed (the subscription was lost): drop every cached state */
  onMissed: (() => void) | undefined;

  constructor(private readonly state: StateConfig, private readonly channel: string, private readonly log: Logger, private readonly clock: () => number) {
    const options = redisOptionsOf(state);
    this.client = new Redis(options);
    this.writer = state.waitReplicas > 0 ? new Redis(options) : undefined;
    // The subscription waits for its connection: subscribing is its only job. It
    // subscribes again itself after a reconnect, to know when it is back.
    this.subscriber = new Redis({ ...options, enableOfflineQueue: true, autoResubscribe: false });
    this.downSince = clock();
    this.where = state.url ?? 'redis';
    for (const conn of this.connections()) {
      conn.on('close', () => this.wentDown());
      conn.on('end', () => this.wentDown());
      // ioredis retries by itself; the outage is logged once (wentDown), each error at debug.
      conn.on('error', (err: Error) => this.log.debug({ event: 'state_store_error', err: err.message }, 'state store connection error'));
    }
    this.client.on('ready', () => this.cameUp());
    this.writer?.on('ready', () => this.cameUp());
    this.subscriber.on('close', () => { this.subscribed = false; });
    this.subscriber.on('ready', () => {
      this.subscriber.subscribe(this.channel).then(() => {
        // Versions published while it was away are lost: what was cached may be stale.
        if (this.subscribedOnce) this.onMissed?.();
        this.subscribedOnce = true;
        this.subscribed = true;
        this.cameUp();
      }, (err: Error) => {
        this.log.error({ event: 'state_store_error', err: err.message }, `state store ${this.where}: cannot subscribe: ${err.message}`);
        this.subscriber.disconnect(true);
      });
    });
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return;
      const e = eventOf(message);
      if (e !== undefined) this.onEvent?.(e);
    });
    // A master that hangs (stopped, a dead network path) keeps its connections
    // open: ioredis only times out commands. A ping every second finds it, and
    // a reconnect then asks Sentinel for the master again.
    this.heartbeat = setInterval(() => this.check(), 1000);
    this.heartbeat.unref();
  }

  /** Connect both (a failure is logged; reconnecting goes on by itself). */
  connect(): void {
    this.client.connect().catch(() => this.wentDown());
    this.writer?.connect().catch(() => this.wentDown());
    this.subscriber.connect().catch(() => this.wentDown());
  }

  /** Both connections are ready: commands go through and no version news is missed. */
  get up(): boolean {
    return this.commandsUp && this.subscribed;
  }

  /** Commands can be sent (fresh logins work, even while the subscription reconnects). */
  get commandsUp(): boolean {
    return this.client.status === 'ready' && (this.writer === undefined || this.writer.status === 'ready');
  }

  private connections(): Redis[] {
    return this.writer === undefined ? [this.client, this.subscriber] : [this.client, this.writer, this.subscriber];
  }

  /** Seconds the link has been down, 0 when up. */
  downFor(now: number): number {
    return this.downSince === undefined ? 0 : Math.max(0, now - this.downSince);
  }

  /** A command timed out: look now whether Redis still answers (a reconnect if not). */
  suspect(): void {
    this.check();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.heartbeat);
    this.subscriber.disconnect();
    this.writer?.disconnect();
    await this.client.quit().catch(() => this.client.disconnect());
  }

  private check(): void {
    for (const conn of this.connections()) {
      // The writer's WAIT may take up to commandTimeout: its ping would queue behind it.
      if (conn === this.writer) continue;
      if (conn.status !== 'ready' || (conn === this.subscriber && !this.subscribed)) continue;
      conn.ping().catch((err: Error) => {
        if (this.closed || conn.status !== 'ready') return;
        this.log.warn({ event: 'state_store_unresponsive', err: err.message }, `state store ${this.where} does not answer (${err.message}): reconnecting`);
        this.wentDown();
        conn.disconnect(true);
      });
    }
  }

  private cameUp(): void {
    if (this.closed || !this.up || this.downSince === undefined) return;
    this.downSince = undefined;
    this.downLogged = false;
    this.log.info({ event: 'state_store_up', url: this.where }, `state store ${this.where} reachable: logins go on`);
  }

  private wentDown(): void {
    if (this.closed) return;
    this.downSince ??= this.clock();
    if (this.downLogged) return;
    this.downLogged = true;
    this.log.error({ event: 'state_store_down', url: this.where },
      `state store ${this.where} unreachable: fresh logins get 503 until it is back (lingering sessions ride on for ${this.state.lingerWhileDown} s)`);
  }
}
