// Durable, atomic replacement of a file: after a crash at any instant the path
// names either the complete old file or the complete new one.
//
// The metadata calls (open, fchmod, fchown, rename, close) are synchronous: each
// takes microseconds, while a trip through the thread pool waits behind every
// request the event loop is serving. Writing the data and the fsyncs stay
// asynchronous so requests keep flowing meanwhile.
import { closeSync, constants, fchmodSync, fchownSync, fsync, ftruncateSync, openSync, renameSync, rmSync, statSync, write } from 'node:fs';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import type { Stats } from 'node:fs';

const fsyncAsync = promisify(fsync);
const writeAt = (fd: number, bytes: Buffer, from: number, to: number): Promise<number> =>
  new Promise((resolve, reject) => {
    write(fd, bytes, from, to - from, from, (err, written) => (err ? reject(err) : resolve(written)));
  });

async function writeRange(fd: number, bytes: Buffer, from: number, to: number): Promise<void> {
  for (let at = from; at < to;) at += await writeAt(fd, bytes, at, to);
}

/** The temp file the update protocol writes (mod_authn_otp's and liboath's name for it). */
export const tempFileOf = (file: string): string => `${file}.new`;

const CREATE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const PAGE = 4096;

/**
 * `<file>.new`, with the mode and owner of the file it will replace. Only use it
 * while holding the users-file lock: the name is shared with the other writers
 * that respect that lock.
 */
export class TempFile {
  private fd: number | undefined;
  /** renamed over the file: nothing left to discard */
  private done = false;
  /** what the temp file holds and has fsynced, if anything */
  private content: Buffer | undefined;

  private constructor(readonly file: string, original: Stats) {
    const temp = tempFileOf(file);
    let fd: number;
    try {
      fd = openSync(temp, CREATE, 0o600);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      // A leftover from a writer that crashed; nobody else may be writing it while we hold the lock.
      rmSync(temp, { force: true });
      fd = openSync(temp, CREATE, 0o600);
    }
    this.fd = fd;
    try {
      fchmodSync(fd, original.mode & 0o7777);
      if (original.uid !== process.getuid?.() || original.gid !== process.getgid?.()) fchownSync(fd, original.uid, original.gid);
    } catch (err) {
      this.discard();
      throw err;
    }
  }

  static create(file: string, original: Stats): TempFile {
    return new TempFile(file, original);
  }

  /**
   * Write `base` and fsync it ahead of time, while nothing waits for it. The
   * next `replace` then only rewrites the pages that differ, and its fsync
   * flushes those few pages instead of the whole file.
   */
  static async prepared(file: string, base: Buffer, original: Stats): Promise<TempFile> {
    const temp = new TempFile(file, original);
    try {
      await writeRange(temp.descriptor(), base, 0, base.length);
      await fsyncAsync(temp.descriptor());
      temp.content = base;
      return temp;
    } catch (err) {
      temp.discard();
      throw err;
    }
  }

  /**
   * Make the temp file hold `bytes`, fsync it, rename it over the file, fsync
   * the directory. `stillCurrent`, asked just before the rename, can veto it
   * (the file changed under someone who ignores the lock): then the temp file
   * is deleted and the result is undefined. Otherwise the result is the file's
   * stats right after the rename.
   */
  async replace(bytes: Buffer, stillCurrent: () => boolean = () => true): Promise<Stats | undefined> {
    const fd = this.descriptor();
    let after: Stats;
    try {
      for (const [from, to] of changedRanges(this.content, bytes)) await writeRange(fd, bytes, from, to);
      if (this.content !== undefined && this.content.length > bytes.length) ftruncateSync(fd, bytes.length);
      this.content = undefined;
      await fsyncAsync(fd);
      if (!stillCurrent()) {
        this.discard();
        return undefined;
      }
      closeSync(fd);
      this.fd = undefined;
      renameSync(tempFileOf(this.file), this.file);
      this.done = true;
      after = statSync(this.file);
    } catch (err) {
      this.discard();
      throw err;
    }
    await syncDirectory(dirname(this.file));
    return after;
  }

  /** Does it hold exactly this content (the buffer it was prepared from)? */
  holds(bytes: Buffer): boolean {
    return this.content === bytes;
  }

  /** Close and delete the temp file (not used, or a failed write). */
  discard(): void {
    if (this.done) return;
    this.done = true;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    rmSync(tempFileOf(this.file), { force: true });
  }

  private descriptor(): number {
    if (this.fd === undefined || this.done) throw new Error(`${tempFileOf(this.file)}: already used`);
    return this.fd;
  }
}

/**
 * The byte ranges to write so a file holding `old` holds `next`: the pages that
 * differ, and everything from the first page whose position moved when the
 * lengths differ. All of it when there is no old content.
 */
export function changedRanges(old: Buffer | undefined, next: Buffer): [number, number][] {
  if (old === undefined) return next.length > 0 ? [[0, next.length]] : [];
  const ranges: [number, number][] = [];
  const common = Math.min(old.length, next.length);
  for (let at = 0; at < common; at += PAGE) {
    const end = Math.min(at + PAGE, common);
    if (old.compare(next, at, end, at, end) === 0) continue;
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === at) last[1] = end;
    else ranges.push([at, end]);
  }
  if (next.length > common) {
    const last = ranges[ranges.length - 1];
    if (last !== undefined && last[1] === common) last[1] = next.length;
    else ranges.push([common, next.length]);
  }
  return ranges;
}

/** fsync a directory so a rename in it survives a power loss. */
export async function syncDirectory(dir: string): Promise<void> {
  const fd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fsyncAsync(fd);
  } finally {
    closeSync(fd);
  }
}
