// Redis URLs as the state.url key takes them: one server, TLS, Sentinels.
import t from 'tap';
import { parseRedisUrl } from '../src/redisUrl.js';

t.test('one server', async (t) => {
  t.same(parseRedisUrl('redis://127.0.0.1:6380'), { server: { host: '127.0.0.1', port: 6380 }, db: 0, username: undefined, password: undefined, tls: false });
  t.same(parseRedisUrl('rediss://redis.example.com/2'), { server: { host: 'redis.example.com', port: 6379 }, db: 2, username: undefined, password: undefined, tls: true });
  t.match(parseRedisUrl('redis://otpgate:s%40cret@[::1]:6379'), { server: { host: '::1', port: 6379 }, username: 'otpgate', password: 's@cret' });
  t.match(parseRedisUrl('redis://:pw@h'), { username: undefined, password: 'pw' });
});

t.test('Sentinels and the master\'s name', async (t) => {
  t.same(parseRedisUrl('redis+sentinel://10.0.0.1,10.0.0.2:26380/helpdesk/1'), {
    sentinels: [{ host: '10.0.0.1', port: 26379 }, { host: '10.0.0.2', port: 26380 }], masterName: 'helpdesk', db: 1,
    username: undefined, password: undefined, tls: false,
  });
  t.match(parseRedisUrl('rediss+sentinel://:pw@s1:26379/mymaster'), { tls: true, password: 'pw', masterName: 'mymaster' });
});

t.test('what is wrong, in one line, never the password', async (t) => {
  for (const [url, why] of [
    ['http://127.0.0.1:6379', /expected redis:\/\//],
    ['redis://a,b:6379', /several only with redis\+sentinel/],
    ['redis://h:99999', /expected one host/],
    ['redis://h/x', /database number/],
    ['redis://h/16', /database number 0-15/],
    ['redis+sentinel://s1:26379', /master's name/],
    ['redis+sentinel://s1:26379/m/x', /database number/],
    ['redis+sentinel://s1:x/m', /each Sentinel/],
    ['redis://u:%zz@h', /malformed %-escape/],
  ] as const) {
    const r = parseRedisUrl(url);
    t.type(r, 'string', url);
    t.match(r, why, url);
  }
  t.notMatch(parseRedisUrl('redis://u:hunter2@a,b'), /hunter2/, 'the password is not echoed');
  for (const url of ['redis://otpgate:S3cr@tPass@10.0.0.5:6379', 'redis://otpgate:Pa/ssword9@10.0.0.5', 'redis+sentinel://:x@y@s1,s2/m']) {
    const r = parseRedisUrl(url);
    t.type(r, 'string', 'a password with an unescaped @ or / is refused');
    t.notMatch(r, /tPass|ssword9|Pa|x@y|y@/, 'and no part of it is echoed');
  }
});
