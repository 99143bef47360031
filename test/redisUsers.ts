// Several real gateways sharing their state in a real redis-server (AOF,
// fsync always): replays across gateways, exact counters under 1,000
// concurrent logins, throttles counted across gateways, kill -9 and restart of
// Redis during logins, Redis stopped and back, and seeding from the file.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Agent } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { basic, request, rfcHotp, rfcTotp, secret, secretKey, type Reply } from './lib/harness.js';
import { startGateway, type Gw } from './lib/gateway.js';
import { startRedis, type RedisServer } from './lib/redis.js';

type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const PIN = secret('sh4redPinK');

interface Gateways {
  redis: RedisServer;
  gws: Gw[];
  /** epoch seconds every gateway reads */
  clock: { now: number };
}

/** `n` gateways, each with its own copy of `users`, sharing one redis-server. */
async function gateways(t: Test, users: string, n: number, config: Record<string, unknown> = {}, redis?: RedisServer): Promise<Gateways> {
  const server = redis ?? await startRedis(t);
  const clock = { now: Math.floor(Date.now() / 1000) };
  const gws: Gw[] = [];
  for (let k = 0; k < n; k++) {
    gws.push(await startGateway(t, users, {
      clock: () => clock.now,
      config: { logLevel: 'info', ...config, state: { store: 'redis', url: server.url, ...(config.state as object | undefined) } },
    }));
  }
  for (const gw of gws) await connected(gw);
  return { redis: server, gws, clock };
}

/** Wait (bounded) until the gateway's health says its state store is connected. */
async function connected(gw: Gw, want = true): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if ((gw.running.users.shared?.up ?? false) === want) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`state store never ${want ? 'connected' : 'disconnected'}`);
}

const login = (gw: Gw, user: string, password: string, agent?: Agent): Promise<Reply> =>
  request(gw.port, { headers: { Authorization: basic(user, password) }, ...(agent ? { agent } : {}) });

const hotpUsers = (n: number): { users: string; keys: string[] } => {
  const keys = Array.from({ length: n }, () => secretKey(randomBytes(20).toString('hex')));
  return { keys, users: keys.map((k, i) => `HOTP u${i} ${PIN} ${k} 0\n`).join('') };
};

t.test('a code used on gateway A rides the linger on B within it, and is a replay on B after it', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a, b] = [], clock } = await gateways(t, users, 2, { maxLinger: 600 });
  if (!a || !b) throw new Error('two gateways');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200, 'A: fresh login');
  t.equal((await login(b, 'u0', pw)).status, 200, 'B: the same code rides the linger A started');
  t.equal(b.backend.seen.at(-1)?.headers['remote-user'], 'u0');
  clock.now += 601;
  t.equal((await login(b, 'u0', pw)).status, 401, 'B: after the linger, a replay');
  t.equal((await login(a, 'u0', pw)).status, 401, 'A too');
  t.equal((await login(b, 'u0', `${PIN}${rfcHotp(keys[0] as string, 1)}`)).status, 200, 'B: the next code');
  t.equal((await login(a, 'u0', `${PIN}${rfcHotp(keys[0] as string, 1)}`)).status, 200, 'A: rides B\'s linger');
});

t.test('a logout on A ends the linger on B at once', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a, b] = [] } = await gateways(t, users, 2);
  if (!a || !b) throw new Error('two gateways');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200);
  t.equal((await login(b, 'u0', pw)).status, 200, 'B rides (and caches the linger)');
  t.equal((await request(a.port, { path: '/otpgate/logout', headers: { Authorization: basic('u0', pw) } })).status, 401);
  // The version news reaches B within milliseconds; bounded wait for it.
  let status = 200;
  for (let i = 0; i < 100 && status === 200; i++) {
    status = (await login(b, 'u0', pw)).status;
    if (status === 200) await new Promise((r) => setTimeout(r, 10));
  }
  t.equal(status, 401, 'B refuses the logged-out credentials');
});

t.test('1,000 concurrent logins across three gateways: every counter exact, no code consumed twice', async (t) => {
  const users = 500;
  const { users: text, keys } = hotpUsers(users);
  const { gws, redis } = await gateways(t, text, 3, { maxLinger: 0 });
  const agents = gws.map(() => new Agent({ keepAlive: true, maxSockets: 100 }));
  t.teardown(() => agents.forEach((a) => a.destroy()));
  // Every user's first code is sent to two different gateways at the same time.
  const jobs: Promise<{ user: number; status: number }>[] = [];
  for (let u = 0; u < users; u++) {
    for (const g of [u % 3, (u + 1) % 3]) {
      jobs.push(login(gws[g] as Gw, `u${u}`, `${PIN}${rfcHotp(keys[u] as string, 0)}`, agents[g]).then((r) => ({ user: u, status: r.status })));
    }
  }
  t.equal(jobs.length, 1000);
  const results = await Promise.all(jobs);
  t.same(results.filter((r) => r.status !== 200 && r.status !== 401), [], 'only 200 and 401');
  const granted = results.filter((r) => r.status === 200);
  t.equal(granted.length, users, 'exactly one grant per user');
  t.equal(new Set(granted.map((r) => r.user)).size, users, 'each user consumed its code once (maxLinger 0: no linger to ride)');
  t.equal(gws.reduce((n, gw) => n + gw.backend.seen.length, 0), users, 'the backends saw exactly the grants');
  const client = new Redis(redis.url);
  t.teardown(() => { client.disconnect(); });
  const names = await client.keys('otpgate:token:*');
  t.equal(names.length, users, 'one record per token');
  const counters = await Promise.all(names.map((k) => client.hget(k, 'c')));
  t.same([...new Set(counters)], ['1'], 'every counter exactly 1');
  // A second round, sequential codes from all gateways at once: still exact.
  const second = await Promise.all(keys.map((k, u) =>
    login(gws[(u + 2) % 3] as Gw, `u${u}`, `${PIN}${rfcHotp(k, 1)}`, agents[(u + 2) % 3]).then((r) => r.status)));
  t.same([...new Set(second)], [200], 'the next code of every user logs in');
  t.same([...new Set(await Promise.all(names.map((k) => client.hget(k, 'c'))))], ['2'], 'every counter exactly 2');
});

t.test('one user\'s codes raced at three gateways: each code consumed at most once, the counter never back', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws, redis } = await gateways(t, users, 3, { maxLinger: 0, maxFailures: 0, throttle: { ip: { free: 1000 }, pair: { free: 1000 }, account: { free: 1000 } } });
  const codes = Array.from({ length: 5 }, (_, c) => `${PIN}${rfcHotp(keys[0] as string, c)}`);
  const results = await Promise.all(codes.flatMap((pw, c) => gws.map((gw) => login(gw, 'u0', pw).then((r) => ({ c, status: r.status })))));
  const granted = results.filter((r) => r.status === 200).map((r) => r.c);
  t.equal(new Set(granted).size, granted.length, 'no code granted twice');
  t.ok(granted.length >= 1, 'at least one granted');
  const client = new Redis(redis.url);
  t.teardown(() => { client.disconnect(); });
  const [name] = await client.keys('otpgate:token:*');
  t.equal(Number(await client.hget(name as string, 'c')), Math.max(...granted) + 1, 'counter one past the highest code granted');
});
