// The users file as a live store: an in-memory index for lookups, a watch for
// admins' edits, and group-committed durable writes under the shared lock.
// Every state change is decided under the lock against the file as it is on
// disk; no login is granted before its change is fsynced.
import { hash, randomBytes } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, readlinkSync, readSync, statSync, type Stats } from 'node:fs';
import { rm } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, resolve } from 'node:path';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { TempFile, tempFileOf } from './atomicWrite.js';
import { decide, decoyCheck, isLocked, type Policy, type Reason, type TokenState, type Verdict } from './decision.js';
import { lockUsersFile, type HeldLock } from './fileLock.js';
import { lingerActive } from './linger.js';
import type { UserStore } from './userStore.js';
import { DEFAULT_SCRYPT, isHashedPin, parsePinHash, verifyPin, type PinHash } from './pinHash.js';
import {
  layoutStoresFailures, lineState, parseUsersFile, parseUsersFileInSlices, sameLineState, tokenAt, withChangedLines,
  type LineState, type TokenLine, type UsersFileModel,
} from './usersFileFormat.js';

export type OutcomeReason = Reason | 'unknown_user' | 'throttled';

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

/** One authentication, as decided now and again in the group commit (or, store: redis, after a lost race). */
export interface LoginRequest {
  readonly login: string;
  readonly password: string;
  readonly ip: string;
  readonly logout: boolean;
  readonly usualIp: boolean;
  /** the login and a keyed hash of the password (see UsersFile.lingers) */
  readonly lingerKey: string;
  /** the stored PIN hashes the typed PIN matched, verified before the decision (see Attempt) */
  readonly verifiedPins?: ReadonlySet<string> | undefined;
}

interface Pending extends LoginRequest {
  /** refused already (a failure to count): never grants, whatever the file now says */
  readonly answered: boolean;
  resolve(outcome: Outcome): void;
}

const ignoreOutcome = (): void => undefined;

/** The answer to a login not in the file, or refused for a malformed line of it. */
export const unknownLogin = (lines: readonly number[] | undefined): Outcome => (lines === undefined
  ? { granted: false, reason: 'unknown_user' } : { granted: false, reason: 'unknown_user', detail: 'malformed line in users file' });

/**
 * HMAC-SHA-256 (RFC 2104) under a random key of this process, computed with two
 * one-shot hashes and the inner digest in hex: createHmac cost three times as
 * much on every lingering request. Key bytes below 0x80 keep both padded keys
 * ASCII, so string concatenation gives exactly the bytes HMAC hashes.
 */
export function hmacPads(): { inner: string; outer: string } {
  const key = randomBytes(64).map((b) => b & 0x7f);
  return {
    inner: Buffer.from(key.map((b) => b ^ 0x36)).toString('latin1'),
    outer: Buffer.from(key.map((b) => b ^ 0x5c)).toString('latin1'),
  };
}
/** The key credentials ride a linger under: the login and an HMAC of the password (never the password). */
export function lingerKeyOf(pads: { inner: string; outer: string }, login: string, password: string): string {
  return `${login}\0${hash('sha256', pads.outer + hash('sha256', pads.inner + password, 'hex'), 'base64')}`;
}

/** The token lines among `lines` whose PIN is stored hashed, or undefined if none. */
export function hashedTokensOf(model: UsersFileModel, lines: readonly number[]): TokenLine[] | undefined {
  let hashed: TokenLine[] | undefined;
  for (const i of lines) {
    const t = tokenAt(model, i);
    if (isHashedPin(t.pin)) (hashed ??= []).push(t);
  }
  return hashed;
}

/** A verdict as the gateway's answer. */
export const outcomeOf = (v: Verdict): Outcome =>
  (v.counted ? { granted: v.granted, reason: v.reason, counted: true } : { granted: v.granted, reason: v.reason });

export const LINGER: Outcome = Object.freeze({ granted: true, reason: 'linger' });
export const UNAVAILABLE: Outcome = Object.freeze({ granted: false, reason: 'unknown_user', unavailable: true });

/** An unknown login's PIN check where known ones may cost a scrypt: the work of a real hash, on a fixed salt. */
export const DECOY_PIN: PinHash = { params: DEFAULT_SCRYPT, salt: Buffer.alloc(16), hash: Buffer.alloc(32) };

/**
 * Runs as many tasks at once as it has slots, the others in turn: one per
 * client IP in turn, so a flood from one address waits behind itself, not in
 * front of everybody else. For scrypt: the thread pool it runs in (4 threads
 * unless UV_THREADPOOL_SIZE says otherwise) also takes the file lock, writes
 * and fsyncs every commit, and a flood of guesses (an unknown login costs a
 * decoy scrypt) held every login's commit up for seconds once it filled the pool.
 */
class Slots {
  /** waiting tasks by client; the Map's order is the round */
  private readonly waiting = new Map<string, (() => void)[]>();
  constructor(private free: number) {}

  async run<T>(client: string, task: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else {
      await new Promise<void>((resolve) => {
        const queue = this.waiting.get(client);
        if (queue) queue.push(resolve);
        else this.waiting.set(client, [resolve]);
      });
    }
    try {
      return await task();
    } finally {
      this.handOn();
    }
  }

  /** The slot goes to the first client in the round, which then moves to its end. */
  private handOn(): void {
    const first = this.waiting.entries().next();
    if (first.done === true) {
      this.free++;
      return;
    }
    const [client, queue] = first.value;
    this.waiting.delete(client);
    const wake = queue.shift();
    if (queue.length > 0) this.waiting.set(client, queue);
    wake?.();
  }
}

// One core left for the event loop, and two pool threads for the file.
const poolThreads = Number(process.env.UV_THREADPOOL_SIZE) || 4;
const pinChecks = new Slots(Math.max(1, Math.min(availableParallelism() - 1, poolThreads - 2)));
export const checkPin = (stored: PinHash, typed: string, ip: string): Promise<boolean> => pinChecks.run(ip, () => verifyPin(stored, typed));

/**
 * Verify the typed PIN of every line with a hashed PIN, locked or not, right or
 * wrong, each at its own hash's cost: the time taken tells nothing. A hash counts
 * as verified only where it matched on every line tried that holds it (lines
 * with codes of other lengths see other typed PINs).
 */
export async function verifiedPinsOf(tokens: readonly TokenLine[], password: string, ip: string): Promise<ReadonlySet<string>> {
  const results = await Promise.all(tokens.map((t): Promise<boolean | undefined> => {
    const stored = parsePinHash(t.pin) ?? DECOY_PIN; // (parseLine refuses a malformed hash)
    const cut = password.length - t.type.digits;
    // Too short to hold a code: decide() skips the line, the work is done all the same.
    if (cut < 0) return checkPin(stored, password, ip).then(() => undefined);
    return checkPin(stored, password.slice(0, cut), ip);
  }));
  const verified = new Set<string>();
  const refused = new Set<string>();
  tokens.forEach((t, k) => {
    const ok = results[k];
    if (ok !== undefined) (ok ? verified : refused).add(t.pin);
  });
  for (const pin of refused) verified.delete(pin);
  return verified;
}

/** Told about every durable write (metrics). */
export interface WriteObserver {
  lockWaited(seconds: number): void;
  wrote(batch: number, seconds: number): void;
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
  /** which unsafe ways of storing the file to accept; none unless given */
  readonly safety?: FileSafety;
}

/** How long consecutive commits may keep the lock before letting others have it. */
const HOLD_MS = 500;
/** How often a batch is decided again because someone changed the file without the lock. */
const MAX_ATTEMPTS = 3;

// A token's identity across reloads: memory follows the token, not its line number.
// Cached per line object: built on every lingering request otherwise.
const tokenKeys = new WeakMap<TokenLine, string>();
export function tokenKey(t: TokenLine): string {
  let key = tokenKeys.get(t);
  if (key === undefined) {
    key = `${t.login}\0${t.typeText}\0${t.keyHex}\0${t.pin}`;
    tokenKeys.set(t, key);
  }
  return key;
}

export interface FileIdentity { ino: number; size: number; mtimeMs: number; ctimeMs: number }
export const identityOf = (s: Stats): FileIdentity => ({ ino: s.ino, size: s.size, mtimeMs: s.mtimeMs, ctimeMs: s.ctimeMs });
export const sameIdentity = (a: FileIdentity | undefined, b: FileIdentity): boolean =>
  a !== undefined && a.ino === b.ino && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs;

/** Refuse a users file that others could read or change (its keys are secrets). */
export function permissionProblem(path: string, mode: number): string | undefined {
  if ((mode & 0o077) === 0) return undefined;
  return `${path}: readable or writable by group or others (mode ${(mode & 0o777).toString(8)}); ` +
    'chmod 600 it, or set allowInsecurePermissions: true';
}

/** The config keys that accept a users file stored in a way otpgate refuses by default. */
export interface FileSafety {
  readonly allowInsecurePermissions: boolean;
  readonly allowSymlinkedUsersFile: boolean;
  readonly allowUnsafeUsersFileDirectory: boolean;
}

export const STRICT: FileSafety = { allowInsecurePermissions: false, allowSymlinkedUsersFile: false, allowUnsafeUsersFileDirectory: false };

export interface SafetyProblem {
  readonly kind: 'symlink' | 'permissions' | 'directory';
  /** one line for people, naming the file and the override */
  readonly message: string;
}

function symlinkProblem(path: string): SafetyProblem {
  let target = '';
  try {
    target = ` to ${readlinkSync(path)}`;
  } catch { /* replaced meanwhile: the message still names the file */ }
  // Every writer of the protocol (otpgate, mod_authn_otp, pam_oath) renames its
  // temp file over the path: the first write would replace the link, and the
  // file it points to would silently stop changing.
  return {
    kind: 'symlink',
    message: `${path}: is a symbolic link${target}; point usersFile at the file itself, or set allowSymlinkedUsersFile: true`,
  };
}

/**
 * Directories from which others could swap the users file. In the file's own
 * directory any write access for others counts, sticky bit (as on /tmp) or
 * not: the sticky bit keeps our file, but anyone can still create the
 * protocol's fixed names `<file>.lock` (and hold it forever) and `<file>.new`
 * first. Above it, a world-writable directory without the sticky bit lets
 * anyone rename the directory below it and put their own in its place.
 */
function directoryProblems(path: string): SafetyProblem[] {
  const problems: SafetyProblem[] = [];
  for (let dir = dirname(resolve(path)), own = true; ; own = false) {
    let mode: number;
    try {
      mode = statSync(dir).mode;
    } catch {
      break; // unreadable or gone: opening the file tells why
    }
    if ((mode & 0o002) !== 0 && (own || (mode & 0o1000) === 0)) {
      const risk = own && (mode & 0o1000) !== 0
        ? `anyone can create ${path}.lock or ${path}.new before otpgate does`
        : 'anyone can replace the users file';
      problems.push({
        kind: 'directory',
        message: `${path}: directory ${dir} is writable by others (mode ${(mode & 0o7777).toString(8)}), so ${risk}; ` +
          `chmod o-w ${dir}, or set allowUnsafeUsersFileDirectory: true`,
      });
    }
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return problems;
}

/**
 * Every reason not to use the users file at `path` as it is stored now, except
 * those `safety` accepts; [] when none. `stats`: the opened file's, when it is
 * open (the mode that counts is that of the bytes being read).
 */
export function safetyProblems(path: string, safety: FileSafety, stats?: Stats): SafetyProblem[] {
  const problems: SafetyProblem[] = [];
  if (!safety.allowSymlinkedUsersFile) {
    let link: Stats | undefined;
    try {
      link = lstatSync(path);
    } catch { /* missing: opening the file tells why */ }
    if (link?.isSymbolicLink()) problems.push(symlinkProblem(path));
  }
  if (!safety.allowInsecurePermissions) {
    let mode: number | undefined;
    try {
      mode = (stats ?? statSync(path)).mode;
    } catch { /* missing: opening the file tells why */ }
    const message = mode === undefined ? undefined : permissionProblem(path, mode);
    if (message !== undefined) problems.push({ kind: 'permissions', message });
  }
  if (!safety.allowUnsafeUsersFileDirectory) problems.push(...directoryProblems(path));
  return problems;
}

/** A users file refused for how it is stored; one line per reason. */
export class UnsafeUsersFileError extends UsersFileError {
  constructor(readonly problems: readonly SafetyProblem[]) {
    super(problems.map((p) => p.message).join('\n'));
  }

  /** For the unauthenticated health answer: what kind of problem, not where the file is. */
  get summary(): string {
    return `users file refused as unsafe (${[...new Set(this.problems.map((p) => p.kind))].join(', ')})`;
  }
}

function cannotRead(path: string, err: unknown): UsersFileError {
  const code = (err as NodeJS.ErrnoException).code;
  const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'is a directory' : code;
  return Object.assign(new UsersFileError(`${path}: cannot read users file (${why})`), { code });
}

/**
 * Open the users file for reading, or throw why it must not be used. Without
 * allowSymlinkedUsersFile the open itself refuses a link (O_NOFOLLOW), so a
 * link swapped in after a check cannot be read through.
 */
function openUsersFileChecked(path: string, safety: FileSafety): { fd: number; stats: Stats } {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | (safety.allowSymlinkedUsersFile ? 0 : constants.O_NOFOLLOW));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP' && !safety.allowSymlinkedUsersFile) {
      const problems = safetyProblems(path, safety);
      throw new UnsafeUsersFileError(problems.some((p) => p.kind === 'symlink') ? problems : [symlinkProblem(path), ...problems]);
    }
    throw cannotRead(path, err);
  }
  const stats = fstatSync(fd);
  if (stats.isDirectory()) {
    closeSync(fd);
    throw cannotRead(path, { code: 'EISDIR' });
  }
  const problems = safetyProblems(path, safety, stats);
  if (problems.length > 0) {
    closeSync(fd);
    throw new UnsafeUsersFileError(problems);
  }
  return { fd, stats };
}

/** The whole users file, read through one checked descriptor: its bytes and the stats that belong to them. */
export function readUsersFileChecked(path: string, safety: FileSafety): { bytes: Buffer; stats: Stats } {
  const { fd, stats } = openUsersFileChecked(path, safety);
  try {
    return { bytes: readFileSync(fd), stats };
  } catch (err) {
    throw cannotRead(path, err);
  } finally {
    closeSync(fd);
  }
}

/** The IP of a login `after` records for `login` that `before` did not (another gateway's), if any. */
function newLoginIp(before: UsersFileModel, after: UsersFileModel, login: string): string | undefined {
  const latest = (m: UsersFileModel): { time: number; ip: string | undefined } => {
    let best = { time: -1, ip: undefined as string | undefined };
    for (const i of m.index.get(login) ?? []) {
      const entry = m.parsed[i];
      if (entry?.kind === 'token' && (entry.token.lastTime ?? -1) > best.time) best = { time: entry.token.lastTime ?? -1, ip: entry.token.lastIp };
    }
    return best;
  };
  const then = latest(before);
  const now = latest(after);
  return now.time > then.time ? now.ip : undefined;
}

/** Logins with a failure count above 0 in the file. */
function failingLogins(model: UsersFileModel): Set<string> {
  const logins = new Set<string>();
  for (const entry of model.parsed) if (entry.kind === 'token' && (entry.token.failures ?? 0) > 0) logins.add(entry.token.login);
  return logins;
}

/** The file was changed by someone who does not take the lock, between our read and our rename. */
class ChangedMeanwhile extends Error {}

export class UsersFile implements UserStore {
  readonly path: string;
  private policy: Policy;
  private readonly log: Logger;
  private readonly clock: () => number;
  private readonly lockTimeoutMs: number;
  private safety: FileSafety;
  private model: UsersFileModel;
  /** the file's identity when we last read or wrote it */
  private known: FileIdentity | undefined;
  private memory = new Map<string, Memory>();
  private problem: string | undefined;
  private closed = false;
  private readonly poller: NodeJS.Timeout | undefined;
  /** file operations (commits, reloads) run one at a time, in this chain */
  private ops: Promise<unknown> = Promise.resolve();
  private queue: Pending[] = [];
  private draining: Promise<void> | undefined;
  private reloadsWaiting = 0;
  /** the lock, while consecutive commits keep it (at most HOLD_MS) */
  private held: { lock: HeldLock; since: number } | undefined;
  /** while the lock is held: the temp file, already holding the current content (see TempFile.prepared) */
  private prepared: Promise<TempFile | undefined> | undefined;
  /** the last commit: its batch, how many logins were queued behind it, how long it took, when it ended */
  private lastCommit = { size: 0, leftWaiting: 0, ms: 0, endedAt: 0 };
  private wakeWhen: { size: number; wake: () => void } | undefined;
  /** reused buffers: the re-read before a commit, and the content of the next write */
  private scratch = Buffer.alloc(0);
  private spare: Buffer | undefined;
  /**
   * Credentials that logged in or rode a linger: the login and an HMAC of the
   * password under a secret of this process, never the password, mapped to the
   * token and code they matched. A request with the same credentials is then
   * checked against the token's linger without checking PIN and code again.
   * Only a hint: the file's last OTP, time and IP decide, as mod_authn_otp's do.
   */
  private readonly lingers = new LRUCache<string, { token: string; otp: string }>({ max: 100_000 });
  private readonly lingerPads = hmacPads();

  /** Load the file (throws UsersFileError naming it when missing or unreadable). */
  constructor(options: UsersFileOptions) {
    this.path = options.path;
    this.policy = options.policy;
    this.log = options.log;
    this.clock = options.clock ?? ((): number => Date.now() / 1000);
    this.lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
    this.safety = options.safety ?? STRICT;
    const { bytes, stats } = readUsersFileChecked(this.path, this.safety);
    this.known = identityOf(stats);
    this.model = this.reportProblems(parseUsersFile(bytes));
    if (options.pollMs !== 0) {
      this.poller = setInterval(() => this.poll(), options.pollMs ?? 1000);
      this.poller.unref();
    }
  }

  /** The file's stats (for the startup permission check), or UsersFileError naming it. */
  static statOf(path: string): Stats {
    try {
      return statSync(path);
    } catch (err) {
      throw cannotRead(path, err);
    }
  }

  get usable(): boolean { return this.problem === undefined; }
  get unusableReason(): string | undefined { return this.problem; }
  get userCount(): number { return this.model.index.size; }
  get tokenCount(): number { return this.model.tokenCount; }
  get malformedLines(): number { return this.model.problems.length; }
  /** credentials remembered as riding a linger */
  get lingerCount(): number { return this.lingers.size; }

  /** metrics: told about lock waits and writes */
  observer: WriteObserver | undefined;
  /**
   * told of each login whose failure count someone else's change took back to 0
   * (the throttle forgets it too), with the IP when the change is a login elsewhere
   */
  onFailuresCleared: ((login: string, loginIp: string | undefined) => void) | undefined;

  setPolicy(policy: Policy): void { this.policy = policy; }

  /** Takes effect at the next read of the file (reload(), the poll, the next commit). */
  setSafety(safety: FileSafety): void { this.safety = safety; }

  /** Is `login` in the file? (Where throttle counts are kept; it changes no answer.) */
  knows(login: string): boolean {
    return this.model.index.has(login);
  }

  /** Does a line of `login` record `ip` as where it last logged in? */
  lastLoggedInFrom(login: string, ip: string): boolean {
    const lines = this.model.index.get(login);
    if (lines === undefined) return false;
    const now = this.clock();
    return lines.some((i) => this.stateOf(this.model, i, now).lastIp === ip);
  }

  /**
   * Authenticate. Decided at once against the file and memory as they are:
   * a linger rides without a write; a refusal is answered now (unknown logins,
   * locked users and wrong codes alike take the same path and work, so their
   * timing tells nothing apart), its failure count written in the next group
   * commit. A login or logout is decided again under the lock, against the file
   * as it is on disk, and answered once its change is durable. Where the login
   * has a hashed PIN, all this waits for the PIN's scrypt in the thread pool
   * (for an unknown login, a decoy's, once the file holds any hashed PIN).
   */
  authenticate(login: string, password: string, ip: string, logout = false, usualIp = false): Outcome | Promise<Outcome> {
    if (this.problem !== undefined) return UNAVAILABLE;
    const lines = this.model.index.get(login);
    if (lines === undefined || this.model.refused.has(login)) {
      this.lingerKeyOf(login, password); // the work a known login's lookup costs
      decoyCheck(password, this.policy);
      const outcome = unknownLogin(lines);
      // Where a known login may cost a scrypt, an unknown one does too.
      return this.model.hashedPins === 0 ? outcome : checkPin(DECOY_PIN, password.slice(0, -6), ip).then(() => outcome);
    }
    const lingerKey = this.lingerKeyOf(login, password);
    const now = this.clock();
    if (!logout && this.rideCached(lines, lingerKey, ip, now)) return LINGER;
    const request: LoginRequest = { login, password, ip, logout, usualIp, lingerKey };
    if (this.model.hashedPins === 0) return this.decideNow(lines, request, now);
    const hashed = hashedTokensOf(this.model, lines);
    // In a file with hashed PINs a plain-PIN login costs a scrypt too: the time taken tells
    // no known login from an unknown one while PINs are being moved to hashes.
    const verified = hashed === undefined
      ? checkPin(DECOY_PIN, password.slice(0, -6), ip).then(() => undefined)
      : verifiedPinsOf(hashed, password, ip);
    return verified.then((verifiedPins) => {
      // The file may have been re-read meanwhile: its lines are looked up again.
      if (this.problem !== undefined) return UNAVAILABLE;
      const current = this.model.index.get(login);
      if (current === undefined || this.model.refused.has(login)) return unknownLogin(current);
      return this.decideNow(current, verifiedPins === undefined ? request : { ...request, verifiedPins }, this.clock());
    });
  }

  /** Decide against the file and memory as they are now (PINs hashed in the file already verified). */
  private decideNow(lines: readonly number[], request: LoginRequest, now: number): Outcome | Promise<Outcome> {
    const { login, password, ip, logout, usualIp, lingerKey, verifiedPins } = request;
    const states = lines.map((i) => this.stateOf(this.model, i, now));
    // The file's last login IP makes an IP usual too (the caller knows only recent logins of this process).
    const usual = usualIp || states.some((s) => s.lastIp === ip);
    const verdict = decide(states, { password, ip, now, logout, usualIp: usual, verifiedPins }, this.policy);
    if (verdict.reason === 'linger') {
      // Only the idle clock moves, and it lives in memory: no write, no wait.
      for (const [k, s] of verdict.changes) {
        const t = tokenAt(this.model, lines[k] as number);
        this.touch(t, s);
        if (s.lastOtp !== undefined) this.lingers.set(lingerKey, { token: tokenKey(t), otp: s.lastOtp });
      }
      return outcomeOf(verdict);
    }
    if (!verdict.granted && verdict.reason !== 'logout') {
      if (verdict.reason === 'locked') decoyCheck(password, this.policy); // the work a check would have cost
      if (verdict.changes.size > 0) {
        this.enqueue({ ...request, usualIp: usual, answered: true, resolve: ignoreOutcome });
      }
      return outcomeOf(verdict);
    }
    return new Promise<Outcome>((resolve) => this.enqueue({ ...request, usualIp: usual, answered: false, resolve }));
  }

  /** Do these credentials ride a linger they rode before (see lingers)? Moves its idle clock if so. */
  ridesLinger(login: string, password: string, ip: string): boolean {
    const lines = this.model.index.get(login);
    return lines !== undefined && this.problem === undefined && this.rideCached(lines, this.lingerKeyOf(login, password), ip, this.clock());
  }

  private lingerKeyOf(login: string, password: string): string {
    return lingerKeyOf(this.lingerPads, login, password);
  }

  /** The same credentials rode or started this token's linger before, and it still holds for `ip` now. */
  private rideCached(lines: readonly number[], lingerKey: string, ip: string, now: number): boolean {
    const hint = this.lingers.get(lingerKey);
    if (hint === undefined) return false;
    for (const i of lines) {
      const t = tokenAt(this.model, i);
      if (tokenKey(t) !== hint.token) continue;
      const s = this.stateOf(this.model, i, now);
      // A lock, a new login or a logout since: the full check decides.
      if (s.lastOtp !== hint.otp || isLocked(s, now, this.policy) || !lingerActive(s, ip, now, this.policy)) break;
      this.touch(t, { ...s, lastActive: now });
      return true;
    }
    this.lingers.delete(lingerKey);
    return false;
  }

  private enqueue(p: Pending): void {
    this.queue.push(p);
    if (this.wakeWhen && this.queue.length >= this.wakeWhen.size) this.wakeWhen.wake();
    this.scheduleDrain();
  }

  /** Re-read the file now (SIGHUP); resolves once the new content is in use. */
  async reload(): Promise<void> {
    this.reloadsWaiting++; // a drain under load lets it through at the next commit
    try {
      await this.exclusive(async () => {
        await this.refresh();
      });
    } finally {
      this.reloadsWaiting--;
    }
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

  /** Return once every change queued so far (e.g. the failure counts of refusals) is written. */
  async flush(): Promise<void> {
    while (this.draining !== undefined || this.queue.length > 0) {
      await (this.draining ?? new Promise((resolve) => setImmediate(resolve)));
    }
    await this.ops;
  }

  /** Stop watching, and return once every queued login has been answered. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.poller) clearInterval(this.poller);
    await this.flush();
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
    const before = this.model;
    const failing = this.onFailuresCleared === undefined ? undefined : failingLogins(before);
    this.model = model;
    if (failing !== undefined && failing.size > 0) {
      const still = failingLogins(model);
      for (const login of failing) {
        if (!still.has(login) && model.index.has(login)) this.onFailuresCleared?.(login, newLoginIp(before, model, login));
      }
    }
    this.known = identityOf(stats);
    this.log.info({ event: 'users_file_loaded', file: this.path, users: model.index.size, tokens: model.tokenCount,
      malformed: model.problems.length }, 'users file loaded');
  }

  /** The decision's view of a token line: the file's fields plus what memory holds. */
  private stateOf(model: UsersFileModel, i: number, now: number): TokenState {
    const t = tokenAt(model, i);
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
    return sameLineState(next, lineState(t), t) ? undefined : next;
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
    if (this.draining !== undefined) return;
    // setImmediate: let the requests that arrived together join one batch.
    this.draining = new Promise<void>((resolve) => setImmediate(resolve))
      .then(() => this.exclusive(() => this.drain()))
      .catch((err: Error) => this.log.error({ event: 'internal_error', err: err.message }, 'users file commit failed'))
      .finally(() => {
        this.draining = undefined;
        if (this.queue.length > 0) this.scheduleDrain();
      });
  }

  private async drain(): Promise<void> {
    try {
      // A commit that kept the lock expects its clients back: the next commit
      // starts at once and waits for them, though the queue is empty while they
      // are being answered. A reload waiting for its turn ends the drain.
      while ((this.queue.length > 0 || this.held !== undefined) && this.reloadsWaiting === 0) await this.commit();
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
   * Re-read the file, and adopt it if it changed since we last saw it.
   * Synchronous on purpose: copying even a 100,000-user file from the page
   * cache takes a millisecond or two, while a trip through the thread pool
   * waits behind every request being served, and this runs with the lock held.
   * Read through one descriptor (the stats belong to the bytes) into a reused
   * buffer, not a fresh multi-megabyte one at every commit.
   */
  private async refresh(): Promise<void> {
    let stats: Stats;
    let current: Buffer;
    try {
      const opened = openUsersFileChecked(this.path, this.safety);
      const fd = opened.fd;
      try {
        stats = opened.stats;
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
      // Fail closed, keeping the content last read: nobody logs in until the file is usable again.
      if (err instanceof UnsafeUsersFileError) {
        if (this.problem !== err.summary) {
          for (const p of err.problems) this.log.error({ event: 'users_file_unusable', file: this.path, code: `unsafe_${p.kind}` }, p.message);
        }
        this.problem = err.summary;
      } else {
        const code = (err as NodeJS.ErrnoException).code ?? 'error';
        if (this.problem === undefined) this.log.error({ event: 'users_file_unusable', file: this.path, code }, `${this.path}: cannot read users file (${code})`);
        this.problem = `cannot read users file (${code})`;
      }
      throw err;
    }
    if (this.problem !== undefined) this.log.info({ event: 'users_file_usable', file: this.path }, `${this.path}: readable again`);
    this.problem = undefined;
    if (current.equals(this.model.bytes)) this.known = identityOf(stats);
    else await this.adopt(Buffer.from(current), stats);
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
    // A chmod of the file changes its ctime; a chmod of a directory above it,
    // or a link to the same file put in its place, leaves stat() of it alike.
    if (!sameIdentity(this.known, current) || this.problem !== undefined || safetyProblems(this.path, this.safety).length > 0) {
      void this.reload().catch(() => undefined);
    }
  }

  /**
   * Decide every pending login of a batch against the model and memory as they
   * are now. Later logins in the batch see the changes of earlier ones.
   */
  private decideBatch(batch: readonly Pending[]): {
    model: UsersFileModel; draft: Map<number, TokenState>; outcomes: Outcome[]; hints: Map<Pending, { token: string; otp: string }>;
  } {
    const model = this.model;
    const now = this.clock();
    const draft = new Map<number, TokenState>();
    const hints = new Map<Pending, { token: string; otp: string }>();
    const outcomes = batch.map((p): Outcome => {
      const lines = model.index.get(p.login);
      // Gone or broken since it was queued (an admin's edit): nothing to record.
      if (lines === undefined || model.refused.has(p.login)) return { granted: false, reason: 'unknown_user' };
      const states = lines.map((i) => draft.get(i) ?? this.stateOf(model, i, now));
      // A PIN an admin changed since it was verified is not in verifiedPins: refused (fail closed).
      const verdict = decide(states, {
        password: p.password, ip: p.ip, now, logout: p.logout, usualIp: p.usualIp, verifiedPins: p.verifiedPins,
      }, this.policy);
      // A refusal already answered grants nothing now (the file changed meanwhile): only failures are recorded.
      if (p.answered && (verdict.granted || verdict.reason === 'logout')) return { granted: false, reason: verdict.reason };
      for (const [k, s] of verdict.changes) draft.set(lines[k] as number, s);
      const line = verdict.line === undefined ? undefined : lines[verdict.line];
      const otp = verdict.line === undefined ? undefined : verdict.changes.get(verdict.line)?.lastOtp;
      if (verdict.granted && line !== undefined && otp !== undefined) hints.set(p, { token: tokenKey(tokenAt(model, line)), otp });
      return outcomeOf(verdict);
    });
    return { model, draft, outcomes, hints };
  }

  /**
   * One group commit: take the lock (or keep it), re-read the file after
   * taking it, decide the batch, answer refusals, write the changes once,
   * then grant. Never throws: every login of the batch gets an answer.
   */
  private async commit(): Promise<void> {
    let pending: Pending[] = [];
    let answers: [Pending, Outcome][] = [];
    let lingerHints = new Map<Pending, { token: string; otp: string }>();
    let keepLock = false;
    const t0 = performance.now();
    try {
      if (this.held === undefined) {
        const lock = await lockUsersFile(this.path, this.lockTimeoutMs);
        this.held = { lock, since: performance.now() };
        this.observer?.lockWaited((this.held.since - t0) / 1000);
        // Nobody who respects the lock can change the file while we keep it:
        // one re-read per acquisition, and a check of the file's identity
        // just before each rename for those who do not (see write()).
        await this.refresh();
      }
      const t1 = performance.now();
      pending = await this.takeBatch();
      if (pending.length === 0) {
        this.lastCommit = { size: 0, leftWaiting: 0, ms: 0, endedAt: performance.now() };
        return;
      }
      const size = pending.length;
      const t2 = performance.now();
      for (let attempt = 1; pending.length > 0; attempt++) {
        const { model, draft, outcomes, hints } = this.decideBatch(pending);
        lingerHints = hints;
        // A refusal depends on nothing durable: answer it now, so it takes no
        // longer than an unknown login's. (Its failure count is written below.)
        // A grant, and a logout, count once their change is on disk.
        const later: [Pending, Outcome][] = [];
        pending.forEach((p, k) => {
          const o = outcomes[k] as Outcome;
          if (o.granted || o.reason === 'logout') later.push([p, o]);
          else p.resolve(o);
        });
        pending = later.map(([p]) => p);
        try {
          await this.write(model, draft, { batch: size, lockMs: t1 - t0, waitMs: t2 - t1 });
        } catch (err) {
          if (!(err instanceof ChangedMeanwhile) || attempt >= MAX_ATTEMPTS) throw err;
          this.log.warn({ event: 'users_file_changed', file: this.path }, `${this.path}: changed without the lock during a write; deciding again`);
          await this.refresh();
          continue;
        }
        answers = later;
        pending = [];
      }
      const endedAt = performance.now();
      this.lastCommit = { size, leftWaiting: this.queue.length, ms: endedAt - t2, endedAt };
      keepLock = size >= 2 && endedAt - this.held.since < HOLD_MS;
      // While its clients come back, write the next temp file's bulk (the disk is idle then).
      if (keepLock && this.prepared === undefined) {
        this.prepared = TempFile.prepared(this.path, this.model.bytes, statSync(this.path)).catch(() => undefined);
      }
    } catch (err) {
      this.log.error({ event: 'users_file_write_failed', file: this.path, err: (err as Error).message },
        `${this.path}: could not record logins: ${(err as Error).message}`);
      if (pending.length === 0) pending = this.queue.splice(0);
      for (const p of pending) p.resolve(UNAVAILABLE);
    } finally {
      if (!keepLock) await this.releaseLock();
    }
    // After the unlock: whoever waits for the lock (the admin CLI) gets it first.
    for (const [p, o] of answers) {
      const hint = lingerHints.get(p);
      if (hint !== undefined) this.lingers.set(p.lingerKey, hint);
      p.resolve(o);
    }
  }

  /** Write the draft's file changes (if any) durably, then make draft and file the state everyone sees. */
  private async write(model: UsersFileModel, draft: ReadonlyMap<number, TokenState>, timing: Record<string, number>): Promise<void> {
    const lineChanges = new Map<number, LineState>();
    for (const [i, s] of draft) {
      const change = this.fileChange(tokenAt(model, i), s);
      if (change) lineChanges.set(i, change);
    }
    if (lineChanges.size > 0) {
      const next = withChangedLines(model, lineChanges, this.spare);
      const started = performance.now();
      const temp = await this.tempFor(model.bytes);
      // Someone who ignores the lock replaced or edited the file since we read it: do not overwrite that.
      const after = await temp.replace(next.bytes, () => sameIdentity(this.known, identityOf(statSync(this.path))));
      if (after === undefined) throw new ChangedMeanwhile();
      this.known = identityOf(after);
      this.model = next;
      // Nothing refers to the old content any more: the next write fills it.
      this.spare = model.bytes.length >= 65536 && model.bytes.byteOffset === 0 ? Buffer.from(model.bytes.buffer) : undefined;
      this.observer?.wrote(timing.batch ?? 1, (performance.now() - started) / 1000);
      const ms = (n: number): number => Math.round(n * 10) / 10;
      this.log.debug({
        event: 'users_file_write', lines: lineChanges.size, batch: timing.batch, lockMs: ms(timing.lockMs ?? 0),
        waitMs: ms(timing.waitMs ?? 0), writeMs: ms(performance.now() - started),
      }, 'users file written');
    }
    // Memory follows the file: only now, with the change durable, is it visible to other requests.
    for (const [i, s] of draft) {
      const t = tokenAt(model, i);
      this.memory.set(tokenKey(t), this.memoryOf(t, s));
    }
  }

  /** The temp file for this write: the prepared one if it holds `base`, else a new one. */
  private async tempFor(base: Buffer): Promise<TempFile> {
    const prepared = await this.prepared;
    this.prepared = undefined;
    if (prepared?.holds(base)) return prepared;
    prepared?.discard();
    return TempFile.create(this.path, statSync(this.path));
  }

  private async releaseLock(): Promise<void> {
    const prepared = this.prepared;
    this.prepared = undefined;
    try {
      // The temp file is the lock holder's: delete it before letting go.
      (await prepared)?.discard();
    } catch (err) {
      this.log.warn({ event: 'users_file_temp', file: this.path, err: (err as Error).message }, `${tempFileOf(this.path)}: ${(err as Error).message}`);
    } finally {
      this.held?.lock.release();
      this.held = undefined;
    }
  }
}
