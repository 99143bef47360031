// Token state in a real redis-server (AOF, fsync always): compare-and-set
// under concurrency from several connections, an idle clock that only moves
// forward, every write announced, state that survives kill -9, and no secret
// in Redis.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { eventOf, RedisTokenStore } from '../src/redisState.js';
import { parseLine, type TokenLine } from '../src/usersFileFormat.js';
import { secret, secretKey } from './lib/harness.js';
import { startRedis } from './lib/redis.js';

const KEY = secretKey(randomBytes(20).toString('hex'));
const PIN = secret('r3disPinQ');

function token(line: string): TokenLine {
  const p = parseLine(line, 1);
  if (p.kind !== 'token') throw new Error('not a token line');
  return p.token;
}

const client = (t: { teardown(fn: () => void | Promise<void>): void }, url: string): Redis => {
  const redis = new Redis(url, { lazyConnect: false, maxRetriesPerRequest: 20 }).on('error', () => undefined);
  t.teardown(() => { redis.disconnect(); });
  return redis;
};

t.test('compare-and-set: the version decides; exactly one of many concurrent writers wins', async (t) => {
  const server = await startRedis(t);
  const tok = token(`HOTP alice ${PIN} ${KEY} 0 0`);
  const stores = Array.from({ length: 4 }, () => new RedisTokenStore(client(t, server.url), 'otpgate:'));
  const [store] = stores as [RedisTokenStore];
  t.same(await store.read(tok), { version: 0, state: undefined }, 'nothing yet');
  const first = { counter: 1, failures: 0, lastOtp: '123456', lastTime: 1_800_000_000, lastIp: '10.0.0.1' };
  t.equal(await store.compareAndSet(tok, 0, first), true);
  t.match(await store.read(tok), { version: 1, state: first });
  t.equal(await store.compareAndSet(tok, 0, { counter: 9, failures: 0 }), false, 'a stale version writes nothing');
  // 200 gateways' worth of writers, all having decided on version 1: one consumes, the rest must decide again.
  const results = await Promise.all(Array.from({ length: 200 }, (_, k) =>
    (stores[k % stores.length] as RedisTokenStore).compareAndSet(tok, 1, { counter: 2 + k, failures: 0 })));
  t.equal(results.filter(Boolean).length, 1, 'exactly one write at version 1');
  const after = await store.read(tok);
  t.equal(after.version, 2);
  t.equal(after.state?.counter, 2 + results.indexOf(true), 'the winner\'s state');
  t.equal(after.state?.lastOtp, undefined, 'fields the new state leaves out are gone');
});

t.test('a user\'s lines together: all or nothing, also for a line only checked', async (t) => {
  const server = await startRedis(t);
  const store = new RedisTokenStore(client(t, server.url), 'otpgate:');
  const a = token(`HOTP fay ${PIN} ${KEY} 0 2`);
  const b = token(`HOTP/T30 fay ${PIN} ${secretKey(randomBytes(20).toString('hex'))} 0 2`);
  t.equal(await store.compareAndSetAll([{ key: store.keyOf(a), version: 0, next: { counter: 0, failures: 2 } }, { key: store.keyOf(b), version: 0, next: { counter: 0, failures: 2 } }]), 1);
  // A login on line a also clears line b's failures: both written at once.
  t.equal(await store.compareAndSetAll([
    { key: store.keyOf(a), version: 1, next: { counter: 1, failures: 0, lastOtp: '333333', lastTime: 1_800_000_000, lastIp: '10.0.0.2' } },
    { key: store.keyOf(b), version: 1, next: { counter: 0, failures: 0 } },
  ]), 2, 'the new version');
  t.same([(await store.read(a)).version, (await store.read(b)).version], [2, 2]);
  // Another gateway wrote line b meanwhile: a decision that read b at version 2 writes nothing, not even on a.
  t.equal(await store.compareAndSet(b, 2, { counter: 0, failures: 1 }), true);
  t.equal(await store.compareAndSetAll([{ key: store.keyOf(a), version: 2, next: { counter: 2, failures: 0 } }, { key: store.keyOf(b), version: 2 }]), 0);
  t.equal((await store.read(a)).state?.counter, 1, 'line a untouched');
  t.equal(await store.compareAndSetAll([{ key: store.keyOf(a), version: 2, next: { counter: 2, failures: 0 } }, { key: store.keyOf(b), version: 3 }]), 4,
    'decided again on what is there: written');
  t.same([(await store.read(a)).version, (await store.read(b)).version, (await store.read(b)).state?.failures], [4, 3, 1],
    'a line only checked keeps its state and version; versions come from one sequence');
});

t.test('a touch moves the idle clock forward only, without a version; a write never moves it back', async (t) => {
  const server = await startRedis(t);
  const store = new RedisTokenStore(client(t, server.url), 'otpgate:');
  const tok = token(`HOTP gina ${PIN} ${KEY} 0 0`);
  await store.touch(store.keyOf(tok), 1_800_000_100);
  t.same(await store.read(tok), { version: 0, state: undefined }, 'a token Redis does not know is not created');
  t.equal(await store.compareAndSet(tok, 0, { counter: 1, failures: 0, lastActive: 1_800_000_050 }), true);
  await store.touch(store.keyOf(tok), 1_800_000_200);
  await store.touch(store.keyOf(tok), 1_800_000_150);
  t.match(await store.read(tok), { version: 1, state: { lastActive: 1_800_000_200 } }, 'forward only, same version');
  t.equal(await store.compareAndSet(tok, 1, { counter: 2, failures: 0, lastActive: 1_800_000_180 }), true);
  t.match(await store.read(tok), { version: 2, state: { counter: 2, lastActive: 1_800_000_200 } }, 'an older clock in a write is ignored');
});

t.test('every write is announced on the events channel with its new version', async (t) => {
  const server = await startRedis(t);
  const store = new RedisTokenStore(client(t, server.url), 'otpgate:');
  const sub = client(t, server.url);
  const got: string[] = [];
  sub.on('message', (_c: string, m: string) => got.push(m));
  await sub.subscribe(store.channel);
  const tok = token(`HOTP hank ${PIN} ${KEY} 0 0`);
  await store.compareAndSet(tok, 0, { counter: 1, failures: 0 });
  t.equal(await store.compareAndSet(tok, 0, { counter: 9, failures: 0 }), false);
  await store.publishThrottle('gw1', { type: 'failed', login: 'hank', ip: '10.0.0.1', known: true, usual: false });
  for (let i = 0; i < 100 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  t.same(got.map(eventOf), [
    { kind: 'version', key: store.keyOf(tok), version: 1 },
    { kind: 'throttle', from: 'gw1', event: { type: 'failed', login: 'hank', ip: '10.0.0.1', known: true, usual: false } },
  ], 'one announcement for the write, none for the lost race, then the throttle news');
  t.equal(eventOf('x junk'), undefined, 'an unknown message is ignored');
  t.equal(eventOf('t {not json'), undefined);
});

t.test('kill -9 of redis-server: what was written is there after the restart, and the client reconnects by itself', async (t) => {
  const server = await startRedis(t);
  const store = new RedisTokenStore(client(t, server.url), 'otpgate:');
  const tok = token(`HOTP dora ${PIN} ${KEY} 0 0`);
  for (let v = 0; v < 50; v++) t.equal(await store.compareAndSet(tok, v, { counter: v + 1, failures: 0 }), true);
  await server.kill();
  await server.restart();
  t.match(await store.read(tok), { version: 50, state: { counter: 50, failures: 0, lastOtp: undefined } }, 'every acknowledged write survived (appendfsync always)');
});

t.test('a version never repeats: a record deleted and written again gets a new one', async (t) => {
  const server = await startRedis(t);
  const redis = client(t, server.url);
  const store = new RedisTokenStore(redis, 'otpgate:');
  const tok = token(`HOTP ida ${PIN} ${KEY} 0 0`);
  t.equal(await store.compareAndSet(tok, 0, { counter: 1, failures: 0 }), true);
  t.equal(await store.compareAndSet(tok, 1, { counter: 2, failures: 0 }), true);
  await redis.del(store.keyOf(tok));
  t.equal(await store.compareAndSetAll([{ key: store.keyOf(tok), version: 0, next: { counter: 1, failures: 0 } }]), 3,
    'a gateway that cached version 2 sees 3, not 1 again');
});

t.test('Redis holds no login, PIN or key', async (t) => {
  const server = await startRedis(t);
  const redis = client(t, server.url);
  const store = new RedisTokenStore(redis, 'otpgate:');
  const tok = token(`HOTP erin ${PIN} ${KEY} 0 0`);
  await store.compareAndSet(tok, 0, { counter: 1, failures: 0, lastOtp: '222222', lastTime: 1_800_000_000, lastIp: '10.0.0.9' });
  const keys = await redis.keys('*');
  t.same(keys.sort(), [store.keyOf(tok), 'otpgate:version'].sort(), 'a record and the version sequence');
  t.match(store.keyOf(tok), /^otpgate:token:[0-9a-f]{64}$/);
  const dump = JSON.stringify([keys, await redis.hgetall(store.keyOf(tok))]);
  for (const s of ['erin', PIN, KEY]) t.notOk(dump.includes(s), 'neither in key names nor in values');
});
