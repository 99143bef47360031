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
import { startRedis, startSentinel, type RedisServer } from './lib/redis.js';
import { RedisTokenStore } from '../src/redisState.js';
import { parseLine } from '../src/usersFileFormat.js';

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
  const client = new Redis(redis.url).on('error', () => undefined);
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
  const client = new Redis(redis.url).on('error', () => undefined);
  t.teardown(() => { client.disconnect(); });
  const [name] = await client.keys('otpgate:token:*');
  t.equal(Number(await client.hget(name as string, 'c')), Math.max(...granted) + 1, 'counter one past the highest code granted');
});

/** Wait (bounded) until `check` holds. */
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('throttling counts failures across gateways', async (t) => {
  const { users } = hotpUsers(2);
  const { gws: [a, b, c] = [] } = await gateways(t, users, 3, {
    maxFailures: 5, throttle: { pair: { free: 2, baseSeconds: 60 }, account: { free: 100 }, ip: { free: 100 } },
  });
  if (!a || !b || !c) throw new Error('three gateways');
  const wrong = `${PIN}000000`;
  // Three guesses at u0, one per gateway: every gateway counts all three.
  for (const [k, gw] of [a, b, c].entries()) {
    t.equal((await login(gw, 'u0', wrong)).status, 401, `guess ${k + 1} on gateway ${'ABC'[k]}`);
    await until(() => [a, b, c].every((g) => g.running.gateway.throttle.size >= 2), 'every gateway to count the guess');
  }
  const throttled = await login(a, 'u0', wrong);
  t.equal(throttled.status, 429, 'the fourth guess waits, on any gateway');
  t.equal((await login(b, 'u0', wrong)).status, 429);
  t.ok(Number(throttled.headers['retry-after']) > 0, 'with Retry-After');
});

t.test('a lock counts failures on every gateway exactly (in Redis)', async (t) => {
  const { users, keys } = hotpUsers(2);
  const { gws: [a, b, c] = [] } = await gateways(t, users, 3, {
    maxFailures: 5, throttle: { pair: { free: 100 }, account: { free: 100 }, ip: { free: 100 } },
  });
  if (!a || !b || !c) throw new Error('three gateways');
  for (const [k, gw] of [a, b, c, a, b].entries()) {
    t.equal((await login(gw, 'u1', `${PIN}${String(111111 * (k + 1)).slice(0, 6)}`)).status, 401);
  }
  const right = `${PIN}${rfcHotp(keys[1] as string, 0)}`;
  t.equal((await login(c, 'u1', right)).status, 401, 'five failures on three gateways lock u1: the right code is refused');
  t.same(c.logs.lines.filter((l) => l.event === 'auth' && l.user === 'u1').map((l) => l.reason).at(-1), 'locked');
});

t.test('a time token: used on A, a replay on B once the linger is over', async (t) => {
  const key = secretKey(randomBytes(20).toString('hex'));
  const { gws: [a, b] = [], clock } = await gateways(t, `HOTP/T30 tina ${PIN} ${key} 0\n`, 2, { maxLinger: 60 });
  if (!a || !b) throw new Error('two gateways');
  const pw = `${PIN}${rfcTotp(key, clock.now)}`;
  t.equal((await login(a, 'tina', pw)).status, 200);
  t.equal((await login(b, 'tina', pw)).status, 200, 'rides on B');
  clock.now += 61;
  t.equal((await login(b, 'tina', pw)).status, 401, 'a replay on B after the linger (its step is within the window still)');
  t.equal((await login(b, 'tina', `${PIN}${rfcTotp(key, clock.now)}`)).status, 200, 'the current code');
});

t.test('switching from the file: Redis starts from the file\'s counters, never goes below what it has, and a file ahead wins', async (t) => {
  const key = secretKey(randomBytes(20).toString('hex'));
  const code = (c: number): string => `${PIN}${rfcHotp(key, c)}`;
  const { gws: [a] = [], redis } = await gateways(t, `HOTP ann ${PIN} ${key} 5\n`, 1, { maxLinger: 0 });
  if (!a) throw new Error('a gateway');
  t.equal((await login(a, 'ann', code(4))).status, 401, 'a code before the file\'s counter: used under the file store');
  t.equal((await login(a, 'ann', code(6))).status, 200, 'the file\'s counter goes on in Redis');
  // The file on disk is never written in this mode.
  t.equal(readFileSync(a.usersPath, 'utf8'), `HOTP ann ${PIN} ${key} 5\n`, 'the users file unchanged');
  // A copy of the file behind Redis (an old backup, a gateway's stale copy): Redis's counter holds.
  writeFileSync(a.usersPath, `HOTP ann ${PIN} ${key} 2\n`);
  await a.running.users.reload();
  t.equal((await login(a, 'ann', code(3))).status, 401, 'a file behind Redis lowers nothing');
  // A file ahead (a gateway ran on the file meanwhile, then the file was copied here): the file wins.
  writeFileSync(a.usersPath, `HOTP ann ${PIN} ${key} 12\n`);
  await a.running.users.reload();
  t.equal((await login(a, 'ann', code(9))).status, 401, 'a code the file store consumed meanwhile is refused');
  t.equal((await login(a, 'ann', code(12))).status, 200);
  const client = new Redis(redis.url).on('error', () => undefined);
  t.teardown(() => { client.disconnect(); });
  const [name] = await client.keys('otpgate:token:*');
  t.equal(await client.hget(name as string, 'c'), '13', 'Redis has the file\'s counter plus the login');
});

t.test('kill -9 and restart of redis-server during logins: no counter back, no replay granted, gateways recover by themselves', async (t) => {
  const n = 12;
  const { users, keys } = hotpUsers(n);
  const { gws, redis } = await gateways(t, users, 2, { maxLinger: 0 });
  const granted: number[][] = keys.map(() => []);
  const statuses = new Map<number, number>();
  let stop = false;
  const worker = async (u: number): Promise<void> => {
    let c = 0;
    for (let i = 0; !stop && i < 2000; i++) {
      const r = await login(gws[i % 2] as Gw, `u${u}`, `${PIN}${rfcHotp(keys[u] as string, c)}`);
      statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
      if (r.status === 200) granted[u]?.push(c);
      // 401: the code was consumed by a write whose answer was lost with the connection (a 503): the next one.
      if (r.status === 200 || r.status === 401) c++;
      else await new Promise((res) => setTimeout(res, 20));
    }
  };
  const running = keys.map((_k, u) => worker(u));
  await new Promise((r) => setTimeout(r, 300));
  await redis.kill();
  await new Promise((r) => setTimeout(r, 300));
  await redis.restart();
  for (const gw of gws) await connected(gw);
  const after = granted.map((g) => g.length);
  await until(() => granted.every((g, u) => g.length > (after[u] ?? 0)), 'every user to log in again after the restart');
  stop = true;
  await Promise.all(running);
  t.ok((statuses.get(503) ?? 0) > 0, `some logins got 503 while Redis was down (${JSON.stringify([...statuses])})`);
  t.same([...statuses.keys()].filter((s) => ![200, 401, 503].includes(s)), [], 'nothing but 200, 401 and 503');
  const client = new Redis(redis.url).on('error', () => undefined);
  t.teardown(() => { client.disconnect(); });
  for (let u = 0; u < n; u++) {
    const g = granted[u] as number[];
    t.ok(g.every((c, k) => k === 0 || c > (g[k - 1] as number)), `u${u}: no code granted twice, none out of order`);
    const last = g.at(-1) as number;
    t.equal((await login(gws[0] as Gw, `u${u}`, `${PIN}${rfcHotp(keys[u] as string, last)}`)).status, 401, `u${u}: its last code is a replay`);
  }
  // Every acknowledged write survived the kill (appendfsync always): no counter below what was granted.
  const store = new RedisTokenStore(client, 'otpgate:');
  for (let u = 0; u < n; u++) {
    const parsed = parseLine(`HOTP u${u} ${PIN} ${keys[u] as string} 0`, 1);
    if (parsed.kind !== 'token') throw new Error('token line');
    const { state } = await store.read(parsed.token);
    t.ok((state?.counter ?? 0) >= ((granted[u] as number[]).at(-1) as number) + 1, `u${u}: Redis's counter past its last granted code`);
  }
});

t.test('Redis stopped: 503 with a page for fresh logins, lingers ride for lingerWhileDown, health and metrics say so; back: logins go on', async (t) => {
  const { users, keys } = hotpUsers(2);
  const { gws: [a] = [], redis, clock } = await gateways(t, users, 1, { metricsListen: '127.0.0.1:0', state: { lingerWhileDown: 60 } });
  if (!a) throw new Error('a gateway');
  const metric = async (name: string): Promise<string | undefined> => {
    const port = a.running.metricsAddress?.port;
    const text = (await request(port as number, { path: '/metrics' })).body.toString();
    return new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1];
  };
  const lingering = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', lingering)).status, 200, 'u0 logs in before the outage');
  t.equal(await metric('otpgate_state_store_up'), '1');
  await redis.kill();
  await connected(a, false);
  const fresh = await login(a, 'u1', `${PIN}${rfcHotp(keys[1] as string, 0)}`);
  t.equal(fresh.status, 503, 'a fresh login: 503');
  t.match(fresh.body.toString(), /cannot check logins right now/, 'with a page that says so');
  t.equal((await login(a, 'nobody', `${PIN}123456`)).status, 503, 'an unknown login alike');
  t.equal((await login(a, 'u0', lingering)).status, 200, 'a session seen lingering rides on');
  t.ok(a.logs.lines.some((l) => l.event === 'state_store_down' && l.level === 50), 'an error line in the log');
  const health = await request(a.port, { path: '/otpgate/health' });
  t.equal(health.status, 200);
  t.match(JSON.parse(health.body.toString()), { status: 'degraded', state: { store: 'redis', connected: false } });
  t.equal(await metric('otpgate_state_store_up'), '0');
  clock.now += 61;
  t.equal((await login(a, 'u0', lingering)).status, 503, 'after lingerWhileDown, the linger too');
  t.equal((await request(a.port, { path: '/otpgate/health' })).status, 503, 'health: 503');
  await redis.restart();
  await connected(a);
  t.equal((await login(a, 'u1', `${PIN}${rfcHotp(keys[1] as string, 0)}`)).status, 200, 'back: a fresh login');
  t.equal((await login(a, 'u0', lingering)).status, 200, 'and the linger (its record read again)');
  t.ok(a.logs.lines.some((l) => l.event === 'state_store_up'), 'the log says it is back');
  t.match(JSON.parse((await request(a.port, { path: '/otpgate/health' })).body.toString()), { status: 'ok', state: { connected: true } });
});

t.test('lingerWhileDown 0: while Redis is down, lingers get 503 too (fail closed at once)', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a] = [], redis } = await gateways(t, users, 1, { state: { lingerWhileDown: 0 } });
  if (!a) throw new Error('a gateway');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200);
  t.equal((await login(a, 'u0', pw)).status, 200, 'rides');
  await redis.kill();
  await connected(a, false);
  t.equal((await login(a, 'u0', pw)).status, 503, 'the linger: 503');
  t.equal((await request(a.port, { path: '/otpgate/health' })).status, 503, 'health: 503 at once');
});

t.test('Sentinel: the gateway finds the master, follows a failover, and a used code stays used (waitReplicas 1)', async (t) => {
  const master = await startRedis(t);
  // Two replicas: after the failover the new master still has one to WAIT for.
  const replicas = [await startRedis(t, { replicaOf: master.port }), await startRedis(t, { replicaOf: master.port })];
  const clients = replicas.map((r) => new Redis(r.url).on('error', () => undefined));
  t.teardown(() => { clients.forEach((c) => c.disconnect()); });
  for (const c of clients) {
    for (let i = 0; i < 200 && !/master_link_status:up/.test(await c.info('replication')); i++) await new Promise((r) => setTimeout(r, 25));
  }
  // Started once the replica is attached: its first look at the master finds the replica.
  const sentinel = await startSentinel(t, master.port, 'helpdesk');
  const { users, keys } = hotpUsers(1);
  const code = (c: number): string => `${PIN}${rfcHotp(keys[0] as string, c)}`;
  const gw = await startGateway(t, users, {
    config: { logLevel: 'info', maxLinger: 0, state: { store: 'redis', url: `redis+sentinel://127.0.0.1:${sentinel.port}/helpdesk`, waitReplicas: 1 } },
  });
  await connected(gw);
  t.equal((await login(gw, 'u0', code(0))).status, 200, 'a login through the master Sentinel named');
  t.equal((await login(gw, 'u0', code(1))).status, 200);
  await master.kill();
  // Sentinel promotes the replica (down after 300 ms); the gateway asks Sentinel again and reconnects.
  let status = 0;
  for (let i = 0; i < 150 && status !== 200; i++) {
    status = (await login(gw, 'u0', code(2))).status;
    if (status !== 200) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(status, 200, 'logins go on after the failover');
  const roles = await Promise.all(clients.map(async (c) => /role:master/.test(await c.info('replication'))));
  t.equal(roles.filter(Boolean).length, 1, 'on a promoted replica');
  t.equal((await login(gw, 'u0', code(1))).status, 401, 'a code used before the failover is still used');
  t.equal((await login(gw, 'u0', code(2))).status, 401, 'and the one after it');
});

t.test('waitReplicas: a login no replica confirmed in time is not granted (503)', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a] = [] } = await gateways(t, users, 1, { state: { waitReplicas: 1, commandTimeout: 0.5 } });
  if (!a) throw new Error('a gateway');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 503);
  t.ok(a.logs.lines.some((l) => l.event === 'state_store_replicas' && l.acked === 0), 'the log says why');
  t.equal((await login(a, 'u0', pw)).status, 401, 'the browser\'s retry does not ride a linger no replica has: the code is used');
});

t.test('a new PIN in the file ends the rides of the old credentials at once', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a] = [] } = await gateways(t, users, 1);
  if (!a) throw new Error('a gateway');
  const code = rfcHotp(keys[0] as string, 0);
  t.equal((await login(a, 'u0', `${PIN}${code}`)).status, 200);
  t.equal((await login(a, 'u0', `${PIN}${code}`)).status, 200, 'rides');
  const pin2 = secret('n3wPinQx');
  writeFileSync(a.usersPath, users.replace(PIN, pin2));
  await a.running.users.reload();
  t.equal((await login(a, 'u0', `${PIN}${code}`)).status, 401, 'the old PIN rides no more');
  t.equal((await login(a, 'u0', `${pin2}${code}`)).status, 200, 'the new PIN with the same code rides the linger');
});

t.test('started while Redis is unreachable: says so in the log, 503 for logins, connects once Redis is there', async (t) => {
  const redis = await startRedis(t);
  await redis.kill();
  const { users, keys } = hotpUsers(1);
  const gw = await startGateway(t, users, { config: { logLevel: 'info', state: { store: 'redis', url: redis.url } } });
  await until(() => gw.logs.lines.some((l) => l.event === 'state_store_down'), 'the down line');
  t.equal(gw.logs.lines.filter((l) => l.event === 'state_store_down').length, 1, 'logged once, not at every retry');
  t.equal((await login(gw, 'u0', `${PIN}${rfcHotp(keys[0] as string, 0)}`)).status, 503);
  t.notMatch(gw.logs.text(), /\bat .*\.js:\d+/, 'no stack trace');
  await redis.restart();
  await connected(gw);
  t.equal((await login(gw, 'u0', `${PIN}${rfcHotp(keys[0] as string, 0)}`)).status, 200, 'logins once it is there');
});

t.test('a hung Redis (SIGSTOP, connections open) is noticed within seconds: 503, health, lingerWhileDown; back when it resumes', async (t) => {
  const { users, keys } = hotpUsers(2);
  const { gws: [a] = [], redis, clock } = await gateways(t, users, 1, { state: { commandTimeout: 0.5, lingerWhileDown: 60 } });
  if (!a) throw new Error('a gateway');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200);
  redis.pause();
  await connected(a, false);
  t.ok(a.logs.lines.some((l) => l.event === 'state_store_unresponsive'), 'the heartbeat found it');
  t.equal((await login(a, 'u1', `${PIN}${rfcHotp(keys[1] as string, 0)}`)).status, 503, 'a fresh login: 503');
  t.equal((await login(a, 'u0', pw)).status, 200, 'the linger rides within lingerWhileDown');
  clock.now += 61;
  t.equal((await login(a, 'u0', pw)).status, 503, 'then not');
  redis.resume();
  await connected(a);
  t.equal((await login(a, 'u1', `${PIN}${rfcHotp(keys[1] as string, 0)}`)).status, 200, 'back');
});

t.test('a logout while Redis is down: 503, not a 401 that looks like a logout', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a] = [], redis } = await gateways(t, users, 1);
  if (!a) throw new Error('a gateway');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200);
  await redis.kill();
  await connected(a, false);
  t.equal((await request(a.port, { path: '/otpgate/logout', headers: { Authorization: basic('u0', pw) } })).status, 503);
});

t.test('two lines of one token (different PINs) cannot log in with store: redis, and say why', async (t) => {
  const key = secretKey(randomBytes(20).toString('hex'));
  const pin2 = secret('0therPinZ');
  const { gws: [a] = [] } = await gateways(t, `HOTP dup ${PIN} ${key} 0\nHOTP dup ${pin2} ${key} 0\n`, 1);
  if (!a) throw new Error('a gateway');
  t.equal((await login(a, 'dup', `${PIN}${rfcHotp(key, 0)}`)).status, 401);
  t.ok(a.logs.lines.some((l) => l.event === 'users_file_line' && /two lines with the same token type and key/.test(String(l.msg))));
});

t.test('another gateway\'s wrong guess does not cost a lingering session its cached ride', async (t) => {
  const { users, keys } = hotpUsers(1);
  const { gws: [a, b] = [] } = await gateways(t, users, 2);
  if (!a || !b) throw new Error('two gateways');
  const pw = `${PIN}${rfcHotp(keys[0] as string, 0)}`;
  t.equal((await login(a, 'u0', pw)).status, 200);
  t.equal((await login(b, 'u0', `${PIN}999999`)).status, 401, 'a guess on B changes the record');
  await new Promise((r) => setTimeout(r, 50));
  t.equal((await login(a, 'u0', pw)).status, 200, 'A rides on after reading the record again');
  t.ok(a.logs.lines.every((l) => l.reason !== 'bad_pin' && l.reason !== 'bad_otp'), 'no full check that could count');
});
