import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, renameSync, statSync, symlinkSync,
  unlinkSync, writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import type { Policy } from '../src/decision.js';
import {
  STRICT, UnsafeUsersFileError, UsersFile, UsersFileError, permissionProblem, safetyProblems, type FileSafety, type Outcome,
} from '../src/usersFile.js';
import { formatLocalTime } from '../src/localTime.js';
import { DEFAULT_SCRYPT, hashPin } from '../src/pinHash.js';
import { memoryLogger, otherOwner, rfcHotp, rfcTotp, secret, secretKey, tempDir, writeFile600 } from './lib/harness.js';

const KEY = secretKey('3132333435363738393031323334353637383930');
const policy: Policy = { maxOffset: 4, maxLinger: 600, logoutOnIpChange: false, maxFailures: 5, lockoutSeconds: 300, maxLockoutSeconds: 0, permanentLockAfter: 0 };

interface Setup {
  users: UsersFile;
  dir: string;
  path: string;
  logs: ReturnType<typeof memoryLogger>;
  clock: { now: number };
}

interface SetupOptions {
  policy?: Policy;
  pollMs?: number;
  mode?: number;
  lockTimeoutMs?: number;
  safety?: Partial<FileSafety>;
}

function setup(t: { teardown(fn: () => void | Promise<void>): void }, text: string, options: SetupOptions = {}): Setup {
  const dir = tempDir(t);
  const path = join(dir, 'otp-users');
  writeFileSync(path, text, { mode: options.mode ?? 0o600 });
  chmodSync(path, options.mode ?? 0o600);
  const logs = memoryLogger();
  const clock = { now: 1_700_000_000 };
  const users = new UsersFile({
    path, policy: options.policy ?? policy, log: logs.log, clock: () => clock.now, pollMs: options.pollMs ?? 0,
    lockTimeoutMs: options.lockTimeoutMs ?? 5000, safety: { ...STRICT, ...options.safety },
  });
  t.teardown(() => users.close());
  return { users, dir, path, logs, clock };
}

const fieldsOf = (path: string, login: string): string[] => {
  const line = readFileSync(path, 'utf8').split('\n').find((l) => l.split(/\s+/)[1] === login);
  if (line === undefined) throw new Error(`no line for ${login}`);
  return line.trim().split(/\s+/);
};

const waitFor = async (what: () => boolean, ms = 5000): Promise<boolean> => {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (what()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return what();
};

/** Another program (flock(1)) holding the users file's lock for `seconds`, or until killed. */
async function lockHeldElsewhere(t: { teardown(fn: () => void): void }, path: string, seconds: number): Promise<ChildProcess> {
  const child = spawn('flock', ['-o', `${path}.lock`, 'sleep', String(seconds)], { stdio: 'ignore' });
  t.teardown(() => { child.kill(); });
  await waitFor(() => existsSync(`${path}.lock`));
  await new Promise((r) => setTimeout(r, 100)); // flock creates the file before it holds the lock
  return child;
}

t.test('a login is on disk, in the line\'s layout, before it is answered', async (t) => {
  const { users, path, clock } = setup(t, `# team\nHOTP alice 1234 ${KEY} 0\nMOTP other - ${KEY}\n`);
  const outcome = await users.authenticate('alice', `1234${rfcHotp(KEY, 2)}`, '192.0.2.10');
  t.match(outcome, { granted: true, reason: 'ok' });
  t.same(fieldsOf(path, 'alice'), ['HOTP', 'alice', '1234', KEY, '3', rfcHotp(KEY, 2), formatLocalTime(clock.now), '192.0.2.10'],
    'pam_oath-readable line becomes 8 fields: counter used+1, last OTP, local time, IP');
  t.match(readFileSync(path, 'utf8'), /^# team\n/, 'other lines untouched');
  t.notOk(existsSync(`${path}.new`), 'no temp file left');
  t.notOk(existsSync(`${path}.lock`), 'no lock file left');
  const again = users.authenticate('alice', `1234${rfcHotp(KEY, 2)}`, '192.0.2.10');
  t.notOk(again instanceof Promise, 'a linger is answered without waiting for the disk');
  t.match(await again, { granted: true, reason: 'linger' });
});

t.test('a linger recorded by mod_authn_otp is honoured, and survives a restart of the store', async (t) => {
  const now = 1_700_000_000;
  const code = rfcHotp(KEY, 20);
  const line = `HOTP bob 1 ${KEY} 21 0 ${code} ${formatLocalTime(now - 60)} 10.0.0.7\n`;
  const { users, path } = setup(t, line);
  t.match(await users.authenticate('bob', `1${code}`, '10.0.0.7'), { granted: true, reason: 'linger' });
  t.equal(readFileSync(path, 'utf8'), line, 'a linger writes nothing');
});

t.test('group commit: concurrent logins of many users, exact counters, few writes', async (t) => {
  const n = 60;
  const text = Array.from({ length: n }, (_, i) => `HOTP u${i} - ${KEY} ${i}\n`).join('');
  const { users, path, logs } = setup(t, text);
  const rounds = 3;
  for (let r = 0; r < rounds; r++) {
    const results = await Promise.all(Array.from({ length: n }, (_, i) => users.authenticate(`u${i}`, rfcHotp(KEY, i + r), '10.0.0.1')));
    t.ok(results.every((o) => o.granted && o.reason === 'ok'), `round ${r}: all ${n} logins granted`);
  }
  for (let i = 0; i < n; i++) t.equal(fieldsOf(path, `u${i}`)[4], String(i + rounds), `u${i} counter exact`);
  const writes = logs.lines.filter((l) => l.event === 'users_file_write').length;
  t.ok(writes < n, `${rounds * n} logins took ${writes} writes`);
});

t.test('failures are counted exactly under concurrency, in the file where the layout has the field', async (t) => {
  const { users, path } = setup(t, `HOTP carol 1 ${KEY} 0 0\nHOTP dave 1 ${KEY} 0\n`, { policy: { ...policy, maxFailures: 0 } });
  const wrong = await Promise.all(Array.from({ length: 40 }, () => users.authenticate('carol', '1000000', '10.0.0.1')));
  t.ok(wrong.every((o) => !o.granted && o.reason === 'bad_otp' && o.counted));
  await users.flush(); // refusals are answered before their count is written: wait for the write
  t.same(fieldsOf(path, 'carol').slice(4), ['0', '40'], 'mod_authn_otp layout: 6 fields, failure count exact');
  await Promise.all(Array.from({ length: 7 }, () => users.authenticate('dave', '1000000', '10.0.0.1')));
  await users.flush();
  t.same(fieldsOf(path, 'dave'), ['HOTP', 'dave', '1', KEY, '0'], 'pam_oath layout has no failure field: the file is left alone');
  t.match(await users.authenticate('carol', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
  t.equal(fieldsOf(path, 'carol')[5], '0', 'success resets the count');
});

t.test('lock after maxFailures; the lock ends by itself (clock injected)', async (t) => {
  const { users, clock } = setup(t, `HOTP erin 1 ${KEY} 0 0\n`);
  for (let i = 0; i < 5; i++) await users.authenticate('erin', '1000000', '10.0.0.1');
  t.match(await users.authenticate('erin', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: false, reason: 'locked' });
  clock.now += 300;
  t.match(await users.authenticate('erin', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true, reason: 'ok' });
});

t.test('a file locked by mod_authn_otp\'s failure count is locked from when otpgate first sees it', async (t) => {
  const { users, clock } = setup(t, `HOTP frank 1 ${KEY} 0 9\n`);
  t.match(await users.authenticate('frank', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { reason: 'locked' });
  clock.now += 301;
  t.match(await users.authenticate('frank', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
});

t.test('unknown users and users with a malformed line', async (t) => {
  const text = `HOTP gina 1 ${KEY} 0\nHOTP gina 2 nothex\nHOTP hank 1 ${KEY} 0\nHOTP/T30 broken x ${KEY} 0 1 2 3 4 5\n`;
  const { users, path, logs } = setup(t, text);
  t.match(await users.authenticate('nobody', '1123456', '10.0.0.1'), { granted: false, reason: 'unknown_user' });
  t.match(await users.authenticate('gina', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'),
    { granted: false, reason: 'unknown_user', detail: 'malformed line in users file' }, 'a user with a malformed line is refused');
  t.match(await users.authenticate('hank', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true }, 'others log in');
  const warnings = logs.lines.filter((l) => l.event === 'users_file_line').map((l) => l.msg);
  t.same(warnings, [`${path}:2: key is not an even number of hex digits`, `${path}:4: too many fields (10)`]);
  const after = readFileSync(path, 'utf8').split('\n');
  t.equal(after[1], 'HOTP gina 2 nothex', 'malformed lines kept byte for byte');
  t.equal(after[3], `HOTP/T30 broken x ${KEY} 0 1 2 3 4 5`);
  t.equal(users.malformedLines, 2);
});

t.test('edits by admins: re-read before each write, so no edit is lost', async (t) => {
  const { users, path } = setup(t, `HOTP ivan 1 ${KEY} 0\nHOTP jane 1 ${KEY} 0\n`);
  // An admin resets jane's counter in place while the store holds the old content (no polling).
  writeFileSync(path, `HOTP ivan 1 ${KEY} 0\nHOTP jane 1 ${KEY} 50\n`);
  t.match(await users.authenticate('ivan', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
  t.equal(fieldsOf(path, 'jane')[4], '50', 'the admin\'s edit survives our write');
  t.match(await users.authenticate('jane', `1${rfcHotp(KEY, 50)}`, '10.0.0.1'), { granted: true }, 'and is used');
});

t.test('edits by admins are noticed without a restart (in place and by rename)', async (t) => {
  const { users, path } = setup(t, `HOTP kim 1 ${KEY} 0\n`, { pollMs: 50 });
  writeFileSync(path, `HOTP kim 1 ${KEY} 0\nHOTP lou 1 ${KEY} 0\n`);
  t.ok(await waitFor(() => users.userCount === 2), 'in-place edit seen');
  writeFile600(`${path}.edit`, `HOTP kim 1 ${KEY} 0\nHOTP lou 1 ${KEY} 0\nHOTP max 1 ${KEY} 0\n`);
  renameSync(`${path}.edit`, path);
  t.ok(await waitFor(() => users.userCount === 3), 'rename over the file seen');
  t.match(await users.authenticate('max', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
});

t.test('a missing or unreadable file', async (t) => {
  const dir = tempDir(t);
  const { log } = memoryLogger();
  t.throws(() => new UsersFile({ path: join(dir, 'none'), policy, log, pollMs: 0 }),
    new UsersFileError(`${join(dir, 'none')}: cannot read users file (no such file)`));
  const { users, path } = setup(t, `HOTP ned 1 ${KEY} 0\n`, { pollMs: 50 });
  unlinkSync(path);
  t.ok(await waitFor(() => !users.usable), 'deleted file: unusable');
  t.match(users.unusableReason, /ENOENT/);
  t.match(await users.authenticate('ned', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: false, unavailable: true });
  writeFile600(path, `HOTP ned 1 ${KEY} 0\n`);
  t.ok(await waitFor(() => users.usable), 'back when the file is back');
  t.match(await users.authenticate('ned', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
});

t.test('mode and owner are kept on rewrite; permissions check', async (t) => {
  const { users, path } = setup(t, `HOTP olga 1 ${KEY} 0\n`, { mode: 0o640, safety: { allowInsecurePermissions: true } });
  const owner = otherOwner();
  chownSync(path, owner.uid, owner.gid);
  const before = statSync(path);
  t.match(await users.authenticate('olga', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
  const after = statSync(path);
  t.not(after.ino, before.ino, 'replaced by rename');
  t.equal(after.mode & 0o7777, 0o640);
  t.same([after.uid, after.gid], [owner.uid, owner.gid], `owner kept (${owner.what})`);
  t.match(permissionProblem(path, after.mode), /readable or writable by group or others \(mode 640\)/);
  t.equal(permissionProblem(path, 0o100600), undefined);
});

t.test('a users file that is a symbolic link is refused, unless allowSymlinkedUsersFile', async (t) => {
  const dir = tempDir(t);
  const real = writeFile600(join(dir, 'real-users'), `HOTP pam 1 ${KEY} 0\n`);
  const link = join(dir, 'otp-users');
  symlinkSync(real, link);
  const { log } = memoryLogger();
  const err = t.throws(() => new UsersFile({ path: link, policy, log, pollMs: 0 })) as Error;
  t.type(err, UnsafeUsersFileError, 'the default is strict');
  t.equal(err.message, `${link}: is a symbolic link to ${real}; point usersFile at the file itself, or set allowSymlinkedUsersFile: true`);
  symlinkSync(join(dir, 'nowhere'), join(dir, 'dangling'));
  t.throws(() => new UsersFile({ path: join(dir, 'dangling'), policy, log, pollMs: 0 }), /dangling: is a symbolic link to .*nowhere; /,
    'a dangling link is a link first, not a missing file');
  const users = new UsersFile({ path: link, policy, log, pollMs: 0, safety: { ...STRICT, allowSymlinkedUsersFile: true } });
  t.teardown(() => users.close());
  t.match(await users.authenticate('pam', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true }, 'allowed: read through the link');
  // Why links are refused: the protocol's rename replaces the link, and its target stops changing.
  t.notOk(lstatSync(link).isSymbolicLink(), 'the write replaced the link by a file');
  t.match(readFileSync(real, 'utf8'), / 0\n$/, 'the target still holds the old counter');
});

t.test('a users file in a directory others can write to is refused, unless allowUnsafeUsersFileDirectory', async (t) => {
  const { log } = memoryLogger();
  const open = (path: string, safety: Partial<FileSafety> = {}): UsersFile => {
    const users = new UsersFile({ path, policy, log, pollMs: 0, safety: { ...STRICT, ...safety } });
    t.teardown(() => users.close());
    return users;
  };
  const top = tempDir(t);
  const dir = join(top, 'state');
  mkdirSync(dir, { mode: 0o700 });
  const path = writeFile600(join(dir, 'otp-users'), `HOTP quentin 1 ${KEY} 0\n`);
  t.ok(open(path).usable, 'a private directory under a world-writable sticky one (/tmp) is fine');
  chmodSync(dir, 0o777);
  t.throws(() => open(path), new UnsafeUsersFileError([{ kind: 'directory', message:
    `${path}: directory ${dir} is writable by others (mode 777), so anyone can replace the users file; ` +
    `chmod o-w ${dir}, or set allowUnsafeUsersFileDirectory: true` }]));
  chmodSync(dir, 0o1777);
  t.throws(() => open(path), /directory .* \(mode 1777\), so anyone can create .*otp-users\.lock or .*otp-users\.new before otpgate does/,
    'the sticky bit protects the file, not the names of its lock and temp files');
  t.ok(open(path, { allowUnsafeUsersFileDirectory: true }).usable, 'the override');
  chmodSync(dir, 0o770);
  t.ok(open(path).usable, 'group write access is the operator\'s choice (a group shared with Apache)');
  chmodSync(dir, 0o700);
  chmodSync(top, 0o777);
  t.throws(() => open(path), new RegExp(`directory ${top} is writable by others \\(mode 777\\), so anyone can replace`),
    'a world-writable directory higher up: the one below can be renamed away');
  chmodSync(top, 0o1777);
  t.ok(open(path).usable, 'higher up, the sticky bit is enough');
  chmodSync(top, 0o700);
});

t.test('all problems at once, one line each naming its override', async (t) => {
  const dir = tempDir(t);
  const real = join(dir, 'real');
  writeFileSync(real, `HOTP rolf 1 ${KEY} 0\n`, { mode: 0o644 });
  chmodSync(real, 0o644);
  const link = join(dir, 'otp-users');
  symlinkSync(real, link);
  chmodSync(dir, 0o777);
  t.teardown(() => chmodSync(dir, 0o700));
  const problems = safetyProblems(link, STRICT);
  t.same(problems.map((p) => p.kind), ['symlink', 'permissions', 'directory']);
  t.same(problems.map((p) => /set (\w+): true$/.exec(p.message)?.[1]),
    ['allowSymlinkedUsersFile', 'allowInsecurePermissions', 'allowUnsafeUsersFileDirectory']);
  for (const p of problems) t.ok(p.message.startsWith(`${link}: `) && !p.message.includes('\n'), `${p.kind}: one line naming the file`);
  t.same(safetyProblems(link, { allowInsecurePermissions: true, allowSymlinkedUsersFile: true, allowUnsafeUsersFileDirectory: true }), [],
    'every override');
});

t.test('a file that becomes unsafe while running: refused at once, old content kept, no crash, back when fixed', async (t) => {
  const { users, dir, path, logs } = setup(t, `HOTP sven 1 ${KEY} 0\nHOTP tina 1 ${KEY} 0\n`, { pollMs: 50 });
  const unusable = (code: string): Record<string, unknown>[] =>
    logs.lines.filter((l) => l.event === 'users_file_unusable' && l.code === code);
  // An attacker's file behind a link, swapped in by rename (as an editor would).
  const theirs = writeFile600(join(dir, 'theirs'), `HOTP mallory - ${KEY} 0\n`);
  symlinkSync(theirs, `${path}.swap`);
  renameSync(`${path}.swap`, path);
  t.ok(await waitFor(() => !users.usable), 'a link swapped in: unusable');
  t.equal(users.unusableReason, 'users file refused as unsafe (symlink)');
  t.equal(users.userCount, 2, 'the content read before is kept, not the link\'s');
  t.match(await users.authenticate('mallory', rfcHotp(KEY, 0), '10.0.0.1'), { granted: false, unavailable: true });
  t.match(await users.authenticate('sven', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: false, unavailable: true }, 'fail closed');
  await t.rejects(users.reload(), /otp-users: is a symbolic link to /, 'an explicit reload is refused too');
  t.equal(unusable('unsafe_symlink').length, 1, 'logged once, not at every poll');
  t.match(unusable('unsafe_symlink')[0]?.msg, /is a symbolic link to .*theirs; .*allowSymlinkedUsersFile: true$/);
  writeFile600(`${path}.fixed`, `HOTP sven 1 ${KEY} 0\nHOTP tina 1 ${KEY} 0\n`);
  renameSync(`${path}.fixed`, path);
  t.ok(await waitFor(() => users.usable), 'a real file again: usable');
  t.match(await users.authenticate('sven', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });

  chmodSync(dir, 0o777); // the file itself does not change: only the poll's own check sees this
  t.ok(await waitFor(() => !users.usable), 'its directory made world-writable: unusable');
  t.equal(unusable('unsafe_directory').length, 1);
  chmodSync(dir, 0o700);
  t.ok(await waitFor(() => users.usable), 'fixed: usable');

  chmodSync(path, 0o644);
  t.ok(await waitFor(() => !users.usable), 'made readable by others: unusable');
  t.equal(unusable('unsafe_permissions').length, 1);
  users.setSafety({ ...STRICT, allowInsecurePermissions: true });
  t.ok(await waitFor(() => users.usable), 'accepted once the override is set (SIGHUP does this)');
  t.match(await users.authenticate('tina', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true });
});

t.test('a lock held by another program: the write waits, or fails closed after the timeout', async (t) => {
  const { users, path } = setup(t, `HOTP pia 1 ${KEY} 0\n`, { lockTimeoutMs: 400 });
  const child = await lockHeldElsewhere(t, path, 3);
  const outcome = await users.authenticate('pia', `1${rfcHotp(KEY, 0)}`, '10.0.0.1');
  t.match(outcome, { granted: false, unavailable: true }, 'no 200 without the counter on disk');
  t.equal(fieldsOf(path, 'pia')[4], '0');
  child.kill();
  await new Promise((r) => child.once('exit', r));
  t.match(await users.authenticate('pia', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true }, 'the code was not consumed');
});

t.test('a stale temp file from a crashed writer is removed', async (t) => {
  const { users, path } = setup(t, `HOTP quin 1 ${KEY} 0\n`);
  writeFileSync(`${path}.new`, 'half a file');
  await users.removeStaleTemp();
  t.notOk(existsSync(`${path}.new`));
});

t.test('liboath 7-field time-token line: stays 7 fields, lingers in memory, never replays', async (t) => {
  const now = 1_700_000_010;
  const prev = rfcTotp(KEY, now - 90);
  const { users, path, clock } = setup(t, `HOTP/T30 rita - ${KEY} 3 ${prev} ${formatLocalTime(now - 90)}\n`);
  clock.now = now;
  t.match(await users.authenticate('rita', prev, '10.0.0.1'), { granted: false }, 'a pam_oath login does not linger');
  const code = rfcTotp(KEY, now);
  t.match(await users.authenticate('rita', code, '10.0.0.1'), { granted: true, reason: 'ok' });
  const f = fieldsOf(path, 'rita');
  t.equal(f.length, 7, 'still readable by pam_oath');
  t.same(f.slice(4, 6), ['3', code], 'liboath bookkeeping kept, last OTP recorded');
  t.match(await users.authenticate('rita', code, '10.0.0.1'), { granted: true, reason: 'linger' }, 'linger held in memory');
  clock.now += 601;
  t.match(await users.authenticate('rita', code, '10.0.0.1'), { granted: false });
});

t.test('reload() picks up the file now and setPolicy() changes the rules', async (t) => {
  const { users, path } = setup(t, `HOTP sam 1 ${KEY} 0\n`);
  writeFileSync(path, `HOTP sam 1 ${KEY} 0\nHOTP tom 1 ${KEY} 0\n`);
  await users.reload();
  t.equal(users.userCount, 2);
  users.setPolicy({ ...policy, maxOffset: 0 });
  const far: Outcome = await users.authenticate('tom', `1${rfcHotp(KEY, 1)}`, '10.0.0.1');
  t.match(far, { granted: false }, 'maxOffset 0: only the expected counter');
});

t.test('consecutive commits that keep the lock leave at most one temp file open', async (t) => {
  const text = Array.from({ length: 10 }, (_, i) => `HOTP v${i} - ${KEY} 0\n`).join('');
  const { users, path } = setup(t, text, { policy: { ...policy, maxFailures: 0 } });
  const openTemps = (): number => readdirSync('/proc/self/fd')
    .filter((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`).includes('.new'); } catch { return false; } }).length;
  const counters = new Array<number>(10).fill(0);
  let most = 0;
  // Every fifth attempt a good code (a write), the rest wrong codes on lines without a failure field (no write).
  await Promise.all(counters.map(async (_, i) => {
    for (let k = 0; k < 40; k++) {
      const good = k % 5 === 0;
      const o = await users.authenticate(`v${i}`, good ? rfcHotp(KEY, counters[i] as number) : '999999', '10.0.0.1');
      if (o.granted) counters[i] = (counters[i] as number) + 1;
      most = Math.max(most, openTemps());
    }
  }));
  t.ok(most <= 1, `at most one temp file open at a time (saw ${most})`);
  await users.close();
  t.equal(openTemps(), 0, 'none after close');
  t.notOk(existsSync(`${path}.new`));
  t.notOk(existsSync(`${path}.lock`));
});

t.test('an edit by someone who ignores the lock, in the middle of a storm of logins, is kept', async (t) => {
  const n = 20;
  const { users, path } = setup(t, Array.from({ length: n }, (_, i) => `HOTP w${i} - ${KEY} 0\n`).join(''), { pollMs: 100 });
  const counters = new Array<number>(n).fill(0);
  let stop = false;
  const storm = counters.map(async (_, i) => {
    while (!stop) {
      const o = await users.authenticate(`w${i}`, rfcHotp(KEY, counters[i] as number), '10.0.0.1');
      if (o.granted) counters[i] = (counters[i] as number) + 1;
    }
  });
  await new Promise((r) => setTimeout(r, 200));
  writeFile600(`${path}.admin`, `${readFileSync(path, 'utf8')}HOTP newbie - ${KEY} 0\n`);
  renameSync(`${path}.admin`, path); // an editor that writes a new file and renames it, without the lock
  await new Promise((r) => setTimeout(r, 500));
  stop = true;
  await Promise.all(storm);
  t.ok(counters.every((c) => c > 0), 'logins went on');
  t.match(readFileSync(path, 'utf8'), /^HOTP newbie - /m, 'the added line survived every write after it');
  t.match(await users.authenticate('newbie', rfcHotp(KEY, 0), '10.0.0.1'), { granted: true });
});

t.test('close() answers the logins still queued, then returns', async (t) => {
  const { users } = setup(t, `HOTP xena 1 ${KEY} 0\n`);
  const pending = users.authenticate('xena', `1${rfcHotp(KEY, 0)}`, '10.0.0.1');
  await users.close();
  t.match(await pending, { granted: true, reason: 'ok' });
});

t.test('a logged-out time-token code is not accepted again after a restart', async (t) => {
  const now = 1_700_000_010;
  const code = rfcTotp(KEY, now);
  const { users, path, clock } = setup(t, `HOTP/T30 yuri 1 ${KEY} 0 0 123456 2023-01-01T00:00:00L 10.0.0.1\n`);
  clock.now = now;
  t.match(await users.authenticate('yuri', `1${code}`, '10.0.0.1'), { granted: true, reason: 'ok' });
  t.match(await users.authenticate('yuri', '', '10.0.0.1'), { reason: 'logout' });
  const fields = fieldsOf(path, 'yuri');
  t.same([fields.length, fields[6], fields[8]], [9, code, '-'], 'the used code stays in the file, without an IP, in the same layout');
  const { log } = memoryLogger();
  const restarted = new UsersFile({ path, policy, log, clock: () => now + 20, pollMs: 0 });
  t.teardown(() => restarted.close());
  t.match(await restarted.authenticate('yuri', `1${code}`, '10.9.9.9'), { granted: false });
  t.match(await restarted.authenticate('yuri', `1${rfcTotp(KEY, now + 30)}`, '10.9.9.9'), { granted: true }, 'the next step logs in');
});

t.test('refusals are answered at once, the same way for unknown, known and locked users (no queue to time)', async (t) => {
  const { users } = setup(t, `HOTP ivan 1 ${KEY} 0 0\nHOTP judy 1 ${KEY} 0 5\n`);
  const answers = [
    users.authenticate('nobody', '1123456', '10.0.0.1'),
    users.authenticate('ivan', '1000000', '10.0.0.1'),
    users.authenticate('ivan', '9000000', '10.0.0.1'),
    users.authenticate('judy', `1${rfcHotp(KEY, 0)}`, '10.0.0.1'),
  ];
  t.same(answers.map((a) => a instanceof Promise), [false, false, false, false], 'no refusal waits for the file');
  t.same(answers.map((a) => (a as { reason: string }).reason), ['unknown_user', 'bad_otp', 'bad_pin', 'locked']);
  await users.flush();
  t.equal(await users.authenticate('ivan', '1000000', '10.0.0.1') instanceof Promise, false,
    'also while the previous failure count is still being written');
});

t.test('lingers are remembered by an HMAC of the password, and the file still decides', async (t) => {
  const { users, path, clock } = setup(t, `HOTP kim 4242 ${KEY} 0 0\n`);
  const password = `4242${rfcHotp(KEY, 0)}`;
  t.match(await users.authenticate('kim', password, '10.0.0.1'), { granted: true, reason: 'ok' });
  const ride = users.authenticate('kim', password, '10.0.0.1');
  t.notOk(ride instanceof Promise, 'a linger is answered at once');
  t.match(ride, { granted: true, reason: 'linger' });
  t.ok(users.ridesLinger('kim', password, '10.0.0.1'));
  t.notOk(users.ridesLinger('kim', `4242${rfcHotp(KEY, 1)}`, '10.0.0.1'), 'other credentials are not in the cache');
  const cache = (users as unknown as { lingers: Map<string, unknown> }).lingers;
  const keys = [...cache.keys()];
  t.equal(keys.length, 1);
  t.notOk(keys.some((k) => k.includes(password) || k.includes('4242')), 'neither the password nor the PIN is kept');
  // An admin's edit (a logout by hand: the IP removed) ends the linger, cache or not.
  writeFileSync(path, `HOTP kim 4242 ${KEY} 1 ${rfcHotp(KEY, 0)} ${formatLocalTime(clock.now)}\n`);
  await users.reload();
  t.notOk(users.ridesLinger('kim', password, '10.0.0.1'), 'the file says the linger is over');
  t.match(await users.authenticate('kim', password, '10.0.0.1'), { granted: false });
});

// Hashed PINs with cheap parameters (2^10) where the cost is not what a test is about.
const FAST_SCRYPT = { ln: 10, r: 8, p: 1 };
const HASHED_PIN = secret('h4shedPinD0ra');
const PIN_WRONG = secret('n0tThePin');
const hashedField = async (pin: string, params = FAST_SCRYPT): Promise<string> => secret(await hashPin(pin, params));

t.test('a hashed PIN is verified before the decision; plain lines beside it work as before', async (t) => {
  const stored = await hashedField(HASHED_PIN);
  const { users, path } = setup(t, `HOTP dora ${stored} ${KEY} 0 0\nHOTP finn 1234 ${KEY} 0 0\nHOTP gus 1 ${KEY} 0\nHOTP gus 1 nothex\n`);
  const good = `${HASHED_PIN}${rfcHotp(KEY, 0)}`;
  const wrongPin = secret(`wr0ngPin42${rfcHotp(KEY, 1)}`);
  const bad = users.authenticate('dora', wrongPin, '10.0.0.1');
  t.ok(bad instanceof Promise, 'a hashed PIN is checked in the thread pool');
  t.match(await bad, { granted: false, reason: 'bad_pin', counted: true });
  await users.flush();
  t.same(fieldsOf(path, 'dora').slice(2, 6), [stored, KEY, '0', '1'], 'the failure is counted in the file, the hash kept');
  t.match(await users.authenticate('dora', good, '10.0.0.1'), { granted: true, reason: 'ok' });
  t.same(fieldsOf(path, 'dora').slice(2, 6), [stored, KEY, '1', '0'], 'code consumed, count reset, the hash kept');
  const ride = users.authenticate('dora', good, '10.0.0.1');
  t.notOk(ride instanceof Promise, 'its linger rides at once, without a second scrypt');
  t.match(ride, { granted: true, reason: 'linger' });
  // The plain line costs a scrypt too in a file that holds hashes: its timing tells it from no unknown login.
  const finnBad = users.authenticate('finn', `9999${rfcHotp(KEY, 0)}`, '10.0.0.1');
  t.ok(finnBad instanceof Promise, 'a plain PIN\'s refusal waits for a decoy scrypt');
  t.match(await finnBad, { granted: false, reason: 'bad_pin' });
  t.match(await users.authenticate('finn', `1234${rfcHotp(KEY, 0)}`, '10.0.0.1'), { granted: true, reason: 'ok' });
  // Unknown logins cost a scrypt too, once the file holds a hash.
  const nobody = users.authenticate('nobody', good, '10.0.0.1');
  t.ok(nobody instanceof Promise, 'an unknown login runs a decoy scrypt');
  t.match(await nobody, { granted: false, reason: 'unknown_user' });
  const gus = users.authenticate('gus', good, '10.0.0.1');
  t.ok(gus instanceof Promise, 'so does a login refused for a malformed line');
  t.match(await gus, { granted: false, reason: 'unknown_user', detail: 'malformed line in users file' });
  // The logout path: the PIN is verified, the linger ends.
  t.match(await users.authenticate('dora', `${PIN_WRONG}${rfcHotp(KEY, 0)}`, '10.0.0.1', true), { granted: false, reason: 'bad_pin' },
    'a wrong PIN ends nothing');
  t.match(users.authenticate('dora', good, '10.0.0.1'), { granted: true, reason: 'linger' });
  t.match(await users.authenticate('dora', good, '10.0.0.1', true), { granted: false, reason: 'logout' });
  t.match(await users.authenticate('dora', good, '10.0.0.1'), { granted: false }, 'the linger is over');
  t.match(await users.authenticate('dora', `${HASHED_PIN}${rfcHotp(KEY, 1)}`, '10.0.0.1'), { granted: true, reason: 'ok' }, 'the next code logs in');
  t.notOk(readFileSync(path, 'utf8').includes(HASHED_PIN), 'the PIN itself is never written');
});

t.test('a locked user with a hashed PIN is still checked (the same work), and refused', async (t) => {
  const { users } = setup(t, `HOTP hedy ${await hashedField(HASHED_PIN)} ${KEY} 0 5\n`);
  const locked = users.authenticate('hedy', `${HASHED_PIN}${rfcHotp(KEY, 0)}`, '10.0.0.1');
  t.ok(locked instanceof Promise, 'the scrypt runs whatever the lock');
  t.match(await locked, { granted: false, reason: 'locked' });
  t.match(await users.authenticate('hedy', `${HASHED_PIN.slice(0, 3)}`, '10.0.0.1'), { granted: false, reason: 'locked' },
    'a password too short to hold a code too');
});

t.test('a hashed PIN changed by an admin between its check and the commit: refused, nothing consumed', async (t) => {
  const before = await hashedField(HASHED_PIN);
  const after = await hashedField(secret('n3wPinAfter'));
  const { users, path } = setup(t, `HOTP ida ${before} ${KEY} 0 0\n`);
  const child = await lockHeldElsewhere(t, path, 5);
  const login = users.authenticate('ida', `${HASHED_PIN}${rfcHotp(KEY, 0)}`, '10.0.0.1');
  await new Promise((r) => setTimeout(r, 200)); // verified, decided, and queued behind the lock
  writeFileSync(path, `HOTP ida ${after} ${KEY} 0 0\n`); // an editor that ignores the lock
  child.kill();
  t.match(await login, { granted: false, reason: 'bad_pin' }, 'the new hash was never verified: fail closed');
  await users.flush();
  t.same(fieldsOf(path, 'ida').slice(2, 6), [after, KEY, '0', '1'], 'the code not consumed, the admin\'s PIN kept');
});

t.test('the file re-read while a hashed PIN is being checked: decided against the new file', async (t) => {
  const { users, path } = setup(t, `HOTP jo ${await hashedField(HASHED_PIN, DEFAULT_SCRYPT)} ${KEY} 0 0\n`);
  const login = users.authenticate('jo', `${HASHED_PIN}${rfcHotp(KEY, 0)}`, '10.0.0.1');
  writeFileSync(path, `HOTP other - ${KEY} 0 0\n`);
  await users.reload(); // well within the scrypt's tens of milliseconds
  t.match(await login, { granted: false, reason: 'unknown_user' }, 'jo was removed meanwhile');
  t.equal(readFileSync(path, 'utf8'), `HOTP other - ${KEY} 0 0\n`, 'nothing written for the removed line');
});

t.test('a flood of guesses that cost a scrypt does not hold up other logins\' commits (the thread pool stays free for the file)', async (t) => {
  const stored = await hashedField(HASHED_PIN, DEFAULT_SCRYPT);
  const { users } = setup(t, `HOTP kai ${stored} ${KEY} 0 0\nHOTP lea 1 ${KEY} 0 0\n`, { policy: { ...policy, maxFailures: 0 } });
  let stop = false;
  let guesses = 0;
  // Unknown logins and wrong PINs alike: each costs a scrypt (with the default cost) in the thread pool.
  const flood = Array.from({ length: 32 }, async (_, k) => {
    while (!stop) {
      await users.authenticate(k % 2 === 0 ? `ghost${k}` : 'kai', `${PIN_WRONG}${k}00000`, '192.0.2.1');
      guesses++;
    }
  });
  await new Promise((r) => setTimeout(r, 200));
  const took: number[] = [];
  for (let c = 0; c < 5; c++) {
    const started = performance.now();
    t.match(await users.authenticate('lea', `1${rfcHotp(KEY, c)}`, '10.0.0.1'), { granted: true, reason: 'ok' });
    took.push(performance.now() - started);
  }
  stop = true;
  await Promise.all(flood);
  t.ok(guesses > 0, `${guesses} guesses were checked meanwhile`);
  // With all four pool threads on scrypt, each of these waited seconds behind the queue of guesses.
  t.ok(Math.max(...took) < 1000, `a plain login, written and fsynced, in ${took.map((ms) => Math.round(ms)).join(', ')} ms`);
});
