// The users file as a live store: an in-memory index for lookups, a watch for
// admins' edits, and group-committed durable writes under the shared lock.
// Every state change is decided again under the lock against the file as it
// is on disk, and no request is answered before its change is fsynced.
import { closeSync, fstatSync, openSync, readFileSync, readSync, statSync, type Stats } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Logger } from 'pino';
import { TempFile, tempFileOf } from './atomicWrite.js';
import { decide, decoyCheck, isLocked, type Policy, type Reason, type TokenState, type Verdict } from './decision.js';
import { lockUsersFile, type HeldLock } from './fileLock.js';
import {
  layoutStoresFailures, lineState, parseUsersFile, parseUsersFileInSlices, withChangedLines,
  type LineState, type TokenLine, type UsersFileModel,
} from './usersFileFormat.js';

export type OutcomeReason = Reason | 'unknown_user';

export interface Outcome {
  readonly granted: boolean;
  readonly reason: OutcomeReason;
  /** set when the file could not be used: answer 503, grant nothing */
  readonly unavailable?: boolean;
  /** e.g. why an existing login counts as unknown */
  readonly detail?: string;
  /** a wrong PIN or code that counted towards the lock */
  readonly counted?: boolean;
}

/** A failure to open the users file, as one line for people. */
export class UsersFileError extends Error {}

/** What the file cannot hold for a token, kept per token in memory. */
interface Memory {
  failures?: number | undefined;
  lockedAt?: number | undefined;
  lastActive?: number | undefined;
  usedStep?: number | undefined;
  retiredOtp?: string | undefined;
  /** a liboath-layout line's linger: the file records the OTP and time, not the IP */
  linger?: { otp: string; time: number; ip: string } | undefined;
}

interface Pending {
  readonly login: string;
  readonly password: string;
  readonly ip: string;
  readonly logout: boolean;
  resolve(outcome: Outcome): void;
}

export interface UsersFileOptions {
  readonly path: string;
  readonly policy: Policy;
  readonly log: Logger;
  /** epoch seconds; injectable for tests */
  readonly clock?: () => number;
  /** how often to look for edits by others */
  readonly pollMs?: number;
  readonly lockTimeoutMs?: number;
}

/** How long consecutive commits may keep the lock before letting others have it. */
const HOLD_MS = 500;

// A token's identity across reloads: memory follows the token, not its line number.
// Cached per line object: built on every lingering request otherwise.
const tokenKeys = new WeakMap<TokenLine, string>();
function tokenKey(t: TokenLine): string {
  let key = tokenKeys.get(t);
  if (key === undefined) {
    key = `${t.login}\0${t.typeText}\0${t.keyHex}\0${t.pin}`;
    tokenKeys.set(t, key);
  }
  return key;
}

interface FileIdentity { ino: number; size: number; mtimeMs: number; ctimeMs: number }
const identityOf = (s: Stats): FileIdentity => ({ ino: s.ino, size: s.size, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs });
const sameIdentity = (a: FileIdentity | undefined, b: FileIdentity): boolean =>
  a !== undefined && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;

const sameLineState = (a: LineState, b: LineState): boolean =>
  a.counter === b.counter && a.failures === b.failures && a.lastOtp === b.lastOtp &&
  a.lastTime === b.lastTime && a.lastIp === b.lastIp;

/** Refuse a users file that others could read or change (its keys are secrets). */
export function permissionProblem(path: string, mode: number): string | undefined {
  if ((mode & 0o077) === 0) return undefined;
  return `${path}: readable or writable by group or others (mode ${(mode & 0o777).toString(8)}); ` +
    'chmod 600 it, or set allowInsecurePermissions: true';
}

function readUsersFile(path: string): { bytes: Buffer; stats: Stats } {
  try {
    return { stats: statSync(path), bytes: readFileSync(path) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : code;
    throw new UsersFileError(`${path}: cannot read users file (${why})`);
  }
}

export class UsersFile {
  readonly path: string;
  private policy: Policy;
  private readonly log: Logger;
  private readonly clock: () => number;
  private readonly lockTimeoutMs: number;
  private model: UsersFileModel;
  private known: FileIdentity | undefined;
  private memory = new Map<string, Memory>();
  private queue: Pending[] = [];
  private draining = false;
  private ops: Promise<unknown> = Promise.resolve();
  private poller: NodeJS.Timeout | undefined;
  private problem: string | undefined;
  private closed = false;
  private scratch = Buffer.alloc(0);
  private spare: Buffer | undefined;

  /** Load the file (throws UsersFileError naming it when missing or unreadable). */
  constructor(options: UsersFileOptions) {
    this.path = options.path;
    this.policy = options.policy;
    this.log = options.log;
    this.clock = options.clock ?? ((): number => Date.now() / 1000);
    this.lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
    const { bytes, stats } = readUsersFile(this.path);
    this.known = identityOf(stats);
    this.model = this.reportProblems(parseUsersFile(bytes));
    if (options.pollMs !== 0) {
      this.poller = setInterval(() => this.poll(), options.pollMs ?? 1000);
      this.poller.unref();
    }
  }

  /** File permissions as loaded (for the startup check). */
  static statOf(path: string): Stats {
    return readUsersFile(path).stats;
  }

  get usable(): boolean { return this.problem === undefined; }
  get unusableReason(): string | undefined { return this.problem; }
  get userCount(): number { return this.model.index.size; }
  get tokenCount(): number { return this.model.tokenCount; }
  get malformedLines(): number { return this.model.problems.length; }

  setPolicy(policy: Policy): void { this.policy = policy; }

  /**
   * Authenticate. Answers at once when nothing durable changes (a linger, a
   * lock, an unknown user); otherwise after the change is on disk.
   */
  authenticate(login: string, password: string, ip: string, logout = false): Outcome | Promise<Outcome> {
    if (this.problem !== undefined) return { granted: false, reason: 'unknown_user', unavailable: true };
    const lines = this.model.index.get(login);
    if (lines === undefined || this.model.refused.has(login)) {
      decoyCheck(password, this.policy);
      return lines === undefined
        ? { granted: false, reason: 'unknown_user' }
        : { granted: false, reason: 'unknown_user', detail: 'malformed line in users file' };
    }
    const now = this.clock();
    const states = lines.map((i) => this.stateOf(this.model, i, now));
    // Only a linger, a lock or a logout can be answered without the lock; anything
    // else is decided under it, so the OTP window is searched once, not twice.
    const mayAnswerNow = password === '' ||
      states.some((s) => s.lastOtp !== undefined &&
        (password.endsWith(s.lastOtp) || (s.spec.type.algorithm === 'MOTP' && password.toLowerCase().endsWith(s.lastOtp)))) ||
      states.every((s) => isLocked(s, now, this.policy));
    const verdict = mayAnswerNow ? decide(states, { password, ip, now, logout }, this.policy) : undefined;
    if (verdict && verdict.changes.size === 0) return this.outcome(verdict);
    if (verdict?.reason === 'linger') {
      // Only the idle clock moves, and it lives in memory: no write, no wait.
      for (const [k, s] of verdict.changes) this.touch(this.tokenAt(this.model, lines[k] as number), s);
      return this.outcome(verdict);
    }
    return new Promise<Outcome>((resolve) => {
      this.queue.push({ login, password, ip, logout, resolve });
      if (this.wakeWhen && this.queue.length >= this.wakeWhen.size) this.wakeWhen.wake();
      this.scheduleDrain();
    });
  }

  /** Re-read the file now (SIGHUP); resolves once the new content is in use. */
  reload(): Promise<void> {
    return this.exclusive(async () => {
      await this.refresh();
    });
  }

  /** Remove a temp file left by a writer that crashed (only while holding the lock). */
  removeStaleTemp(): Promise<void> {
    return this.exclusive(async () => {
      const lock = await lockUsersFile(this.path, this.lockTimeoutMs);
      try {
        await rm(tempFileOf(this.path), { force: true });
      } finally {
        lock.release();
      }
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.poller) clearInterval(this.poller);
    await this.ops.catch(() => undefined);
    while (this.draining || this.queue.length > 0) await this.ops.catch(() => undefined);
  }

  private outcome(v: Verdict): Outcome {
    return v.counted ? { granted: v.granted, reason: v.reason, counted: true } : { granted: v.granted, reason: v.reason };
  }

  private reportProblems(model: UsersFileModel): UsersFileModel {
    for (const p of model.problems) this.log.warn({ event: 'users_file_line', file: this.path, line: p.line }, `${this.path}:${p.line}: ${p.reason}`);
    return model;
  }

  /** Parse a changed file in slices (requests keep flowing on the old one), then swap it in. */
  private async adopt(bytes: Buffer, stats: Stats): Promise<void> {
    const model = this.reportProblems(await parseUsersFileInSlices(bytes));
    // Forget in-memory state of tokens that are gone (an admin removed or re-keyed them).
    const keys = new Set<string>();
    for (const entry of model.parsed) if (entry.kind === 'token') keys.add(tokenKey(entry.token));
    for (const key of this.memory.keys()) if (!keys.has(key)) this.memory.delete(key);
    this.model = model;
    this.known = identityOf(stats);
    this.log.info({ event: 'users_file_loaded', file: this.path, users: model.index.size, tokens: model.tokenCount,
      malformed: model.problems.length }, 'users file loaded');
  }

  private tokenAt(model: UsersFileModel, i: number): TokenLine {
    const entry = model.parsed[i];
    if (entry?.kind !== 'token') throw new Error(`line ${i + 1} is not a token line`);
    return entry.token;
  }

  /** The decision's view of a token line: the file's fields plus what memory holds. */
  private stateOf(model: UsersFileModel, i: number, now: number): TokenState {
    const t = this.tokenAt(model, i);
    const mem = this.memory.get(tokenKey(t));
    const failures = layoutStoresFailures(t) ? (t.failures ?? 0) : (mem?.failures ?? 0);
    let lockedAt = mem?.lockedAt;
    if (this.policy.maxFailures > 0 && failures >= this.policy.maxFailures && lockedAt === undefined) {
      // The file says locked but not since when (mod_authn_otp locks forever): the lock starts now.
      lockedAt = Math.floor(now);
      this.memory.set(tokenKey(t), { ...mem, lockedAt });
    }
    const linger = mem?.linger;
    const lastIp = t.lastIp ??
      (t.liboathLayout && linger && linger.otp === t.lastOtp && linger.time === t.lastTime ? linger.ip : undefined);
    return {
      spec: t, counter: t.counter, failures, lockedAt,
      lastOtp: t.lastOtp, lastTime: t.lastTime, lastIp,
      lastActive: mem?.lastActive, usedStep: mem?.usedStep, retiredOtp: mem?.retiredOtp,
    };
  }

  /** What of a new token state goes to the file (undefined: nothing changes there). */
  private fileChange(t: TokenLine, s: TokenState): LineState | undefined {
    const next: LineState = {
      counter: s.counter,
      failures: layoutStoresFailures(t) ? s.failures : (t.failures ?? 0),
      ...(s.lastOtp !== undefined ? { lastOtp: s.lastOtp } : {}),
      ...(s.lastTime !== undefined ? { lastTime: s.lastTime } : {}),
      ...(s.lastIp !== undefined && !t.liboathLayout ? { lastIp: s.lastIp } : {}),
    };
    return sameLineState(next, lineState(t)) ? undefined : next;
  }

  private memoryOf(t: TokenLine, s: TokenState): Memory {
    return {
      failures: layoutStoresFailures(t) ? undefined : s.failures,
      lockedAt: s.lockedAt,
      lastActive: s.lastActive,
      usedStep: s.usedStep,
      retiredOtp: s.retiredOtp,
      linger: t.liboathLayout && s.lastOtp !== undefined && s.lastTime !== undefined && s.lastIp !== undefined
        ? { otp: s.lastOtp, time: s.lastTime, ip: s.lastIp } : undefined,
    };
  }

  /** A linger rode: move the idle clock (in place: this runs for every page resource). */
  private touch(t: TokenLine, s: TokenState): void {
    const key = tokenKey(t);
    const mem = this.memory.get(key);
    if (mem) mem.lastActive = s.lastActive;
    else this.memory.set(key, this.memoryOf(t, s));
  }

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.ops.then(fn, fn);
    this.ops = run.catch(() => undefined);
    return run;
  }

  private scheduleDrain(): void {
    if (this.draining) return;
    this.draining = true;
    // setImmediate: let the requests that arrived together join one batch.
    setImmediate(() => {
      void this.exclusive(() => this.drain()).finally(() => {
        this.draining = false;
        if (this.queue.length > 0) this.scheduleDrain();
      });
    });
  }

  private async drain(): Promise<void> {
    try {
      // A commit that kept the lock expects its clients back: the next commit
      // starts at once and waits for them, though the queue is empty while they
      // are being answered.
      while (this.queue.length > 0 || this.held !== undefined) await this.commit();
    } finally {
      await this.releaseLock();
    }
  }

  /**
   * Group commit: the clients the last write just answered are about to send
   * their next login. Waiting (at most about one write) for them to arrive makes
   * the next batch whole, instead of splitting the clients into groups that take
   * turns (PostgreSQL's commit_delay does the same). The wait runs while the
   * lock is already held and the file re-read, so those overlap it.
   */
  private takeBatch(): Promise<Pending[]> {
    const last = this.lastCommit;
    const until = last.endedAt + Math.min(60, Math.max(25, 1.5 * last.ms));
    return this.moreQueued(last.size + last.leftWaiting, until - performance.now()).then(() => {
      const batch = this.queue;
      this.queue = [];
      return batch;
    });
  }

  /** The last commit: its batch, how many logins were queued behind it, how long it took, when it ended. */
  private lastCommit = { size: 0, leftWaiting: 0, ms: 0, endedAt: 0 };

  private wakeWhen: { size: number; wake: () => void } | undefined;

  private moreQueued(size: number, ms: number): Promise<void> {
    if (this.queue.length >= size || ms <= 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wakeWhen = undefined;
        resolve();
      }, ms);
      this.wakeWhen = {
        size,
        wake: () => {
          clearTimeout(timer);
          this.wakeWhen = undefined;
          resolve();
        },
      };
    });
  }

  /**
   * Re-read the file, and adopt it if it changed since we last saw it. Returns
   * its stats. Synchronous on purpose: copying even a 100,000-user file from
   * the page cache takes a millisecond or two, while a trip through the thread
   * pool waits behind every request being served, and this runs with the lock
   * held. Read through one descriptor (the stats belong to the bytes) into a
   * reused buffer, not a fresh multi-megabyte one at every commit.
   */
  private async refresh(): Promise<Stats> {
    let stats: Stats;
    let current: Buffer;
    try {
      const fd = openSync(this.path, 'r');
      try {
        stats = fstatSync(fd);
        if (this.scratch.length <= stats.size) this.scratch = Buffer.allocUnsafe(Math.ceil(stats.size * 1.25) + 4096);
        let got = 0;
        for (let n; (n = readSync(fd, this.scratch, got, this.scratch.length - got, got)) > 0;) {
          got += n;
          if (got === this.scratch.length) this.scratch = Buffer.concat([this.scratch, Buffer.allocUnsafe(this.scratch.length)]);
        }
        current = this.scratch.subarray(0, got);
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      if (this.problem === undefined) this.log.error({ event: 'users_file_unusable', file: this.path, code }, `${this.path}: cannot read users file (${code})`);
      this.problem = `cannot read users file (${code})`;
      throw err;
    }
    if (this.problem !== undefined) this.log.info({ event: 'users_file_usable', file: this.path }, `${this.path}: readable again`);
    this.problem = undefined;
    if (current.equals(this.model.bytes)) this.known = identityOf(stats);
    else await this.adopt(Buffer.from(current), stats);
    return stats;
  }

  private poll(): void {
    if (this.closed) return;
    let current: FileIdentity;
    try {
      current = identityOf(statSync(this.path));
    } catch {
      if (this.problem === undefined) void this.reload().catch(() => undefined);
      return;
    }
    if (!sameIdentity(this.known, current) || this.problem !== undefined) void this.reload().catch(() => undefined);
  }

  /** One group commit: decide every pending attempt again under the lock, write once, answer all. */
  /**
   * The lock, while consecutive commits keep it. Nobody who respects the lock
   * can change the file meanwhile, so it is re-read once per acquisition, not
   * before each of those writes; held at most HOLD_MS so others get their turn.
   */
  private held: { lock: HeldLock; since: number } | undefined;
  /** While the lock is held: the temp file, already holding the current content (see TempFile.prepared). */
  private prepared: Promise<TempFile | undefined> | undefined;

  private async releaseLock(): Promise<void> {
    // The temp file is the lock holder's: delete it before letting go.
    (await this.prepared)?.discard();
    this.prepared = undefined;
    this.held?.lock.release();
    this.held = undefined;
  }

  /** The temp file for this write: the prepared one if it holds `base`, else a new one. */
  private async tempFor(base: Buffer, stats: Stats): Promise<TempFile> {
    const prepared = await this.prepared;
    this.prepared = undefined;
    if (prepared?.holds(base)) return prepared;
    prepared?.discard();
    return TempFile.create(this.path, stats);
  }

  private async commit(): Promise<void> {
    let batch: Pending[] | undefined;
    let keepLock = false;
    const outcomes: Outcome[] = [];
    const t0 = performance.now();
    try {
      if (this.held === undefined) {
        const lock = await lockUsersFile(this.path, this.lockTimeoutMs);
        this.held = { lock, since: performance.now() };
        await this.refresh();
      }
      const t1 = performance.now();
      const stats = statSync(this.path);
      const tRead = performance.now();
      batch = await this.takeBatch();
      const t2 = performance.now();
      if (batch.length === 0) {
        this.lastCommit = { size: 0, leftWaiting: 0, ms: 0, endedAt: t2 };
        return;
      }
      const model = this.model;
      const now = this.clock();
      const draft = new Map<number, TokenState>();
      for (const p of batch) {
        const lines = model.index.get(p.login);
        if (lines === undefined || model.refused.has(p.login)) {
          outcomes.push({ granted: false, reason: 'unknown_user' });
          continue;
        }
        const states = lines.map((i) => draft.get(i) ?? this.stateOf(model, i, now));
        const verdict = decide(states, { password: p.password, ip: p.ip, now, logout: p.logout }, this.policy);
        for (const [k, s] of verdict.changes) draft.set(lines[k] as number, s);
        outcomes.push(this.outcome(verdict));
      }
      const lineChanges = new Map<number, LineState>();
      for (const [i, s] of draft) {
        const change = this.fileChange(this.tokenAt(model, i), s);
        if (change) lineChanges.set(i, change);
      }
      if (lineChanges.size > 0) {
        const next = withChangedLines(model, lineChanges, this.spare);
        const t3 = performance.now();
        await (await this.tempFor(model.bytes, stats)).replace(next.bytes);
        this.model = next;
        // Nothing refers to the old content any more: the next write fills it.
        this.spare = model.bytes.length >= 65536 && model.bytes.byteOffset === 0 ? Buffer.from(model.bytes.buffer) : undefined;
        this.known = identityOf(statSync(this.path));
        const ms = (a: number, b: number): number => Math.round((b - a) * 10) / 10;
        this.log.debug({
          event: 'users_file_write', lines: lineChanges.size, batch: batch.length, lockMs: ms(t0, t1), statMs: ms(t1, tRead),
          waitMs: ms(tRead, t2), decideMs: ms(t2, t3), writeMs: ms(t3, performance.now()),
        }, 'users file written');
      }
      // Memory follows the file: only now, with the change durable, is it visible to other requests.
      for (const [i, s] of draft) {
        const t = this.tokenAt(model, i);
        this.memory.set(tokenKey(t), this.memoryOf(t, s));
      }
      const endedAt = performance.now();
      this.lastCommit = { size: batch.length, leftWaiting: this.queue.length, ms: endedAt - t2, endedAt };
      keepLock = batch.length >= 2 && endedAt - this.held.since < HOLD_MS;
      // While its clients come back, write the next temp file's bulk (the disk is idle then).
      if (keepLock) this.prepared = TempFile.prepared(this.path, this.model.bytes, stats).catch(() => undefined);
    } catch (err) {
      this.log.error({ event: 'users_file_write_failed', file: this.path, err: (err as Error).message },
        `${this.path}: could not record logins: ${(err as Error).message}`);
      batch ??= this.queue.splice(0);
      for (const p of batch) p.resolve({ granted: false, reason: 'unknown_user', unavailable: true });
      return;
    } finally {
      if (!keepLock) await this.releaseLock();
    }
    batch.forEach((p, k) => p.resolve(outcomes[k] as Outcome));
  }
}
