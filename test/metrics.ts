// Prometheus metrics: on their own listener only, counts that match real
// logins, and no login name, IP or secret in any series.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { startGateway } from './lib/gateway.js';
import { request, rfcHotp, secret, secretKey } from './lib/harness.js';

const KEY = secretKey(randomBytes(20).toString('hex'));
const PIN = secret('m3tricsPinQ');
const USERS = `HOTP mallory-metrics ${PIN} ${KEY} 0\nHOTP other - ${KEY} 0\nHOTP broken x nothex\n`;

/** The value of one series in the exposition text (undefined when absent). */
function valueOf(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

t.test('metrics after real logins', async (t) => {
  const gw = await startGateway(t, USERS, { config: { metricsListen: '127.0.0.1:0' } });
  const metricsPort = gw.running.metricsAddress?.port ?? 0;
  t.ok(metricsPort > 0 && metricsPort !== gw.port, 'a listener of its own');
  const login = (password: string, user = 'mallory-metrics'): Promise<number> =>
    request(gw.port, { auth: [user, password] }).then((r) => r.status);
  t.equal(await login(`${PIN}${rfcHotp(KEY, 0)}`), 200);
  t.equal(await login(`${PIN}${rfcHotp(KEY, 0)}`), 200);
  t.equal(await login(`${PIN}${rfcHotp(KEY, 0)}`), 200);
  t.equal(await login(`${PIN}999999`), 401);
  t.equal(await login('wr0ngPinX123456'), 401);
  t.equal(await login('x1234567', 'nobody-metrics'), 401);
  await gw.running.users.flush();
  const scrape = await request(metricsPort, { path: '/metrics' });
  t.equal(scrape.status, 200);
  t.match(scrape.headers['content-type'], /^text\/plain/);
  const text = scrape.text;
  t.equal(valueOf(text, 'otpgate_logins_total{result="granted",reason="ok"}'), 1);
  t.equal(valueOf(text, 'otpgate_logins_total{result="granted",reason="linger"}'), 2, 'lingering requests are counted too');
  t.equal(valueOf(text, 'otpgate_logins_total{result="denied",reason="bad_otp"}'), 1);
  t.equal(valueOf(text, 'otpgate_logins_total{result="denied",reason="bad_pin"}'), 1);
  t.equal(valueOf(text, 'otpgate_logins_total{result="denied",reason="unknown_user"}'), 1);
  t.equal(valueOf(text, 'otpgate_users'), 2);
  t.equal(valueOf(text, 'otpgate_users_file_malformed_lines'), 1);
  t.equal(valueOf(text, 'otpgate_users_file_usable'), 1);
  t.equal(valueOf(text, 'otpgate_lingering_sessions'), 1);
  // mallory's pair, the IP, nobody's pair and nobody's account (not mallory's: the IP is usual for it after its login)
  t.equal(valueOf(text, 'otpgate_throttle_entries'), 4);
  t.equal(valueOf(text, 'otpgate_auth_duration_seconds_count'), 6, 'every decision timed');
  t.equal(valueOf(text, 'otpgate_upstream_duration_seconds_count'), 3, 'every forwarded request timed');
  t.equal(valueOf(text, 'otpgate_users_file_writes_total'), 1, 'the login was written (this layout keeps failure counts in memory)');
  t.equal(valueOf(text, 'otpgate_users_file_write_batch_size_count'), 1);
  t.ok((valueOf(text, 'otpgate_users_file_lock_wait_seconds_count') ?? 0) >= 1);
  t.ok((valueOf(text, 'otpgate_process_resident_memory_bytes') ?? 0) > 0, 'Node\'s process metrics');
  for (const forbidden of ['mallory-metrics', 'nobody-metrics', '127.0.0.1', PIN, KEY]) {
    t.notOk(text.includes(forbidden), `no ${forbidden === PIN || forbidden === KEY ? 'secret' : forbidden} in any series`);
  }
  t.equal((await request(gw.port, { path: '/metrics' })).status, 401, 'not on the public port');
  t.equal((await request(metricsPort, { path: '/' })).status, 404);
});

t.test('upstream failures and reloads are counted', async (t) => {
  const gw = await startGateway(t, USERS, { config: { metricsListen: '127.0.0.1:0' }, upstream: 'http://127.0.0.1:1' });
  const metricsPort = gw.running.metricsAddress?.port ?? 0;
  t.equal((await request(gw.port, { auth: ['mallory-metrics', `${PIN}${rfcHotp(KEY, 0)}`] })).status, 502);
  t.ok(await gw.running.reload());
  const text = (await request(metricsPort, { path: '/metrics' })).text;
  t.equal(valueOf(text, 'otpgate_upstream_failures_total{kind="error"}'), 1);
  t.equal(valueOf(text, 'otpgate_reloads_total{result="ok"}'), 1);
});
