// What the admin CLI does to a users file, as pure functions of its parsed
// model: new lines, removed lines, changed lines, what a user's lines say, and
// resynchronising a token. The shell (usersFileEdit.ts) takes the lock and
// writes; nothing here reads a file or a clock.
import { endLinger, isLocked, motpPin, type Policy, type TokenState } from './decision.js';
import { lingerActive } from './linger.js';
import { codeAt, codesEqual, stepAt } from './otp.js';
import { isHashedPin, looksHashed } from './pinHash.js';
import { fileStateOf, lineStateOf } from './sharedState.js';
import {
  layoutStoresFailures, lineState, nextEventCounter, parseUsersFile, sameLineState, tokenAt, withChangedLines,
  type LineState, type TokenLine, type UsersFileModel,
} from './usersFileFormat.js';

export { tokenAt } from './usersFileFormat.js';

export interface PinPolicy {
  readonly minLength: number;
  readonly digitsOnly: boolean;
}

const MAX_FIELD = 128; // mod_authn_otp's MAX_USERNAME / MAX_PIN

/**
 * Why `login` cannot be a user's name in the file; undefined if it can. A field
 * is one run of non-blank characters; a leading `#` makes the line a comment;
 * Basic auth ends the user name at the first colon, so a name with one could
 * never log in.
 */
export function loginProblem(login: string): string | undefined {
  if (login === '') return 'a login cannot be empty';
  if (/[\s\u0000-\u001f\u007f]/.test(login)) return 'a login cannot contain blanks or control characters';
  if (login.startsWith('#')) return 'a login cannot start with "#" (the line would be a comment)';
  if (login.includes(':')) return 'a login cannot contain ":" (Basic auth ends the user name there)';
  if (Buffer.byteLength(login) > MAX_FIELD) return `a login can have at most ${MAX_FIELD} bytes`;
  return undefined;
}

/** Why `pin` cannot be set as a new PIN under `policy`; undefined if it can. Never echoes the PIN. */
export function pinProblem(pin: string, policy: PinPolicy): string | undefined {
  if (/[\s\u0000-\u001f\u007f]/.test(pin)) return 'a PIN cannot contain blanks or control characters';
  if (pin === '-' || pin === '+' || looksHashed(pin)) {
    return 'a PIN cannot be "-", "+" or look like a hash ("$name$...") (those mean something else in the file)';
  }
  if (Buffer.byteLength(pin) > MAX_FIELD) return `a PIN can have at most ${MAX_FIELD} bytes`;
  if ([...pin].length < policy.minLength) return `a PIN needs at least ${policy.minLength} characters (pinPolicy.minLength)`;
  if (policy.digitsOnly && !/^\d*$/.test(pin)) return 'a PIN may only have digits (pinPolicy.digitsOnly)';
  return undefined;
}

/** Indexes of every line of `login`: its token lines and its malformed ones. */
export function linesOf(model: UsersFileModel, login: string): number[] {
  const found: number[] = [];
  model.parsed.forEach((entry, i) => {
    if ((entry.kind === 'token' && entry.token.login === login) || (entry.kind === 'invalid' && entry.login === login)) found.push(i);
  });
  return found;
}

const terminatorOf = (model: UsersFileModel): string => {
  const first = model.bytes.indexOf(0x0a);
  return first > 0 && model.bytes[first - 1] === 0x0d ? '\r\n' : '\n';
};

/** The file with `lines` added at its end, in its own line endings; every byte before them stays. */
export function appendLines(model: UsersFileModel, lines: readonly string[]): UsersFileModel {
  const eol = terminatorOf(model);
  const last = model.bytes[model.bytes.length - 1];
  const gap = model.bytes.length > 0 && last !== 0x0a ? eol : '';
  return parseUsersFile(Buffer.concat([model.bytes, Buffer.from(gap + lines.map((l) => l + eol).join(''), 'utf8')]));
}

/** The file without the lines at `indexes`; every other byte stays. */
export function removeLines(model: UsersFileModel, indexes: ReadonlySet<number>): UsersFileModel {
  const pieces: Buffer[] = [];
  for (let i = 0; i + 1 < model.starts.length; i++) {
    if (!indexes.has(i)) pieces.push(model.bytes.subarray(model.starts[i], model.starts[i + 1]));
  }
  return parseUsersFile(Buffer.concat(pieces));
}

/** The file with each listed token line changed by `change`; lines it leaves as they are stay byte for byte. */
export function changeLines(
  model: UsersFileModel, indexes: readonly number[], change: (token: TokenLine, state: LineState) => LineState,
): UsersFileModel {
  const changes = new Map<number, LineState>();
  for (const i of indexes) {
    const token = tokenAt(model, i);
    const before = lineState(token);
    const after = change(token, before);
    if (!sameLineState(after, before, token)) changes.set(i, after);
  }
  return withChangedLines(model, changes);
}

/** A logout as the gateway's logout path does it (decision.ts endLinger), in the file's terms. */
export function loggedOut(token: TokenLine, s: LineState, maxOffset: number): LineState {
  return lineStateOf(endLinger(fileStateOf(token, s), maxOffset));
}

/** Failure count back to 0 (where the layout keeps one). */
export const unlocked = (_token: TokenLine, s: LineState): LineState => ({ ...s, failures: 0 });

export interface UserRow {
  readonly login: string;
  /** 1-based line number */
  readonly line: number;
  readonly type: string;
  /** event tokens: the next counter; time tokens: the drift in steps (a liboath line: its bookkeeping) */
  readonly counter: number;
  /** undefined where the layout keeps no count (the gateway counts in memory) */
  readonly failures: number | undefined;
  readonly pin: 'none' | 'plain' | 'hashed' | 'external';
  /** epoch seconds */
  readonly lastLogin: number | undefined;
  readonly lastIp: string | undefined;
  readonly locked: boolean;
  readonly lingering: boolean;
}

const pinKind = (pin: string): UserRow['pin'] =>
  pin === '-' ? 'none' : pin === '+' ? 'external' : isHashedPin(pin) ? 'hashed' : 'plain';

/**
 * What each token line says, as far as the file tells: a lock whose start only
 * the gateway knows counts as locked, and a linger's idle time is not known.
 */
export function userRows(model: UsersFileModel, now: number, policy: Policy, only?: string): UserRow[] {
  const rows: UserRow[] = [];
  model.parsed.forEach((entry, i) => {
    if (entry.kind !== 'token' || (only !== undefined && entry.token.login !== only)) return;
    const t = entry.token;
    const stores = layoutStoresFailures(t);
    const s: TokenState = { ...fileStateOf(t), lockedAt: undefined };
    rows.push({
      login: t.login, line: i + 1, type: t.typeText, counter: t.counter,
      failures: stores ? (t.failures ?? 0) : undefined, pin: pinKind(t.pin),
      lastLogin: t.lastTime, lastIp: t.lastIp,
      locked: stores && isLocked(s, now, policy),
      lingering: t.lastIp !== undefined && lingerActive({ ...s, lastActive: undefined }, t.lastIp, now, { ...policy, maxIdle: undefined }),
    });
  });
  return rows;
}

/** How far resync looks: 10,000 counters ahead, or a day of steps either way. */
export const RESYNC_EVENT_WINDOW = 10_000;
export const RESYNC_SECONDS = 86_400;


/**
 * otptool's resync: find two consecutive codes and return the line's new state
 * (the next counter after them, or the drift that puts the second at now),
 * failures cleared; undefined when they are not found. An event token only
 * looks ahead of its counter, a time token only after its last used step: a
 * used code never works again. Not for a time token on a liboath line, whose
 * field 5 is no drift (see resyncProblem).
 */
export function resynced(token: TokenLine, code1: string, code2: string, now: number): LineState | undefined {
  const { type, key } = token;
  const pin = motpPin(token);
  const at = (c: number): string => codeAt(type, key, pin, c);
  const pair = (c: number): boolean => codesEqual(at(c), code1) && codesEqual(at(c + 1), code2);
  if (type.stepSeconds === 0) {
    for (let c = Math.max(0, token.counter); c < token.counter + RESYNC_EVENT_WINDOW; c++) {
      if (pair(c)) return { counter: c + 2, failures: 0 };
    }
    return undefined;
  }
  const nowStep = stepAt(now, type.stepSeconds);
  const radius = Math.ceil(RESYNC_SECONDS / type.stepSeconds);
  // Codes at or before the last one used are never taken again: the time a step was used stays recorded.
  const usedStep = token.lastOtp !== undefined && token.lastTime !== undefined
    ? stepAt(token.lastTime, type.stepSeconds) + token.counter : -1;
  // Nearest to now first: of two matches (a 6-digit pair repeats about once in 10^12) the likelier wins.
  for (let d = 0; d <= radius; d++) {
    for (const step of d === 0 ? [nowStep - 1] : [nowStep - 1 - d, nowStep - 1 + d]) {
      if (step > usedStep && pair(step)) {
        // The second code is recorded as used (without an IP: it never lingers), so neither works again.
        return { counter: step + 1 - nowStep, failures: 0, lastOtp: code2, lastTime: Math.floor(now) };
      }
    }
  }
  return undefined;
}

/** Why resync cannot help this line; undefined if it can. */
export function resyncProblem(token: TokenLine): string | undefined {
  if (token.liboathLayout && token.type.stepSeconds > 0) {
    return 'a time token in pam_oath\'s 7-field layout has no time offset to set (export and import it in mod_authn_otp\'s layout to resync it)';
  }
  return undefined;
}

/** Codes of a token from `from` (a counter, or a time step), `count` of them. */
export function codesFrom(token: TokenLine, from: number, count: number): string[] {
  const codes: string[] = [];
  for (let c = from; c < from + count; c++) codes.push(codeAt(token.type, token.key, motpPin(token), c));
  return codes;
}

/** The step or counter whose code the gateway expects now from this line. */
export function currentPosition(token: TokenLine, now: number): number {
  if (token.type.stepSeconds === 0) return nextEventCounter(token);
  return stepAt(now, token.type.stepSeconds) + (token.liboathLayout ? 0 : token.counter);
}

export interface ImportPlan {
  /** the lines to append, as written in the source */
  readonly lines: string[];
  readonly users: number;
  /** one line each: why nothing may be imported */
  readonly conflicts: string[];
}

/**
 * What importing `source` (another mod_authn_otp or oath-toolkit file) into
 * `target` appends: its token lines, byte for byte. Any malformed source line
 * or any login the target already has is a conflict, and then nothing is.
 */
export function importPlan(target: UsersFileModel, source: UsersFileModel, sourceName: string, targetName: string): ImportPlan {
  const conflicts: string[] = [];
  // The source may be any file (a wrong path, a key file): its content is not echoed.
  for (const p of source.problems) conflicts.push(`${sourceName}:${p.line}: ${p.reason.replace(/ "[^"]*"/g, '')}`);
  const lines: string[] = [];
  const logins = new Set<string>();
  source.parsed.forEach((entry, i) => {
    if (entry.kind !== 'token') return;
    const login = entry.token.login;
    const existing = target.index.get(login)?.[0] ?? linesOf(target, login)[0];
    const unfit = loginProblem(login);
    if (unfit !== undefined) {
      if (!logins.has(login)) conflicts.push(`${sourceName}:${i + 1}: ${unfit}`);
    } else if (existing !== undefined) {
      if (!logins.has(login)) conflicts.push(`${sourceName}:${i + 1}: ${login} is already in ${targetName} (line ${existing + 1})`);
    } else {
      const raw = source.bytes.subarray(source.starts[i], source.starts[i + 1]).toString('utf8');
      lines.push(raw.replace(/\r?\n$/, '').trim());
    }
    logins.add(login);
  });
  return { lines, users: logins.size, conflicts };
}
