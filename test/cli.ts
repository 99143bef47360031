// The real executable as child processes: exit statuses, one-line errors,
// check-config, serve with SIGHUP/SIGTERM, and the demo.
import t from 'tap';
import { chmodSync, existsSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { parseConfig } from '../src/config.js';
import { parseUsersFile } from '../src/usersFileFormat.js';
import { VERSION } from '../src/logger.js';
import {
  request, rfcHotp, rfcTotp, secret, secretKey, spawnGateway, spawnOtpgate, startBackend, tempDir, writeFile600, type SpawnedGateway,
} from './lib/harness.js';
import { startRedis } from './lib/redis.js';
import { Redis } from 'ioredis';

const KEY = secretKey(randomBytes(20).toString('hex'));
// Not a run of digits: a time or a pid in a log line cannot contain it by chance.
const PIN = secret('cl1PinQx');
const password = (counter: number): string => `${PIN}${rfcHotp(KEY, counter)}`;
const ROOT = new URL('..', import.meta.url);

function run(args: string[], env: Record<string, string> = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawnOtpgate(args, env);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (c: Buffer) => { stdout += c.toString(); });
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

function project(t: Tap, users = `HOTP alice ${PIN} ${KEY} 0\n`, extra = ''): { dir: string; config: string; usersFile: string } {
  const dir = tempDir(t);
  const usersFile = writeFile600(join(dir, 'otp-users'), users);
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    `listen: 127.0.0.1:0\nupstream: http://127.0.0.1:9\nusersFile: otp-users\n${extra}`);
  return { dir, config, usersFile };
}

type Tap = { teardown(fn: () => void | Promise<void>): void };

const noStackTrace = (text: string): boolean => !/\n\s+at |Error:/.test(text);

async function waitForLog(gw: SpawnedGateway, event: string, n: number): Promise<void> {
  for (let i = 0; i < 250 && gw.logs.filter((l) => l.event === event).length < n; i++) await new Promise((r) => setTimeout(r, 20));
}

t.test('--help, --version, and usage errors exit 2', async (t) => {
  const help = await run(['--help']);
  t.equal(help.code, 0);
  t.match(help.stdout, /serve[\s\S]*demo[\s\S]*check-config/);
  const version = await run(['--version']);
  t.equal(version.code, 0);
  t.equal(version.stdout.trim(), VERSION);
  const bad = await run(['frobnicate']);
  t.equal(bad.code, 2);
  t.match(bad.stderr, /unknown command/);
  const badOption = await run(['serve', '--nope']);
  t.equal(badOption.code, 2);
});

t.test('check-config: ok, with a summary', async (t) => {
  const { config } = project(t);
  const r = await run(['check-config', '--config', config]);
  t.equal(r.code, 0);
  t.match(r.stdout, /otpgate\.yaml: ok \(1 users, 1 tokens\)/);
  const viaEnv = await run(['check-config'], { OTPGATE_CONFIG: config });
  t.equal(viaEnv.code, 0, '$OTPGATE_CONFIG is the default');
});

t.test('check-config: every problem, one line each, exit 2', async (t) => {
  const { dir, config, usersFile } = project(t, `HOTP alice ${PIN} ${KEY} 0\nHOTP bob x zz\nTOTP carl - ${KEY}\n`);
  const r = await run(['check-config', '--config', config]);
  t.equal(r.code, 2);
  t.same(r.stderr.trim().split('\n'), [`${usersFile}:2: key is not an even number of hex digits`, `${usersFile}:3: invalid token type "TOTP"`]);
  const badConfig = writeFile600(join(dir, 'bad.yaml'), 'upstream: nope\nmaxOffset: -1\ncolour: red\nusersFile: otp-users\n');
  const b = await run(['check-config', '--config', badConfig]);
  t.equal(b.code, 2);
  const lines = b.stderr.trim().split('\n');
  t.same(lines.length, 2, 'schema problems first, all at once');
  t.match(b.stderr, /bad\.yaml: maxOffset: /);
  t.match(b.stderr, /bad\.yaml: colour: unknown key/);
  t.ok(noStackTrace(b.stderr));
  writeFileSync(usersFile, `HOTP alice ${PIN} ${KEY} 0\n`, { mode: 0o644 });
  chmodSync(usersFile, 0o644);
  const perms = await run(['check-config', '--config', config]);
  t.equal(perms.code, 2);
  t.match(perms.stderr, /readable or writable by group or others \(mode 644\)/);
});

t.test('the shipped example config and users file are valid', async (t) => {
  const text = readFileSync(new URL('config/otpgate.yaml', ROOT), 'utf8');
  const r = parseConfig(text, 'config/otpgate.yaml', '/etc/otpgate');
  t.ok(r.ok, r.ok ? 'valid' : r.errors.join('\n'));
  const users = parseUsersFile(readFileSync(new URL('otp-users.example', ROOT)));
  t.same(users.problems, []);
  t.ok(users.tokenCount >= 9, 'covers every layout');
  t.same([...new Set(users.parsed.flatMap((p) => (p.kind === 'token' ? [p.token.fieldCount] : [])))].sort(), [4, 5, 6, 7, 8, 9]);
});

t.test('serve: startup failures are one line with the right exit status', async (t) => {
  const missing = project(t);
  rmSync(missing.usersFile);
  const r1 = await run(['serve', '--config', missing.config]);
  t.equal(r1.code, 1, 'missing users file: exit 1');
  t.equal(r1.stderr.trim(), `${missing.usersFile}: cannot read users file (no such file)`);
  const open = project(t);
  chmodSync(open.usersFile, 0o640);
  const r2 = await run(['serve', '--config', open.config]);
  t.equal(r2.code, 2, 'group-readable users file: exit 2');
  t.match(r2.stderr, /otp-users: readable or writable by group or others \(mode 640\); chmod 600 it, or set allowInsecurePermissions: true/);
  const allowed = project(t, `HOTP alice ${PIN} ${KEY} 0\n`, 'allowInsecurePermissions: true\n');
  chmodSync(allowed.usersFile, 0o640);
  const gw = await spawnGateway(allowed.config);
  t.ok(gw.port > 0, 'the documented override starts it');
  gw.child.kill('SIGTERM');
  t.equal(await gw.exited, 0);
  const bad = project(t);
  writeFileSync(bad.config, 'upstream: http://x\n');
  const r3 = await run(['serve', '--config', bad.config]);
  t.equal(r3.code, 2);
  t.match(r3.stderr, /otpgate\.yaml: usersFile: required/);
  const busy = project(t);
  const taken = await startBackend(t);
  writeFileSync(busy.config, `listen: 127.0.0.1:${taken.port}\nupstream: http://127.0.0.1:9\nusersFile: otp-users\n`);
  const r4 = await run(['serve', '--config', busy.config]);
  t.equal(r4.code, 1);
  t.match(r4.stderr, /listen: cannot listen on 127\.0\.0\.1:\d+ \(EADDRINUSE\)/);
  for (const r of [r1, r2, r3, r4]) t.ok(noStackTrace(r.stderr), 'no stack trace');
});

t.test('serve and check-config refuse a linked users file and a directory others can write to; the overrides accept them', async (t) => {
  const linked = project(t);
  const real = `${linked.usersFile}.real`;
  renameSync(linked.usersFile, real);
  symlinkSync(real, linked.usersFile);
  const link = `${linked.usersFile}: is a symbolic link to ${real}; point usersFile at the file itself, or set allowSymlinkedUsersFile: true`;
  const open = project(t);
  chmodSync(open.dir, 0o777);
  const dir = `${open.usersFile}: directory ${open.dir} is writable by others (mode 777), so anyone can replace the users file; ` +
    `chmod o-w ${open.dir}, or set allowUnsafeUsersFileDirectory: true`;
  for (const [what, p, line, override] of [
    ['symbolic link', linked, link, 'allowSymlinkedUsersFile'], ['world-writable directory', open, dir, 'allowUnsafeUsersFileDirectory'],
  ] as const) {
    const serve = await run(['serve', '--config', p.config]);
    t.same([serve.code, serve.stderr], [2, `${line}\n`], `${what}: serve exits 2 with one line naming the file and the override`);
    const check = await run(['check-config', '--config', p.config]);
    t.same([check.code, check.stderr], [2, `${line}\n`], `${what}: check-config says the same`);
    writeFileSync(p.config, `${readFileSync(p.config, 'utf8')}${override}: true\n`);
    const ok = await run(['check-config', '--config', p.config]);
    t.same([ok.code, ok.stderr], [0, ''], `${what}: accepted with ${override}: true`);
    const gw = await spawnGateway(p.config);
    t.ok(gw.port > 0, `${what}: serve starts with the override`);
    gw.child.kill('SIGTERM');
    t.equal(await gw.exited, 0);
  }
});

t.test('SIGHUP with a users file swapped for a link: refused, the gateway keeps running and lets nobody in; back once fixed', async (t) => {
  const backend = await startBackend(t);
  const { config, usersFile } = project(t);
  writeFileSync(config, `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\n`);
  const gw = await spawnGateway(config);
  t.equal((await request(gw.port, { auth: ['alice', password(0)] })).status, 200);
  const elsewhere = `${usersFile}.elsewhere`;
  renameSync(usersFile, elsewhere);
  symlinkSync(elsewhere, usersFile);
  gw.child.kill('SIGHUP');
  await waitForLog(gw, 'reload_failed', 1);
  t.match(gw.logs.find((l) => l.event === 'reload_failed')?.msg, /^reload failed, keeping the running configuration: .*otp-users: is a symbolic link to .*allowSymlinkedUsersFile: true$/);
  const health = await request(gw.port, { path: '/otpgate/health' });
  t.same([health.status, JSON.parse(health.text).problem], [503, 'users file refused as unsafe (symlink)'], 'health says why, not where');
  t.equal((await request(gw.port, { auth: ['alice', password(1)] })).status, 503, 'no login while refused');
  t.equal(gw.child.exitCode, null, 'still running');
  rmSync(usersFile);
  renameSync(elsewhere, usersFile);
  gw.child.kill('SIGHUP');
  await waitForLog(gw, 'reload', 3);
  t.equal((await request(gw.port, { path: '/otpgate/health' })).status, 200, 'a real file again: healthy');
  t.equal((await request(gw.port, { auth: ['alice', password(1)] })).status, 200, 'and logins work');
  gw.child.kill('SIGTERM');
  t.equal(await gw.exited, 0);
  t.equal(gw.stderr(), '', 'nothing on stderr');
});

t.test('serve: start line, a login, SIGHUP reload (good and bad), SIGTERM', async (t) => {
  const backend = await startBackend(t);
  const { config, usersFile } = project(t);
  writeFileSync(config, `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\nrealm: First\n`);
  const gw = await spawnGateway(config);
  const start = gw.logs.find((l) => l.event === 'start');
  t.match(start, { version: VERSION, upstream: `${backend.url}/`, users: 1, usersFile });
  t.match(String(start?.listen), /^127\.0\.0\.1:\d+$/);
  const ok = await request(gw.port, { auth: ['alice', password(0)] });
  t.equal(ok.status, 200);
  t.equal(backend.seen.at(-1)?.headers['remote-user'], 'alice');
  const waitLog = (event: string, n: number): Promise<void> => waitForLog(gw, event, n);
  writeFileSync(config, `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\nrealm: Second\n`);
  gw.child.kill('SIGHUP');
  await waitLog('reload', 2);
  t.match((await request(gw.port)).headers['www-authenticate'], /realm="Second"/, 'new config in use');
  writeFileSync(config, 'upstream: [broken\n');
  gw.child.kill('SIGHUP');
  await waitLog('reload_failed', 2);
  t.ok(gw.logs.some((l) => l.event === 'reload_failed' && /otpgate\.yaml:\d+:\d+: /.test(String(l.msg))), 'why it failed is logged');
  t.match((await request(gw.port)).headers['www-authenticate'], /realm="Second"/, 'a bad reload keeps the running config');
  t.equal((await request(gw.port, { auth: ['alice', password(0)] })).status, 200, 'still serving the linger');
  gw.child.kill('SIGTERM');
  t.equal(await gw.exited, 0, 'SIGTERM: clean exit');
  t.ok(gw.logs.some((l) => l.event === 'stop'));
  t.equal(gw.stderr(), '', 'nothing on stderr');
});

t.test('demo: prints how to log in, a real login works, Ctrl-C exits cleanly', async (t) => {
  const child = spawnOtpgate(['demo'], { OTPGATE_DEMO_LISTEN: '127.0.0.1:0' });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => { out += c.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  for (let i = 0; i < 300 && !/-> password \d+/.test(out); i++) await new Promise((r) => setTimeout(r, 20));
  const url = /Open\s+(http:\/\/127\.0\.0\.1:(\d+)\/)/.exec(out);
  const password = /-> password (\d+)/.exec(out);
  const secret = /otpauth:\/\/totp\/[^\s]*secret=([A-Z2-7]+)/.exec(out);
  const usersFile = /Users file: (\S+)/.exec(out);
  t.ok(url && password && secret && usersFile, 'URL, password, otpauth URI and users file printed');
  t.match(out, /User\s+demo/);
  t.match(out, /PIN 1234/);
  t.match(out, /[\u2580-\u259f]/, 'a QR code in the terminal');
  const port = Number(url?.[2]);
  t.equal((await request(port)).status, 401, 'the demo asks for a login');
  // What a phone app computes from the scanned URI, independently of the gateway.
  const key = base32Decode(secret?.[1] ?? '').toString('hex');
  const now = Date.now() / 1000;
  const fromApp = rfcTotp(key, now);
  const printed = password?.[1] ?? '';
  const pw = printed === `1234${fromApp}` ? printed : `1234${rfcTotp(key, now)}`;
  const page = await request(port, { auth: ['demo', pw] });
  t.equal(page.status, 200);
  t.match(page.text, /Logged in as <strong>demo<\/strong>/);
  child.kill('SIGINT');
  t.equal(await exited, 0, 'Ctrl-C: exit 0');
  t.notOk(existsSync(usersFile?.[1] ?? '/nonexistent-but-checked'), 'temp users file removed');
});

function base32Decode(s: string): Buffer {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0;
  let value = 0;
  const out: number[] = [];
  for (const c of s) {
    value = (value << 5) | alphabet.indexOf(c);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

t.test('store: redis: check-config tries Redis; two real `otpgate serve` processes share a login', async (t) => {
  const redis = await startRedis(t);
  const backend = await startBackend(t);
  const extra = `state: { store: redis, url: "${redis.url}" }\n`;
  const a = project(t, `HOTP alice ${PIN} ${KEY} 0\n`, extra);
  const b = project(t, `HOTP alice ${PIN} ${KEY} 0\n`, extra);
  for (const p of [a, b]) writeFileSync(p.config, readFileSync(p.config, 'utf8').replace('http://127.0.0.1:9', backend.url));
  const ok = await run(['check-config', '--config', a.config]);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, /ok \(1 users, 1 tokens\)\nstate store redis:\/\/127\.0\.0\.1:\d+ reachable \(master\)/);
  t.equal(ok.stderr, '', 'AOF with fsync always: nothing to warn about');
  const client = new Redis(redis.url).on('error', () => undefined);
  t.teardown(() => { client.disconnect(); });
  await client.config('SET', 'appendfsync', 'everysec');
  t.match((await run(['check-config', '--config', a.config])).stderr, /^warning: redis:\/\/127\.0\.0\.1:\d+: appendfsync is everysec: a crash of Redis can lose the last logins/);
  await client.config('SET', 'appendfsync', 'always');
  await client.config('SET', 'maxmemory-policy', 'allkeys-lru');
  t.match((await run(['check-config', '--config', a.config])).stderr, /^warning: .*maxmemory-policy is allkeys-lru: Redis may evict records/);
  await client.config('SET', 'maxmemory-policy', 'noeviction');
  const gws = [await spawnGateway(a.config), await spawnGateway(b.config)];
  t.teardown(() => { for (const gw of gws) gw.child.kill('SIGTERM'); });
  const health = async (gw: SpawnedGateway): Promise<Record<string, unknown>> =>
    JSON.parse((await request(gw.port, { path: '/otpgate/health' })).body.toString()) as Record<string, unknown>;
  for (const gw of gws) {
    for (let i = 0; i < 200 && (await health(gw)).status !== 'ok'; i++) await new Promise((r) => setTimeout(r, 20));
    t.match(await health(gw), { status: 'ok', state: { store: 'redis', connected: true } });
  }
  const auth = { Authorization: `Basic ${Buffer.from(`alice:${password(0)}`).toString('base64')}` };
  t.equal((await request(gws[0]?.port as number, { headers: auth })).status, 200, 'a login on A');
  t.equal((await request(gws[1]?.port as number, { headers: auth })).status, 200, 'rides on B');
  t.equal(readFileSync(a.usersFile, 'utf8'), `HOTP alice ${PIN} ${KEY} 0\n`, 'the users file is not written');
  t.match(gws[0]?.logs.find((l) => l.event === 'start'), { state: redis.url });
  await redis.kill();
  const down = await run(['check-config', '--config', a.config]);
  t.equal(down.code, 2);
  t.match(down.stderr, /^.*otpgate\.yaml: state\.url: cannot reach redis:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)\n$/, 'one line naming the key');
});

t.test('switching a running gateway from file to redis with SIGHUP, and back with users export: no code works twice', async (t) => {
  const redis = await startRedis(t);
  const backend = await startBackend(t);
  const { dir, config, usersFile } = project(t);
  const fileConfig = `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\nmaxLinger: 0\n`;
  writeFileSync(config, fileConfig);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  for (const c of [0, 1]) t.equal((await request(gw.port, { auth: ['alice', password(c)] })).status, 200, `file store: code ${c}`);
  writeFileSync(config, `${fileConfig}state: { store: redis, url: "${redis.url}" }\n`);
  gw.child.kill('SIGHUP');
  await waitForLog(gw, 'reload', 2);
  t.equal((await request(gw.port, { auth: ['alice', password(1)] })).status, 401, 'redis: the file\'s last code is used');
  for (const c of [2, 3]) t.equal((await request(gw.port, { auth: ['alice', password(c)] })).status, 200, `redis: code ${c}`);
  t.match(readFileSync(usersFile, 'utf8'), /^HOTP\s+alice\s+\S+\s+\S+\s+2\s/, 'the file kept its counter: Redis has the state now');
  const exported = join(dir, 'otp-users.export');
  const out = await run(['users', 'export', '--format', 'mod_authn_otp', '-c', config, '-o', exported]);
  t.equal(out.code, 0, out.stderr);
  renameSync(exported, usersFile);
  writeFileSync(config, fileConfig);
  gw.child.kill('SIGHUP');
  await waitForLog(gw, 'reload', 3);
  t.equal((await request(gw.port, { auth: ['alice', password(3)] })).status, 401, 'back on the file: the last code used under Redis is used');
  t.equal((await request(gw.port, { auth: ['alice', password(4)] })).status, 200, 'the next one logs in');
  t.match(readFileSync(usersFile, 'utf8'), /^HOTP\s+alice\s+\S+\s+\S+\s+5\s/, 'and the file is written again');
});
