// The authentication decision: does this password, from this IP, at this time,
// log this user in, and what changes? Pure: the caller supplies the user's token
// lines (file + in-memory state), the clock and the policy.
import { hash } from 'node:crypto';
import {
  codeAt, codesEqual, findEventCounter, findTimeStep, locateStep, stepAt, type TokenType,
} from './otp.js';
import { lingerActive, type LingerPolicy } from './linger.js';
import { isHashedPin } from './pinHash.js';

export interface Policy extends LingerPolicy {
  readonly maxOffset: number;
  /** consecutive failures before a token is locked; 0 = no limit */
  readonly maxFailures: number;
  /** seconds a lock lasts; 0 = until an admin clears the count */
  readonly lockoutSeconds: number;
  /** each failure after a lock ended doubles the next lock, up to this (0: no growth) */
  readonly maxLockoutSeconds: number;
  /** consecutive failures after which a lock lasts until an admin clears it (0: never) */
  readonly permanentLockAfter: number;
}

/** What the decision needs to know about one token line. */
export interface TokenSpec {
  readonly type: TokenType;
  /** `-` no PIN, `+` checked by another provider, a `$scrypt$` hash, else the PIN */
  readonly pin: string;
  readonly key: Uint8Array;
  /**
   * a liboath 7-field line: field 5 of a time token is liboath's bookkeeping
   * (old value + |steps off|), not a drift (users-file.md, field 5), and the
   * line cannot record the IP of a linger
   */
  readonly liboathLayout: boolean;
}

export interface TokenState {
  readonly spec: TokenSpec;
  /** event tokens: next counter expected; time tokens: field 5 (see liboathLayout) */
  readonly counter: number;
  readonly failures: number;
  /** epoch seconds the current lock began (failures reached maxFailures) */
  readonly lockedAt?: number | undefined;
  readonly lastOtp?: string | undefined;
  readonly lastTime?: number | undefined;
  readonly lastIp?: string | undefined;
  readonly lastActive?: number | undefined;
  /** time tokens: highest step known to be used (survives a logout in memory) */
  readonly usedStep?: number | undefined;
  /** a code ended by logout: a browser resending it is not a guess */
  readonly retiredOtp?: string | undefined;
}

export type Reason = 'ok' | 'linger' | 'bad_pin' | 'bad_otp' | 'locked' | 'logout';

export interface Attempt {
  readonly password: string;
  readonly ip: string;
  /** epoch seconds */
  readonly now: number;
  /** a request to the logout path: end the linger these credentials ride, grant nothing */
  readonly logout?: boolean;
  /**
   * the account logged in from this IP recently: a timed lock does not apply
   * here, so failures from elsewhere cannot keep the owner out (lockout-DoS)
   */
  readonly usualIp?: boolean;
  /**
   * the stored PIN hashes the typed PIN matched, checked by the caller
   * beforehand: scrypt is far too slow to run here, on the event loop
   */
  readonly verifiedPins?: ReadonlySet<string>;
}

export interface Verdict {
  readonly granted: boolean;
  readonly reason: Reason;
  /** index of the line that logged in or rode its linger */
  readonly line?: number;
  /** new state of every line that changes, by index */
  readonly changes: ReadonlyMap<number, TokenState>;
  /** a wrong PIN or code that counted towards the lock */
  readonly counted: boolean;
}

/**
 * How long the lock that `failures` consecutive failures earn lasts: lockoutSeconds
 * for the first, doubling with each failure after it (each can only come once the
 * previous lock ended), up to maxLockoutSeconds. 0: until an admin clears the count.
 */
export function lockSeconds(failures: number, policy: Policy): number {
  if (policy.lockoutSeconds === 0) return 0;
  const cap = Math.max(policy.lockoutSeconds, policy.maxLockoutSeconds);
  return Math.min(cap, policy.lockoutSeconds * 2 ** Math.max(0, failures - policy.maxFailures));
}

/** Is the line locked, and does the lock end by itself? */
export function lockOf(s: TokenState, now: number, policy: Policy): 'none' | 'timed' | 'permanent' {
  if (policy.maxFailures === 0 || s.failures < policy.maxFailures) return 'none';
  if (policy.lockoutSeconds === 0 || (policy.permanentLockAfter > 0 && s.failures >= policy.permanentLockAfter)) return 'permanent';
  // Unknown start of a lock: fail closed (the caller records when it first saw it).
  if (s.lockedAt === undefined) return 'timed';
  return now < s.lockedAt + lockSeconds(s.failures, policy) ? 'timed' : 'none';
}

export const isLocked = (s: TokenState, now: number, policy: Policy): boolean => lockOf(s, now, policy) !== 'none';

/** A lock that keeps this attempt out: a timed lock does not hold from the account's usual IP. */
function locksOut(s: TokenState, attempt: Attempt, policy: Policy): boolean {
  const lock = lockOf(s, attempt.now, policy);
  return lock === 'permanent' || (lock === 'timed' && attempt.usualIp !== true);
}

// Hex strings rather than buffers: a buffer per request (its own ArrayBuffer)
// made the young-generation collections of a busy gateway several times slower.
const digest = (s: string): string => hash('sha256', s, 'hex');

/**
 * Constant-time check of a plain stored PIN; the lengths of the typed and stored
 * PINs do not leak. (A hashed one is checked by the caller: Attempt.verifiedPins.)
 */
export function pinMatches(stored: string, typed: string, storedDigest?: string): boolean {
  if (stored === '+') return false; // another provider's job; none is configured
  return codesEqual(storedDigest ?? digest(stored === '-' ? '' : stored), digest(typed));
}

// The stored PIN's digest, once per token line rather than once per request.
const pinDigests = new WeakMap<TokenSpec, string>();
function storedPinDigest(spec: TokenSpec): string {
  let d = pinDigests.get(spec);
  if (d === undefined) {
    d = digest(spec.pin === '-' ? '' : spec.pin);
    pinDigests.set(spec, d);
  }
  return d;
}

/** Split the password into the typed PIN and the code (MOTP has no typed PIN: it is hashed into the code). */
function splitPassword(spec: TokenSpec, password: string): { pin: string; code: string } | undefined {
  if (spec.type.algorithm === 'MOTP') return { pin: '', code: password.toLowerCase() };
  if (password.length < spec.type.digits) return undefined;
  const cut = password.length - spec.type.digits;
  return { pin: password.slice(0, cut), code: password.slice(cut) };
}

function typedPinOk(spec: TokenSpec, typed: string, attempt: Attempt): boolean {
  if (spec.type.algorithm === 'MOTP') return spec.pin !== '+';
  // A hash the caller did not verify (not checked, or changed since) never matches: fail closed.
  if (isHashedPin(spec.pin)) return attempt.verifiedPins?.has(spec.pin) === true;
  return pinMatches(spec.pin, typed, storedPinDigest(spec));
}

/** The PIN an MOTP code is computed with (other algorithms ignore it). */
export const motpPin = (spec: TokenSpec): string => (spec.pin === '-' || spec.pin === '+' ? '' : spec.pin);

/** The last time step consumed on this line, if any, or a safe upper bound for it. */
export function lastUsedStep(s: TokenState, maxOffset: number): number | undefined {
  let derived: number | undefined;
  const step = s.spec.type.stepSeconds;
  if (step > 0 && s.lastOtp !== undefined && s.lastTime !== undefined) {
    const around = stepAt(s.lastTime, step);
    if (!s.spec.liboathLayout) derived = around + s.counter;
    else {
      derived = locateStep(s.spec.type, s.spec.key, motpPin(s.spec), s.lastOtp, around, maxOffset + 1) ??
        around + maxOffset + 1;
    }
  }
  if (derived === undefined) return s.usedStep;
  return s.usedStep === undefined ? derived : Math.max(derived, s.usedStep);
}

/**
 * A logout: the linger ends; the code stays known as used. A time token keeps
 * its last OTP and time (they tell which step was used, also after a restart)
 * and loses the IP: a last OTP without IP never lingers (users-file.md). An
 * event token forgets its last OTP, as mod_authn_otp does: its counter has
 * moved past that code anyway.
 */
export function endLinger(s: TokenState, maxOffset: number): TokenState {
  const ended = { ...s, lastIp: undefined, lastActive: undefined, usedStep: lastUsedStep(s, maxOffset), retiredOtp: s.lastOtp };
  if (s.spec.liboathLayout || s.spec.type.stepSeconds > 0) return ended;
  return { ...ended, lastOtp: undefined, lastTime: undefined };
}

function success(s: TokenState, counter: number, code: string, attempt: Attempt): TokenState {
  const now = Math.floor(attempt.now);
  const step = s.spec.type.stepSeconds;
  let next: number;
  if (step === 0) next = counter + 1; // mod_authn_otp stores the next counter expected
  else if (s.spec.liboathLayout) next = s.counter + Math.abs(counter - stepAt(now, step));
  else next = counter - stepAt(now, step);
  return {
    spec: s.spec, counter: next, failures: 0, lockedAt: undefined,
    lastOtp: code, lastTime: now, lastIp: attempt.ip, lastActive: attempt.now,
    usedStep: step > 0 ? counter : undefined, retiredOtp: undefined,
  };
}

function tryCode(s: TokenState, code: string, attempt: Attempt, policy: Policy): number | undefined {
  const { spec } = s;
  const pin = motpPin(spec);
  if (spec.type.stepSeconds === 0) {
    return findEventCounter(spec.type, spec.key, pin, code, Math.max(0, s.counter), policy.maxOffset)?.counter;
  }
  const drift = spec.liboathLayout ? 0 : s.counter;
  return findTimeStep(spec.type, spec.key, pin, code, Math.floor(attempt.now), drift, policy.maxOffset,
    lastUsedStep(s, policy.maxOffset))?.counter;
}

/**
 * Decide one login attempt against all of a user's token lines, in file order:
 * the first line whose PIN and code both match logs in (liboath's rule), and only
 * that line is consumed. A wrong PIN or code counts one failure on every line
 * that is not locked.
 */
export function decide(lines: readonly TokenState[], attempt: Attempt, policy: Policy): Verdict {
  const changes = new Map<number, TokenState>();
  const verdict = (granted: boolean, reason: Reason, counted = false, line?: number): Verdict =>
    (line === undefined ? { granted, reason, changes, counted } : { granted, reason, changes, counted, line });
  // The lines that may be tried (indexes into `lines`): a locked one is skipped.
  const open: number[] = [];
  for (let i = 0; i < lines.length; i++) if (!locksOut(lines[i] as TokenState, attempt, policy)) open.push(i);
  if (open.length === 0) return verdict(false, 'locked');

  // mod_authn_otp: an empty password from the IP of the current linger logs out.
  if (attempt.password === '' && !attempt.logout) {
    for (const i of open) {
      const s = lines[i] as TokenState;
      if (s.lastIp === attempt.ip && lingerActive(s, attempt.ip, attempt.now, policy)) {
        changes.set(i, endLinger(s, policy.maxOffset));
      }
    }
    return verdict(false, changes.size > 0 ? 'logout' : 'bad_otp');
  }

  let badPin = false;
  let badCode = false;
  for (const i of open) {
    const s = lines[i] as TokenState;
    const parts = splitPassword(s.spec, attempt.password);
    if (parts === undefined) continue; // too short to hold a code: not a guess
    if (!typedPinOk(s.spec, parts.pin, attempt)) {
      badPin = true;
      // The same work as with the right PIN: the time taken tells nothing.
      tryCode(s, parts.code, attempt, policy);
      continue;
    }
    if (s.lastOtp !== undefined && codesEqual(parts.code, s.lastOtp)) {
      if (lingerActive(s, attempt.ip, attempt.now, policy)) {
        if (attempt.logout) {
          changes.set(i, endLinger(s, policy.maxOffset));
          return verdict(false, 'logout', false, i);
        }
        changes.set(i, { ...s, lastActive: attempt.now });
        return verdict(true, 'linger', false, i);
      }
      continue; // a used code outside its linger: refused, but a replay is not a guess
    }
    if (s.retiredOtp !== undefined && codesEqual(parts.code, s.retiredOtp)) continue;
    if (attempt.logout) {
      tryCode(s, parts.code, attempt, policy); // the work of a wrong PIN: the time tells nothing
      continue; // logout never consumes a fresh code
    }
    const counter = tryCode(s, parts.code, attempt, policy);
    if (counter === undefined) {
      badCode = true;
      continue;
    }
    changes.set(i, success(s, counter, parts.code, attempt));
    for (const k of open) {
      const other = lines[k] as TokenState;
      if (k !== i && other.failures > 0) changes.set(k, { ...other, failures: 0, lockedAt: undefined });
    }
    return verdict(true, 'ok', false, i);
  }
  // A logout with a wrong PIN or code ended nothing: it says so (it counts nowhere, but the throttle sees a guess).
  if (attempt.logout) return verdict(false, badPin ? 'bad_pin' : badCode ? 'bad_otp' : 'logout');
  if (!badPin && !badCode) return verdict(false, 'bad_otp');
  for (const i of open) {
    const s = lines[i] as TokenState;
    const failures = s.failures + 1;
    const locks = policy.maxFailures > 0 && failures >= policy.maxFailures;
    changes.set(i, { ...s, failures, lockedAt: locks ? Math.floor(attempt.now) : s.lockedAt });
  }
  return verdict(false, badCode ? 'bad_otp' : 'bad_pin', true);
}

/** The same work as a real check, for a login that does not exist (no timing oracle). */
export function decoyCheck(password: string, policy: Policy): void {
  const key = new Uint8Array(20);
  pinMatches('decoy', password.slice(0, -6));
  for (let c = 0; c <= policy.maxOffset; c++) codeAt({ algorithm: 'HOTP', stepSeconds: 0, digits: 6 }, key, '', c);
}
