import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { LockTimeoutError, lockUsersFile } from '../src/fileLock.js';
import { tempDir } from './lib/harness.js';

/** Another program holding `<file>.lock` the way mod_authn_otp (flock) or liboath (fcntl) does. */
function holder(lockFile: string, kind: 'flock' | 'fcntl', seconds: number, unlinkAfter = false): Promise<ChildProcess> {
  const script = `
import fcntl, os, sys, time
fd = os.open(${JSON.stringify(lockFile)}, os.O_RDWR | os.O_CREAT, 0o600)
${kind === 'flock' ? 'fcntl.flock(fd, fcntl.LOCK_EX)' : 'fcntl.lockf(fd, fcntl.LOCK_EX)'}
print('locked', flush=True)
time.sleep(${seconds})
${unlinkAfter ? `os.unlink(${JSON.stringify(lockFile)})` : ''}
`;
  const child = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    child.stdout?.once('data', () => resolve(child));
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`holder exited early (${code})`)));
  });
}

t.test('the lock file is created, held, and deleted before unlocking', async (t) => {
  const dir = tempDir(t);
  const users = join(dir, 'users');
  writeFileSync(users, '');
  const lock = await lockUsersFile(users, 1000);
  t.ok(existsSync(`${users}.lock`), 'exists while held');
  lock.release();
  t.notOk(existsSync(`${users}.lock`), 'deleted on release (Debian liboath refuses to run while it exists)');
});

for (const kind of ['flock', 'fcntl'] as const) {
  t.test(`waits for a ${kind} holder in another process`, async (t) => {
    const dir = tempDir(t);
    const users = join(dir, 'users');
    const child = await holder(`${users}.lock`, kind, 0.6);
    const started = Date.now();
    const lock = await lockUsersFile(users, 5000);
    const waited = Date.now() - started;
    t.ok(waited >= 300, `waited ${waited} ms for the other holder`);
    lock.release();
    child.kill();
  });
}

t.test('a holder that deletes the lock file: the waiter starts over on the new file', async (t) => {
  const dir = tempDir(t);
  const users = join(dir, 'users');
  const child = await holder(`${users}.lock`, 'flock', 0.4, true);
  const lock = await lockUsersFile(users, 5000);
  t.ok(existsSync(`${users}.lock`), 'holds a lock file that the path names');
  lock.release();
  child.kill();
});

t.test('bounded wait: a timeout error names the lock file', async (t) => {
  const dir = tempDir(t);
  const users = join(dir, 'users');
  const child = await holder(`${users}.lock`, 'flock', 5);
  t.teardown(() => { child.kill(); });
  const err = await lockUsersFile(users, 300).then(() => undefined, (e: unknown) => e);
  t.ok(err instanceof LockTimeoutError);
  t.match((err as Error).message, /users\.lock: still locked by another program/);
});

t.test('holders in one process take turns', async (t) => {
  const dir = tempDir(t);
  const users = join(dir, 'users');
  const order: string[] = [];
  const first = await lockUsersFile(users, 1000);
  const second = lockUsersFile(users, 2000).then((l) => {
    order.push('second');
    l.release();
  });
  await new Promise((r) => setTimeout(r, 100));
  order.push('first releases');
  first.release();
  await second;
  t.same(order, ['first releases', 'second']);
  const again = await lockUsersFile(users, 1000);
  again.release();
  t.pass('the lock is free again');
});
