// Prometheus metrics on their own listener (metricsListen), never on the public
// port. No label ever holds a login, an IP or a secret: only fixed values, so
// the number of series stays bounded and nothing leaks through a scrape.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SharedStatus } from './userStore.js';

/** What the gauges read when scraped. */
export interface MetricsSources {
  users(): { users: number; tokens: number; malformedLines: number; usable: boolean; lingering: number };
  throttledKeys(): number;
  /** a shared store's link (store: redis), undefined for the file store */
  shared?(): SharedStatus | undefined;
}

const SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Metrics {
  readonly registry = new Registry();
  readonly logins = this.counter('otpgate_logins_total',
    'Authentication decisions, by result (granted, denied) and reason (ok, linger, bad_pin, bad_otp, unknown_user, locked, logout, throttled).',
    ['result', 'reason']);
  readonly authSeconds = this.histogram('otpgate_auth_duration_seconds',
    'Time from a request\'s arrival to its authentication decision (the gateway\'s own time; includes the durable write of a fresh login).');
  readonly upstreamSeconds = this.histogram('otpgate_upstream_duration_seconds', 'Time from sending a request to the backend until its answer ended.');
  readonly upstreamFailures = this.counter('otpgate_upstream_failures_total',
    'Backend failures, by kind (error: 502 or a cut answer; timeout: 504).', ['kind']);
  readonly writes = this.counter('otpgate_users_file_writes_total', 'Durable users-file writes (one per group commit).', []);
  readonly writeBatch = this.histogram('otpgate_users_file_write_batch_size', 'Logins decided per group commit.', [1, 2, 5, 10, 20, 50, 100, 200]);
  readonly writeSeconds = this.histogram('otpgate_users_file_write_duration_seconds',
    'Time of one durable write (temp file, fsync, rename, fsync of the directory).');
  readonly lockWaitSeconds = this.histogram('otpgate_users_file_lock_wait_seconds', 'Time waited for the users-file lock.');
  readonly reloads = this.counter('otpgate_reloads_total', 'Reloads (SIGHUP), by result (ok, failed).', ['result']);

  private counter<L extends string>(name: string, help: string, labelNames: readonly L[]): Counter<L> {
    return new Counter({ name, help, labelNames, registers: [this.registry] });
  }

  private histogram(name: string, help: string, buckets = SECONDS): Histogram {
    return new Histogram({ name, help, buckets, registers: [this.registry] });
  }

  constructor(sources: MetricsSources) {
    collectDefaultMetrics({ register: this.registry, prefix: 'otpgate_' });
    // Read when scraped: nothing to update on the request path.
    const gauge = (name: string, help: string, read: () => number): void => {
      new Gauge({ name, help, registers: [this.registry], collect() { this.set(read()); } });
    };
    gauge('otpgate_users', 'Users in the users file.', () => sources.users().users);
    gauge('otpgate_tokens', 'Token lines in the users file.', () => sources.users().tokens);
    gauge('otpgate_users_file_malformed_lines', 'Lines of the users file that cannot be used (see the users_file_line log events).',
      () => sources.users().malformedLines);
    gauge('otpgate_users_file_usable', '1 when the users file can be used, 0 when logins are refused with 503.',
      () => (sources.users().usable ? 1 : 0));
    gauge('otpgate_lingering_sessions', 'Credentials remembered as riding a linger (an upper bound of active sessions).',
      () => sources.users().lingering);
    const shared = sources.shared;
    if (shared) {
      gauge('otpgate_state_store_up', '1 while the shared state store (Redis) is reachable, 0 while fresh logins get 503 (store: redis).',
        () => (shared()?.up === true ? 1 : 0));
      gauge('otpgate_state_store_down_seconds', 'Seconds the shared state store has been unreachable (0 when up).', () => shared()?.downSeconds ?? 0);
      new Counter({
        name: 'otpgate_state_store_conflicts_total', registers: [this.registry],
        help: 'Logins decided again because another gateway (or request) wrote the same user first (compare-and-set lost).',
        collect() { this.reset(); this.inc(shared()?.conflicts ?? 0); },
      });
    }
    gauge('otpgate_throttle_entries', 'IPs, accounts and IP-account pairs with failures counted by the throttle.', sources.throttledKeys);
  }

  /** The exposition text. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  /** Serve GET /metrics on its own address. */
  listen(host: string, port: number): Promise<{ server: Server; address: AddressInfo }> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: GET /metrics\n');
        return;
      }
      this.scrape().then((text) => {
        res.writeHead(200, { 'Content-Type': this.registry.contentType, 'Cache-Control': 'no-store' }).end(text);
      }, () => res.writeHead(500).end());
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve({ server, address: server.address() as AddressInfo });
      });
    });
  }
}
