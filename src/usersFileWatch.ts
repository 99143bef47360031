// The users file read-only, for store: redis: users, keys and PINs come from
// it (a copy per gateway, kept in step by the operator's config management),
// what changes lives in Redis, and the file is never written. Edits are
// picked up within a second; an unusable file fails closed (nobody logs in)
// and keeps the content last read.
import { statSync } from 'node:fs';
import type { Logger } from 'pino';
import {
  identityOf, readUsersFileChecked, safetyProblems, sameIdentity, STRICT, UnsafeUsersFileError,
  type FileIdentity, type FileSafety,
} from './usersFile.js';
import { parseUsersFile, parseUsersFileInSlices, type UsersFileModel } from './usersFileFormat.js';

export class UsersFileWatch {
  model: UsersFileModel;
  /** why the file cannot be used now (undefined: it can) */
  problem: string | undefined;
  private known: FileIdentity | undefined;
  private readonly poller: NodeJS.Timeout | undefined;
  private reading: Promise<void> | undefined;
  /** told of each new content, after the swap */
  onChange: ((before: UsersFileModel, after: UsersFileModel) => void) | undefined;

  /** Read the file now (throws UsersFileError naming it when missing, unreadable or unsafe). */
  constructor(readonly path: string, private safety: FileSafety = STRICT, private readonly log: Logger, pollMs = 1000) {
    const { bytes, stats } = readUsersFileChecked(path, safety);
    this.known = identityOf(stats);
    this.model = this.reported(parseUsersFile(bytes));
    if (pollMs > 0) {
      this.poller = setInterval(() => this.poll(), pollMs);
      this.poller.unref();
    }
  }

  setSafety(safety: FileSafety): void { this.safety = safety; }

  /** Read again now (SIGHUP), and use the new content if it changed. Rejects when the file is unusable. */
  reload(): Promise<void> {
    this.reading ??= this.read().finally(() => { this.reading = undefined; });
    return this.reading;
  }

  close(): void {
    if (this.poller) clearInterval(this.poller);
  }

  private async read(): Promise<void> {
    let read: ReturnType<typeof readUsersFileChecked>;
    try {
      read = readUsersFileChecked(this.path, this.safety);
    } catch (err) {
      const summary = err instanceof UnsafeUsersFileError ? err.summary : (err as Error).message;
      if (this.problem !== summary) this.log.error({ event: 'users_file_unusable', file: this.path }, (err as Error).message);
      this.problem = summary;
      throw err;
    }
    if (this.problem !== undefined) this.log.info({ event: 'users_file_usable', file: this.path }, `${this.path}: readable again`);
    this.problem = undefined;
    this.known = identityOf(read.stats);
    if (read.bytes.equals(this.model.bytes)) return;
    const before = this.model;
    this.model = this.reported(await parseUsersFileInSlices(read.bytes));
    this.log.info({ event: 'users_file_loaded', file: this.path, users: this.model.index.size, tokens: this.model.tokenCount,
      malformed: this.model.problems.length }, 'users file loaded');
    this.onChange?.(before, this.model);
  }

  private reported(model: UsersFileModel): UsersFileModel {
    for (const p of model.problems) this.log.warn({ event: 'users_file_line', file: this.path, line: p.line }, `${this.path}:${p.line}: ${p.reason}`);
    return model;
  }

  private poll(): void {
    let current: FileIdentity | undefined;
    try {
      current = identityOf(statSync(this.path));
    } catch {
      current = undefined;
    }
    if (current === undefined || !sameIdentity(this.known, current) || this.problem !== undefined ||
      safetyProblems(this.path, this.safety).length > 0) {
      void this.reload().catch(() => undefined);
    }
  }
}
