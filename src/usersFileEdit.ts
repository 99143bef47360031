// The admin CLI's way into the users file: the gateway's lock and durable
// write (fileLock.ts, atomicWrite.ts), so an edit and the gateway's counter
// updates never lose each other's changes, whichever writes first.
import { statSync } from 'node:fs';
import { TempFile } from './atomicWrite.js';
import { lockUsersFile, type HeldLock } from './fileLock.js';
import { identityOf, readUsersFileChecked, sameIdentity, type FileSafety } from './usersFile.js';
import { parseUsersFile, type UsersFileModel } from './usersFileFormat.js';

export interface EditOptions {
  readonly safety: FileSafety;
  readonly lockTimeoutMs: number;
}

/** The file as it is now, without the lock (for reading only). */
export function readUsersFile(path: string, safety: FileSafety): UsersFileModel {
  return parseUsersFile(readUsersFileChecked(path, safety).bytes);
}

/** Run `fn` holding the users-file lock. */
export async function withUsersFileLock<T>(path: string, lockTimeoutMs: number, fn: (lock: HeldLock) => Promise<T> | T): Promise<T> {
  const lock = await lockUsersFile(path, lockTimeoutMs);
  try {
    return await fn(lock);
  } finally {
    lock.release();
  }
}

/** How often an edit is made again because someone who ignores the lock changed the file meanwhile. */
const ATTEMPTS = 3;

/**
 * Under the lock: read the file, let `edit` decide on it, and when it returns a
 * new model, write that durably (temp file, fsync, rename, fsync of the
 * directory). `edit` must be a pure function of the model: if the file changed
 * without the lock while it was written, it runs again on the new content.
 */
export async function editUsersFile<T>(
  path: string, options: EditOptions, edit: (model: UsersFileModel) => { model?: UsersFileModel; result: T },
): Promise<T> {
  return withUsersFileLock(path, options.lockTimeoutMs, async () => {
    for (let attempt = 1; ; attempt++) {
      const { bytes, stats } = readUsersFileChecked(path, options.safety);
      const { model, result } = edit(parseUsersFile(bytes));
      if (model === undefined || model.bytes.equals(bytes)) return result;
      const read = identityOf(stats);
      const temp = TempFile.create(path, stats);
      const written = await temp.replace(model.bytes, () => sameIdentity(read, identityOf(statSync(path))));
      if (written !== undefined) return result;
      if (attempt >= ATTEMPTS) throw new Error(`${path}: keeps being changed by a program that ignores ${path}.lock; nothing written`);
    }
  });
}
