import t from 'tap';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig, parseConfig, parseListen } from '../src/config.js';
import { tempDir, writeFile600 } from './lib/harness.js';

t.test('defaults from the contract', async (t) => {
  const r = parseConfig('upstream: http://127.0.0.1:8081\nusersFile: users\n', 'c.yaml', '/etc/otpgate');
  if (!r.ok) throw new Error(r.errors.join('\n'));
  const c = r.config;
  t.same(c.listen, { host: '127.0.0.1', port: 8080 });
  t.equal(c.upstream.href, 'http://127.0.0.1:8081/');
  t.equal(c.usersFile, '/etc/otpgate/users', 'relative to the config file');
  t.match(c, {
    realm: 'Helpdesk', maxOffset: 4, maxLinger: 600, logoutOnIpChange: false, maxFailures: 5, lockoutSeconds: 300,
    upstreamTimeout: 60, identityHeader: 'Remote-User', logoutPath: '/otpgate/logout', healthPath: '/otpgate/health',
  });
  t.same([c.allowInsecurePermissions, c.allowSymlinkedUsersFile, c.allowUnsafeUsersFileDirectory], [false, false, false],
    'every users-file safety check is on unless turned off');
  t.equal(c.maxIdle, undefined);
  t.equal(c.tls, undefined);
  t.same(c.trustedProxies, []);
});

t.test('every key set', async (t) => {
  const r = parseConfig(`
listen: "[::1]:9443"
upstream: https://helpdesk.internal/otrs
usersFile: /var/lib/otpgate/otp-users
realm: Znuny
maxOffset: 8
maxLinger: 900
maxIdle: 300
logoutOnIpChange: true
maxFailures: 0
lockoutSeconds: 0
upstreamTimeout: 2.5
identityHeader: X-Auth-User
logoutPath: /logout
healthPath: /healthz
tls: { cert: tls/cert.pem, key: tls/key.pem }
trustedProxies: [10.0.0.0/8, "::1", 192.0.2.1]
allowInsecurePermissions: true
allowSymlinkedUsersFile: true
allowUnsafeUsersFileDirectory: true
`, 'c.yaml', '/etc/otpgate');
  if (!r.ok) throw new Error(r.errors.join('\n'));
  t.same(r.config.listen, { host: '::1', port: 9443 });
  t.same(r.config.tls, { cert: '/etc/otpgate/tls/cert.pem', key: '/etc/otpgate/tls/key.pem' });
  t.ok(r.config.trusted.check('10.2.3.4', 'ipv4'));
  t.notOk(r.config.trusted.check('11.2.3.4', 'ipv4'));
  t.equal(r.config.maxIdle, 300);
  t.same([r.config.allowInsecurePermissions, r.config.allowSymlinkedUsersFile, r.config.allowUnsafeUsersFileDirectory], [true, true, true]);
});

t.test('all errors at once, one line each naming the file and key', async (t) => {
  const r = parseConfig(`
listen: nowhere
upstream: ftp://x
maxOffset: many
maxLinger: -1
maxIdle: 0
logoutOnIpChange: "yes"
identityHeader: "Bad Header"
logoutPath: logout
tls: { cert: a }
trustedProxies: [10.0.0.0/33, banana]
colour: blue
allowSymlinkedUsersFile: "yes"
allowUnsafeUsersFileDirectory: 1
`, 'otpgate.yaml', '/etc');
  t.equal(r.ok, false);
  if (r.ok) return;
  const text = r.errors.join('\n');
  for (const key of ['maxOffset', 'maxLinger', 'maxIdle', 'logoutOnIpChange', 'identityHeader', 'logoutPath', 'tls.key', 'colour',
    'allowSymlinkedUsersFile', 'allowUnsafeUsersFileDirectory']) {
    t.match(text, new RegExp(`^otpgate\\.yaml: ${key.replace('.', '\\.')}: `, 'm'), key);
  }
  t.match(text, /colour: unknown key/);
  t.notMatch(text, /\n\n/);
  for (const line of r.errors) t.notMatch(line, /\n/, 'one line each');
  // the second phase (listen, upstream, trustedProxies) once the schema holds
  const r2 = parseConfig('listen: nowhere\nupstream: ftp://x\nusersFile: u\ntrustedProxies: [10.0.0.0/33, banana]\n', 'o.yaml', '/');
  t.equal(r2.ok, false);
  if (r2.ok) return;
  t.match(r2.errors.join('\n'), /o\.yaml: listen: .*\no\.yaml: upstream: .*\no\.yaml: trustedProxies\[0\].*\no\.yaml: trustedProxies\[1\]/);
});

t.test('required keys, identity headers that cannot work, YAML syntax errors', async (t) => {
  const r = parseConfig('realm: x\n', 'c.yaml', '/');
  t.equal(r.ok, false);
  if (!r.ok) t.match(r.errors.join('\n'), /upstream: required/);
  for (const h of ['Authorization', 'Host', 'Connection', 'X-Forwarded-For', 'x_forwarded_for', 'Cookie']) {
    const r2 = parseConfig(`upstream: http://a\nusersFile: u\nidentityHeader: ${h}\n`, 'c.yaml', '/');
    t.equal(r2.ok, false, h);
  }
  const bad = parseConfig('upstream: [unclosed\n', 'c.yaml', '/');
  t.equal(bad.ok, false);
  if (!bad.ok) t.match(bad.errors[0], /^c\.yaml:\d+:\d+: /);
  const dup = parseConfig('upstream: http://a\nupstream: http://b\nusersFile: u\n', 'c.yaml', '/');
  t.equal(dup.ok, false, 'duplicate keys');
  const list = parseConfig('- a\n- b\n', 'c.yaml', '/');
  t.equal(list.ok, false);
  t.equal(parseConfig('upstream: http://user:pw@a\nusersFile: u\n', 'c.yaml', '/').ok, false, 'no credentials in upstream');
});

t.test('listen addresses', async (t) => {
  t.same(parseListen('0.0.0.0:80'), { host: '0.0.0.0', port: 80 });
  t.same(parseListen('[::]:8080'), { host: '::', port: 8080 });
  t.same(parseListen('localhost:1'), { host: 'localhost', port: 1 });
  t.equal(parseListen('::1:8080'), undefined, 'IPv6 needs brackets');
  t.equal(parseListen('host:99999'), undefined);
  t.equal(parseListen('[nothex]:80'), undefined);
  t.equal(parseListen('8080'), undefined);
});

t.test('loadConfig reads the file and names it when it cannot', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otpgate.yaml'), 'upstream: http://127.0.0.1:1\nusersFile: ./users\n');
  const r = loadConfig(file);
  t.equal(r.ok, true);
  if (r.ok) t.equal(r.config.usersFile, join(dir, 'users'));
  const missing = loadConfig(join(dir, 'nope.yaml'));
  t.equal(missing.ok, false);
  if (!missing.ok) t.match(missing.errors[0], /nope\.yaml: cannot read config file \(ENOENT\)/);
});

t.test('throttle and lock growth: defaults, nested keys named in errors', async (t) => {
  const r = parseConfig('upstream: http://127.0.0.1:1\nusersFile: u\nthrottle: { ip: { free: 10 } }\n', 'c.yaml', '/etc');
  if (!r.ok) throw new Error(r.errors.join('\n'));
  t.same(r.config.throttle, {
    pair: { free: 5, baseSeconds: 1, maxSeconds: 900, quietSeconds: 3600 },
    account: { free: 5, baseSeconds: 1, maxSeconds: 900, quietSeconds: 3600 },
    ip: { free: 10, baseSeconds: 1, maxSeconds: 900, quietSeconds: 300 },
    usualIpDays: 30, maxEntries: 100_000,
  }, 'unset keys take their defaults, also inside a partly set rule');
  t.equal(r.config.maxLockoutSeconds, 3600);
  t.equal(r.config.permanentLockAfter, 100);
  const bad = parseConfig('upstream: http://127.0.0.1:1\nusersFile: u\nthrottle: { pair: { free: -1, wait: 3 }, maxEntries: 5 }\n', 'c.yaml', '/etc');
  t.same(bad.ok ? [] : bad.errors.sort(), [
    'c.yaml: throttle.maxEntries: Too small: expected number to be >=1000',
    'c.yaml: throttle.pair.free: expected 0 or more',
    'c.yaml: throttle.pair.wait: unknown key',
  ]);
});

t.test('config/otpgate.yaml, the commented example, is valid and sets every key to its default', async (t) => {
  const example = readFileSync(new URL('../config/otpgate.yaml', import.meta.url), 'utf8');
  const r = parseConfig(example, 'otpgate.yaml', '/etc/otpgate');
  if (!r.ok) throw new Error(r.errors.join('\n'));
  const minimal = parseConfig(`upstream: ${r.config.upstream.href}\nusersFile: ${r.config.usersFile}\n`, 'otpgate.yaml', '/etc/otpgate');
  if (!minimal.ok) throw new Error(minimal.errors.join('\n'));
  const { trusted: _a, ...fromExample } = r.config;
  const { trusted: _b, ...defaults } = minimal.config;
  t.same(fromExample, defaults);
});

t.test('routes: prefixes and patterns, each problem named by its index', async (t) => {
  const ok = parseConfig(`upstream: http://127.0.0.1:1
usersFile: users
routes:
  - { path: /otrs/customer.pl, auth: none }
  - { path: /otrs-web/, auth: none }
  - { pattern: '^/otrs/nph-genericinterface\\.pl/', auth: none, keepAuthorization: true }
  - { path: /server-status, auth: deny }
`, 'otpgate.yaml', '/etc');
  t.ok(ok.ok, ok.ok ? '' : ok.errors.join('\n'));
  if (ok.ok) {
    t.same(ok.config.routes.map((r) => [r.auth, r.path ?? String(r.pattern), r.keepAuthorization]), [
      ['none', '/otrs/customer.pl', false], ['none', '/otrs-web/', false],
      ['none', '/^\\/otrs\\/nph-genericinterface\\.pl\\//u', true], ['deny', '/server-status', false],
    ]);
  }
  const withRoutes = (...rules: string[]): ReturnType<typeof parseConfig> =>
    parseConfig(`upstream: http://127.0.0.1:1\nusersFile: users\nroutes:\n${rules.map((r) => `  - ${r}\n`).join('')}`, 'otpgate.yaml', '/etc');
  const semanticRules = [
    "{ path: /a, pattern: '^/a', auth: none }", '{ auth: none }', "{ pattern: '^/(', auth: none }", '{ path: /b, auth: otp, keepAuthorization: true }',
  ];
  const bad = withRoutes(...semanticRules, '{ path: /c, auth: open }', '{ path: relative, auth: none }');
  t.notOk(bad.ok);
  if (!bad.ok) {
    t.match(bad.errors.join('\n'), /routes\[4\]\.auth: expected otp, none or deny/);
    t.match(bad.errors.join('\n'), /routes\[5\]\.path: expected a path starting with "\/"/);
  }
  const semantic = withRoutes(...semanticRules);
  t.notOk(semantic.ok);
  if (!semantic.ok) {
    t.same(semantic.errors.map((e) => e.replace(/expression \(.*\)$/, 'expression (...)')), [
      'otpgate.yaml: routes[0]: expected either path (a prefix) or pattern (a regular expression)',
      'otpgate.yaml: routes[1]: expected either path (a prefix) or pattern (a regular expression)',
      'otpgate.yaml: routes[2].pattern: not a regular expression (...)',
      'otpgate.yaml: routes[3].keepAuthorization: only for auth: none',
    ], 'all at once, one line each');
  }
});

t.test('state: file by default; redis needs a URL; every problem named', async (t) => {
  const base = 'upstream: http://127.0.0.1:1\nusersFile: users\n';
  const plain = parseConfig(base, 'c.yaml', '/etc/otpgate');
  if (!plain.ok) throw new Error(plain.errors.join('\n'));
  t.match(plain.config.state, { store: 'file', keyPrefix: 'otpgate:', lingerWhileDown: 60, commandTimeout: 2, redis: undefined });
  const redis = parseConfig(`${base}state: { store: redis, url: "redis://otp:s3cr3t@10.0.0.5:6380/3", tls: { ca: ca.pem } }\n`, 'c.yaml', '/etc/otpgate');
  t.match(redis, { ok: false, errors: ['c.yaml: state.tls: only with a rediss:// URL'] });
  const tls = parseConfig(`${base}state: { store: redis, url: "rediss://otp:s3cr3t@10.0.0.5:6380/3", tls: { ca: ca.pem } }\n`, 'c.yaml', '/etc/otpgate');
  if (!tls.ok) throw new Error(tls.errors.join('\n'));
  t.match(tls.config.state, {
    store: 'redis', url: 'rediss://otp:***@10.0.0.5:6380/3', tls: { ca: '/etc/otpgate/ca.pem' },
    redis: { server: { host: '10.0.0.5', port: 6380 }, db: 3, password: 's3cr3t', tls: true },
  }, 'the URL for messages has no password; TLS files relative to the config');
  const bad = parseConfig(`${base}state: { store: redis, keyPrefix: "a b", lingerWhileDown: -1, color: red }\n`, 'c.yaml', '/etc/otpgate');
  t.match(bad, { ok: false });
  if (bad.ok) return;
  t.same(bad.errors, [
    'c.yaml: state.keyPrefix: expected 1-64 printable ASCII characters without spaces',
    'c.yaml: state.lingerWhileDown: expected a number of seconds',
    'c.yaml: state.color: unknown key',
  ], 'all at once, each naming its key');
  const missing = parseConfig(`${base}state: { store: redis, keyPrefix: "p:" }\n`, 'c.yaml', '/etc/otpgate');
  t.match(missing, { ok: false, errors: [/^c\.yaml: state\.url: required with store: redis/] });
  const wrong = parseConfig(`${base}state: { store: redis, url: "redis://a,b" }\n`, 'c.yaml', '/etc/otpgate');
  t.match(wrong, { ok: false, errors: [/^c\.yaml: state\.url: .*several only with redis\+sentinel/] });
  const fileWithUrl = parseConfig(`${base}state: { url: "redis://h" }\n`, 'c.yaml', '/etc/otpgate');
  t.match(fileWithUrl, { ok: false, errors: ['c.yaml: state.url: only with store: redis'] });
  const half = parseConfig(`${base}state: { store: redis, url: "rediss://h", tls: { cert: c.pem } }\n`, 'c.yaml', '/etc/otpgate');
  t.match(half, { ok: false, errors: ['c.yaml: state.tls: cert and key go together'] });
});
