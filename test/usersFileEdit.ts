// The admin CLI's way into the users file (src/usersFileEdit.ts): real files in
// temp dirs, the gateway's lock, durable replacement, and the retry when a
// program that ignores the lock replaces the file meanwhile.
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LockTimeoutError } from '../src/fileLock.js';
import { appendLines } from '../src/usersAdmin.js';
import { STRICT } from '../src/usersFile.js';
import { editUsersFile, readUsersFile, withUsersFileLock } from '../src/usersFileEdit.js';
import { newTokenLine, parseUsersFile, type UsersFileModel } from '../src/usersFileFormat.js';
import { secretKey, tempDir, writeFile600 } from './lib/harness.js';

const KEY_A = secretKey(randomBytes(20).toString('hex'));
const KEY_B = secretKey(randomBytes(20).toString('hex'));
const KEY_N = secretKey(randomBytes(20).toString('hex'));

const ORIGINAL = [
  '# otpgate users file\r\n',
  '\n',
  `HOTP\talice   -   ${KEY_A}  7  0\r\n`,
  'HOTP broken - zz\n',
  `HOTP/T30 bob - ${KEY_B} -1`, // last line without newline
].join('');

const OPTS = { safety: STRICT, lockTimeoutMs: 5000 };

const lineOf = (login: string): string => newTokenLine('HOTP', login, '-', KEY_N, 0);
const appending = (login: string) => (m: UsersFileModel): { model: UsersFileModel; result: string } =>
  ({ model: appendLines(m, [lineOf(login)]), result: login });

function setup(t: Parameters<typeof tempDir>[0], text: string | Buffer = ORIGINAL): { dir: string; path: string } {
  const dir = tempDir(t, 'otpgate-edit-');
  const path = writeFile600(join(dir, 'otp-users'), text);
  return { dir, path };
}

/** Nothing but the users file itself in its directory: no `<file>.new`, no `<file>.lock`. */
const leftovers = (dir: string): string[] => readdirSync(dir).filter((f) => f !== 'otp-users');

/** Can another process take an fcntl (liboath's) write lock on `file` right now? */
function fcntlLockFree(file: string): Promise<boolean> {
  const script = `
import errno, fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print('free')
except OSError as e:
    print('busy' if e.errno in (errno.EAGAIN, errno.EACCES) else 'error %d' % e.errno)
`;
  return new Promise((resolve, reject) => {
    const child = spawn('python3', ['-c', script, file], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (c: Buffer) => { out += c.toString('utf8'); });
    child.once('error', reject);
    child.once('exit', () => {
      const answer = out.trim();
      if (answer === 'free' || answer === 'busy') resolve(answer === 'free');
      else reject(new Error(`fcntl probe: ${answer}`));
    });
  });
}

/**
 * Hold the users-file lock until the returned release() is called. A waiter's
 * timeout timer does not keep the process alive (fileLock.ts unrefs it): an
 * interval does, while the lock is held.
 */
async function holdLock(path: string): Promise<{ release: () => void; done: Promise<void> }> {
  let open!: () => void;
  const gate = new Promise<void>((resolve) => { open = resolve; });
  const keepAlive = setInterval(() => undefined, 1000);
  const release = (): void => {
    clearInterval(keepAlive);
    open();
  };
  let acquired!: () => void;
  const held = new Promise<void>((resolve) => { acquired = resolve; });
  const done = withUsersFileLock(path, 1000, async () => {
    acquired();
    await gate;
  });
  await held;
  return { release, done };
}

t.test('an edit appends a line durably; every other byte and the mode stay; nothing left behind', async (t) => {
  const { dir, path } = setup(t);
  const before = statSync(path);
  const result = await editUsersFile(path, OPTS, appending('carol'));
  t.equal(result, 'carol', 'the edit\'s result is returned');
  const bytes = readFileSync(path);
  t.equal(bytes.toString('utf8'), `${ORIGINAL}\r\n${lineOf('carol')}\r\n`,
    'the old bytes, then the new line in the file\'s endings (CRLF, as its first line)');
  const after = statSync(path);
  t.equal(after.mode & 0o7777, 0o600, 'mode 0600 kept');
  t.not(after.ino, before.ino, 'replaced by rename, not rewritten in place');
  t.same(leftovers(dir), [], 'no otp-users.new, no otp-users.lock');
  const m = readUsersFile(path, STRICT);
  t.same([...m.index.keys()], ['alice', 'bob', 'carol']);
  t.equal(m.problems.length, 1, 'the malformed line is still there, and still the only problem');
});

t.test('an edit that returns no model, or the same bytes, leaves the file untouched', async (t) => {
  const { dir, path } = setup(t);
  const before = statSync(path);
  let seen: UsersFileModel | undefined;
  const result = await editUsersFile(path, OPTS, (m) => {
    seen = m;
    return { result: 42 };
  });
  t.equal(result, 42);
  t.ok(seen?.bytes.equals(Buffer.from(ORIGINAL)), 'the edit saw the file as it is');
  let after = statSync(path);
  t.equal(after.ino, before.ino, 'same inode');
  t.equal(after.mtimeMs, before.mtimeMs, 'same mtime');
  t.equal(readFileSync(path, 'utf8'), ORIGINAL);

  await editUsersFile(path, OPTS, (m) => ({ model: parseUsersFile(Buffer.from(m.bytes)), result: undefined }));
  after = statSync(path);
  t.equal(after.ino, before.ino, 'an equal model: same inode');
  t.equal(after.mtimeMs, before.mtimeMs, 'an equal model: same mtime');
  t.same(leftovers(dir), []);
});

t.test('an edit that throws leaves the file untouched and releases the lock', async (t) => {
  const { dir, path } = setup(t);
  const before = statSync(path);
  const boom = new Error('the edit failed');
  await t.rejects(editUsersFile(path, OPTS, () => { throw boom; }), boom, 'the edit\'s own error');
  const after = statSync(path);
  t.equal(after.ino, before.ino);
  t.equal(after.mtimeMs, before.mtimeMs);
  t.equal(readFileSync(path, 'utf8'), ORIGINAL);
  t.same(leftovers(dir), [], 'the lock file is gone');
  // A second edit right after: the lock is free (a short timeout proves it is not waited for).
  const result = await editUsersFile(path, { ...OPTS, lockTimeoutMs: 300 }, appending('dave'));
  t.equal(result, 'dave');
  t.ok(readUsersFile(path, STRICT).index.has('dave'));
});

t.test('20 concurrent edits in one process: no lost update', async (t) => {
  const { dir, path } = setup(t, `# start\nHOTP alice - ${KEY_A} 0\n`);
  const logins = Array.from({ length: 20 }, (_, i) => `user${i}`);
  const results = await Promise.all(logins.map((login) => editUsersFile(path, { ...OPTS, lockTimeoutMs: 20_000 }, appending(login))));
  t.same(results, logins);
  const m = readUsersFile(path, STRICT);
  t.equal(m.tokenCount, 21, 'alice and all 20 new users');
  for (const login of logins) t.equal(m.index.get(login)?.length, 1, `${login} is there once`);
  t.ok(m.bytes.toString('utf8').startsWith(`# start\nHOTP alice - ${KEY_A} 0\n`), 'the old lines first, byte for byte');
  t.equal(statSync(path).mode & 0o7777, 0o600);
  t.same(leftovers(dir), []);
});

t.test('while the lock is held, an edit gives up after lockTimeoutMs with a LockTimeoutError', async (t) => {
  const { dir, path } = setup(t);
  const before = statSync(path);
  const holder = await holdLock(path);
  t.ok(existsSync(`${path}.lock`), 'the holder has the lock file');
  let called = false;
  const started = Date.now();
  const err = await editUsersFile(path, { ...OPTS, lockTimeoutMs: 300 }, (m) => {
    called = true;
    return appending('eve')(m);
  }).then(() => undefined, (e: unknown) => e);
  const waited = Date.now() - started;
  t.ok(err instanceof LockTimeoutError, 'a LockTimeoutError');
  t.match((err as Error).message, `${path}.lock`, 'its message names <file>.lock');
  t.equal((err as LockTimeoutError).lockFile, `${path}.lock`);
  t.ok(waited >= 250 && waited < 3000, `waited about 300 ms (${waited} ms)`);
  t.notOk(called, 'the edit never ran');
  const after = statSync(path);
  t.equal(after.ino, before.ino);
  t.equal(after.mtimeMs, before.mtimeMs);
  t.equal(readFileSync(path, 'utf8'), ORIGINAL, 'the file is unchanged');
  holder.release();
  await holder.done;
  t.same(leftovers(dir), [], 'released: no lock file');
  t.equal(await editUsersFile(path, { ...OPTS, lockTimeoutMs: 300 }, appending('eve')), 'eve', 'then an edit goes through');
});

t.test('an edit waiting for the lock in the same process leaves the holder\'s fcntl lock alone', async (t) => {
  const { path } = setup(t);
  const holder = await holdLock(path);
  t.teardown(() => holder.release());
  const next = editUsersFile(path, { ...OPTS, lockTimeoutMs: 10_000 }, appending('frank'));
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(await fcntlLockFree(`${path}.lock`), false, 'still held against liboath while the edit waits');
  holder.release();
  await holder.done;
  t.equal(await next, 'frank');
});

t.test('after an edit timed out, the holder still excludes liboath (fcntl) while the next edit waits', async (t) => {
  const { path } = setup(t);
  const holder = await holdLock(path);
  t.teardown(() => holder.release());
  t.equal(await fcntlLockFree(`${path}.lock`), false, 'held: another process cannot take the fcntl lock');
  const err = await editUsersFile(path, { ...OPTS, lockTimeoutMs: 200 }, appending('eve')).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof LockTimeoutError);
  // The next edit must wait for the holder, not poll around it: each attempt of its own
  // opens and closes a descriptor of the lock file, and closing any descriptor of a file
  // drops every fcntl lock this process has on it (the holder's included).
  const next = editUsersFile(path, { ...OPTS, lockTimeoutMs: 10_000 }, appending('frank'));
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(await fcntlLockFree(`${path}.lock`), false, 'still held against liboath while the next edit waits');
  t.equal(readFileSync(path, 'utf8'), ORIGINAL, 'the waiting edit has not written');
  holder.release();
  await holder.done;
  t.equal(await next, 'frank', 'the waiting edit goes through once the holder releases');
  t.ok(readUsersFile(path, STRICT).index.has('frank'));
  t.notOk(readUsersFile(path, STRICT).index.has('eve'), 'the timed-out edit wrote nothing');
});

t.test('a users file readable by others is refused unless the safety option allows it', async (t) => {
  const { dir, path } = setup(t);
  chmodSync(path, 0o644);
  const before = statSync(path);
  let called = false;
  const err = await editUsersFile(path, OPTS, (m) => {
    called = true;
    return appending('gina')(m);
  }).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof Error, 'refused');
  t.match((err as Error).message, /chmod 600/, 'the message says how to fix it');
  t.match((err as Error).message, /mode 644/);
  t.match((err as Error).message, /allowInsecurePermissions/);
  t.notOk(called, 'the edit never ran');
  t.equal(statSync(path).mtimeMs, before.mtimeMs, 'the file is unchanged');
  t.same(leftovers(dir), [], 'the lock was released');
  t.throws(() => readUsersFile(path, STRICT), /chmod 600/, 'reading is refused too');

  const allow = { ...STRICT, allowInsecurePermissions: true };
  t.equal(readUsersFile(path, allow).tokenCount, 2, 'allowed: it can be read');
  t.equal(await editUsersFile(path, { ...OPTS, safety: allow }, appending('gina')), 'gina', 'allowed: it can be edited');
  t.ok(readUsersFile(path, allow).index.has('gina'));
  t.equal(statSync(path).mode & 0o7777, 0o644, 'the replacement keeps the file\'s mode');
  t.same(leftovers(dir), []);
});

t.test('readUsersFile reads without the lock', async (t) => {
  const { path } = setup(t);
  const holder = await holdLock(path);
  t.teardown(() => holder.release());
  const m = readUsersFile(path, STRICT);
  t.ok(m.bytes.equals(Buffer.from(ORIGINAL)), 'while another holds the lock');
  t.same([...m.index.keys()], ['alice', 'bob']);
  t.same(m.problems.map((p) => p.line), [4]);
});

t.test('a writer that ignores the lock replaces the file meanwhile: the edit runs again on its content', async (t) => {
  const { dir, path } = setup(t);
  const intruderLine = newTokenLine('HOTP', 'intruder', '-', KEY_B, 3);
  const original = statSync(path);
  let calls = 0;
  let replacedIno = 0;
  const seen: string[] = [];
  const result = await editUsersFile(path, OPTS, (m) => {
    calls++;
    seen.push(m.bytes.toString('utf8'));
    if (calls === 1) {
      // Between our read and our rename, someone writes a new file over the path.
      const other = join(dir, 'intruder.tmp');
      writeFileSync(other, `${m.bytes.toString('utf8')}\n${intruderLine}\n`, { mode: 0o600 });
      renameSync(other, path);
      replacedIno = statSync(path).ino;
    }
    return appending('heidi')(m);
  });
  t.equal(result, 'heidi');
  t.equal(calls, 2, 'the edit ran again');
  t.not(replacedIno, original.ino, 'the intruder\'s file is another inode');
  t.notOk(seen[0]?.includes('intruder'), 'first run: the original content');
  t.ok(seen[1]?.includes(intruderLine), 'second run: the intruder\'s content');
  const m = readUsersFile(path, STRICT);
  t.equal(m.index.get('intruder')?.length, 1, 'the intruder\'s line survives');
  t.equal(m.index.get('heidi')?.length, 1, 'the edit\'s line is there, once');
  t.ok(m.bytes.toString('utf8').startsWith(ORIGINAL), 'the original bytes first');
  t.same(leftovers(dir), [], 'no temp file and no lock left');
});

t.test('a writer that keeps replacing the file: the edit gives up without writing', async (t) => {
  const { dir, path } = setup(t);
  let calls = 0;
  const err = await editUsersFile(path, OPTS, (m) => {
    calls++;
    const other = join(dir, 'intruder.tmp');
    writeFileSync(other, `${m.bytes.toString('utf8')}\n# intruder ${calls}\n`, { mode: 0o600 });
    renameSync(other, path);
    return appending('ivan')(m);
  }).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof Error);
  t.match((err as Error).message, /ignores .*otp-users\.lock; nothing written/);
  t.equal(calls, 3, 'three attempts');
  t.notOk(readUsersFile(path, STRICT).index.has('ivan'), 'nothing of the edit written');
  t.match(readFileSync(path, 'utf8'), /# intruder 3\n$/, 'the intruder\'s last file stays');
  t.same(leftovers(dir), []);
});
