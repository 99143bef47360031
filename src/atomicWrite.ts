// Durable, atomic replacement of a file: after a crash at any instant the path
// names either the complete old file or the complete new one.
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Stats } from 'node:fs';

/** The temp file the update protocol writes (mod_authn_otp's and liboath's name for it). */
export const tempFileOf = (file: string): string => `${file}.new`;

/**
 * Replace `file` with `bytes`, keeping `original`'s mode and owner. Only call
 * while holding the users-file lock: the temp file name is shared with the other
 * writers that respect that lock.
 */
export async function replaceFile(file: string, bytes: Buffer, original: Stats): Promise<void> {
  const temp = tempFileOf(file);
  // A leftover from a writer that crashed; nobody else may be writing it while we hold the lock.
  await rm(temp, { force: true });
  const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  let renamed = false;
  try {
    await handle.chmod(original.mode & 0o7777);
    if (original.uid !== process.getuid?.() || original.gid !== process.getgid?.()) {
      await handle.chown(original.uid, original.gid);
    }
    let offset = 0;
    while (offset < bytes.length) {
      const { bytesWritten } = await handle.write(bytes, offset, bytes.length - offset);
      offset += bytesWritten;
    }
    await handle.sync();
    await handle.close();
    await rename(temp, file);
    renamed = true;
    await syncDirectory(dirname(file));
  } finally {
    if (!renamed) {
      await handle.close().catch(() => undefined);
      await rm(temp, { force: true });
    }
  }
}

/** fsync a directory so a rename in it survives a power loss. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
