// The users-file lock (users-file.md, normative): `<file>.lock`, held with both
// an flock (mod_authn_otp, otplock) and an fcntl write lock (liboath) because on
// Linux the two kinds do not exclude each other. Debian's patched liboath refuses
// to run while `<file>.lock` exists, so the holder deletes it before unlocking,
// and a waiter checks that the path still names the inode it locked.
import { closeSync, constants, fchownSync, fstatSync, openSync, statSync, unlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { constants as lockConstants, fcntl, flockSync } from 'fs-ext';

export class LockTimeoutError extends Error {
  constructor(readonly lockFile: string, waitedMs: number) {
    super(`${lockFile}: still locked by another program after ${Math.round(waitedMs / 1000)}s`);
  }
}

export interface HeldLock {
  readonly lockFile: string;
  /** Delete `<file>.lock`, then unlock. Never throws: a lock file that cannot be deleted is left behind, as mod_authn_otp leaves it. */
  release(): void;
}

const busy = (err: unknown): boolean => {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EACCES';
};

// fs-ext's synchronous fcntl passes the lock type where struct flock belongs
// (EFAULT); its asynchronous form builds the struct. F_SETLK never waits.
const setWriteLock = (fd: number): Promise<void> =>
  new Promise((resolve, reject) => {
    fcntl(fd, 'setlk', lockConstants.F_WRLCK, (err) => (err ? reject(err) : resolve()));
  });

/** One attempt; undefined if another holder has it. Never blocks. */
async function tryLock(lockFile: string, owner: { uid: number; gid: number } | undefined): Promise<HeldLock | undefined> {
  const fd = openSync(lockFile, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
  let keep = false;
  try {
    // root (an admin's CLI) gives a lock file it made the users file's owner: left behind by a
    // crash, a root-owned one could never be opened again by the gateway's own user. Only a
    // plain, root-owned file with one name: a link planted under the lock's name by the owner
    // must not hand some other file of root's over to it.
    if (owner !== undefined) {
      const made = fstatSync(fd);
      if (made.isFile() && made.nlink === 1 && made.uid === 0) fchownSync(fd, owner.uid, owner.gid);
    }
    try {
      flockSync(fd, 'exnb');
      await setWriteLock(fd);
    } catch (err) {
      if (busy(err)) return undefined;
      throw err;
    }
    // The previous holder may have deleted the file we opened: then we hold a lock nobody sees.
    let current;
    try {
      current = statSync(lockFile);
    } catch {
      return undefined;
    }
    const mine = fstatSync(fd);
    if (current.ino !== mine.ino || current.dev !== mine.dev) return undefined;
    keep = true;
    return {
      lockFile,
      release(): void {
        try {
          unlinkSync(lockFile);
        } catch { /* see HeldLock.release */ }
        closeSync(fd);
      },
    };
  } finally {
    // Closing the descriptor drops both its flock and the process's fcntl lock.
    if (!keep) closeSync(fd);
  }
}

/** Whom root's lock file must belong to: the users file's owner (undefined: not root, or no change needed). */
function lockOwner(usersFile: string): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const { uid, gid } = statSync(usersFile);
    return uid === 0 && gid === 0 ? undefined : { uid, gid };
  } catch {
    return undefined; // opening the users file tells why
  }
}

// fcntl locks belong to the process, not the descriptor: two holders in one
// process would not exclude each other, and closing either descriptor would drop
// the other's lock. So lock holders are serialised per file within the process.
const inProcess = new Map<string, Promise<void>>();

/**
 * Take the users-file lock, waiting up to `timeoutMs`. Resolves to a HeldLock
 * whose release() must be called exactly once.
 */
export async function lockUsersFile(usersFile: string, timeoutMs = 10_000): Promise<HeldLock> {
  const lockFile = `${usersFile}.lock`;
  const previous = inProcess.get(lockFile) ?? Promise.resolve();
  let done!: () => void;
  const turn = new Promise<void>((resolve) => { done = resolve; });
  const chain = previous.then(() => turn);
  inProcess.set(lockFile, chain);
  const finish = (): void => {
    done();
    // Forgotten only once every earlier holder is done too: a waiter that timed
    // out must not let a newcomer skip the holder (its fcntl lock would go).
    void chain.then(() => {
      if (inProcess.get(lockFile) === chain) inProcess.delete(lockFile);
    });
  };
  const started = Date.now();
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([previous, new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new LockTimeoutError(lockFile, timeoutMs)), timeoutMs);
      timer.unref();
    })]);
    let pause = 1;
    const owner = lockOwner(usersFile);
    for (;;) {
      const held = await tryLock(lockFile, owner);
      if (held) {
        return {
          lockFile,
          release(): void {
            try { held.release(); } finally { finish(); }
          },
        };
      }
      const waited = Date.now() - started;
      if (waited >= timeoutMs) throw new LockTimeoutError(lockFile, waited);
      await sleep(Math.min(pause, timeoutMs - waited));
      pause = Math.min(pause * 2, 50);
    }
  } catch (err) {
    finish();
    throw err;
  } finally {
    clearTimeout(timer);
  }
}
