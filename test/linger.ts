import t from 'tap';
import { lingerActive, type LingerPolicy } from '../src/linger.js';

const P: LingerPolicy = { maxLinger: 600, logoutOnIpChange: false };
const rec = { lastOtp: '123456', lastTime: 1000, lastIp: '10.0.0.1' };

t.test('maxLinger counts from first use', async (t) => {
  t.ok(lingerActive(rec, '10.0.0.1', 1000, P), 'at first use');
  t.ok(lingerActive(rec, '10.0.0.1', 1599, P));
  t.notOk(lingerActive(rec, '10.0.0.1', 1600, P), 'ends at maxLinger');
  t.notOk(lingerActive({ ...rec, lastActive: 1590 }, '10.0.0.1', 1600, P), 'activity does not extend it');
  t.notOk(lingerActive(rec, '10.0.0.1', 999, P), 'a last use in the future is not trusted');
});

t.test('maxIdle slides; the earlier limit wins', async (t) => {
  const p = { ...P, maxIdle: 100 };
  t.ok(lingerActive(rec, 'x', 1099, p));
  t.notOk(lingerActive(rec, 'x', 1100, p));
  t.ok(lingerActive({ ...rec, lastActive: 1550 }, 'x', 1599, p));
  t.notOk(lingerActive({ ...rec, lastActive: 1550 }, 'x', 1600, p), 'maxLinger still ends it');
  t.notOk(lingerActive({ ...rec, lastActive: 500 }, 'x', 1100, p), 'a stale activity time older than the use does not count');
});

t.test('IP rules and missing fields', async (t) => {
  t.ok(lingerActive(rec, '10.9.9.9', 1001, P));
  t.notOk(lingerActive(rec, '10.9.9.9', 1001, { ...P, logoutOnIpChange: true }));
  t.ok(lingerActive(rec, '10.0.0.1', 1001, { ...P, logoutOnIpChange: true }));
  t.notOk(lingerActive({ lastOtp: '1', lastTime: 1000 }, '10.0.0.1', 1001, P), 'no IP: a pam_oath login, no linger');
  t.notOk(lingerActive({ lastTime: 1000, lastIp: 'x' }, 'x', 1001, P));
  t.notOk(lingerActive(rec, '10.0.0.1', 1001, { ...P, maxLinger: 0 }));
});
