// The users file as text: parse every layout mod_authn_otp and liboath write,
// and format a changed line so both programs can still read it
// (../shared/spec/users-file.md). Pure: bytes in, bytes out.
import { isUtf8 } from 'node:buffer';
import type { TokenType } from './otp.js';
import { formatLocalTime, parseLocalTime } from './localTime.js';

export interface TokenLine {
  /** 1-based line number in the file it was read from */
  readonly lineNo: number;
  readonly type: TokenType;
  /** field 1 exactly as written (pam_oath is case-sensitive about it) */
  readonly typeText: string;
  readonly login: string;
  /** field 3 as written: `-` no PIN, `+` checked elsewhere, else the PIN */
  readonly pin: string;
  readonly keyHex: string;
  readonly key: Buffer;
  /** number of whitespace-separated fields on the line (4..9) */
  readonly fieldCount: number;
  /**
   * a 7-field line in liboath's layout: field 5 of a time token is liboath's
   * bookkeeping, not a drift, and the line has no room for the last IP
   */
  readonly liboathLayout: boolean;
  /** field 5: event tokens the next counter, time tokens the drift in steps (0 when absent) */
  readonly counter: number;
  /** present on 6- and 9-field lines only */
  readonly failures?: number;
  readonly lastOtp?: string;
  /** epoch seconds */
  readonly lastTime?: number;
  readonly lastIp?: string;
}

export type ParsedLine =
  | { readonly kind: 'none' }
  | { readonly kind: 'token'; readonly token: TokenLine }
  | { readonly kind: 'invalid'; readonly reason: string; readonly login?: string };

/** What a changed line records, in the file's terms. */
export interface LineState {
  readonly counter: number;
  readonly failures: number;
  readonly lastOtp?: string;
  readonly lastTime?: number;
  readonly lastIp?: string;
}

const FIELD_SEPARATOR = /[ \t\v\f\r]+/;
const MAX_KEY_BYTES = 256; // mod_authn_otp's MAX_KEY
const MAX_FIELD = 128; // mod_authn_otp's MAX_USERNAME / MAX_PIN / MAX_OTP / MAX_IP

export function parseTokenType(text: string): TokenType | undefined {
  // mod_authn_otp's backwards-compatibility spellings
  const spelled = text === 'E' ? 'HOTP/E' : text === 'T' ? 'HOTP/T30' : text;
  const parts = spelled.split('/');
  if (parts.length > 3) return undefined;
  const [alg, info, digits] = parts as [string, string | undefined, string | undefined];
  const upper = alg.toUpperCase();
  if (upper !== 'HOTP' && upper !== 'MOTP') return undefined;
  let stepSeconds = upper === 'MOTP' ? 10 : 0;
  if (info !== undefined) {
    if (info === 'E') stepSeconds = 0;
    else if (/^T[1-9]\d{0,5}$/.test(info)) stepSeconds = Number(info.slice(1));
    else return undefined;
  }
  let n = 6;
  if (digits !== undefined) {
    if (!/^(10|[1-9])$/.test(digits)) return undefined;
    n = Number(digits);
  }
  return { algorithm: upper, stepSeconds, digits: n };
}

const isSafeInt = (s: string, signed: boolean): boolean =>
  (signed ? /^-?\d{1,15}$/ : /^\d{1,15}$/).test(s);

/** Parse one line (without its terminator). `lineNo` is 1-based. */
export function parseLine(text: string, lineNo: number): ParsedLine {
  const trimmed = text.replace(/^[ \t\v\f\r]+/, '');
  if (trimmed === '' || trimmed.startsWith('#')) return { kind: 'none' };
  const fields = trimmed.split(FIELD_SEPARATOR).filter((f) => f !== '');
  const [typeText, login, pin, keyHex, counterText, ...tail] = fields as
    [string, string | undefined, string | undefined, string | undefined, string | undefined, ...string[]];
  const invalid = (reason: string): ParsedLine =>
    login === undefined ? { kind: 'invalid', reason } : { kind: 'invalid', reason, login };
  if (/[\u0000-\u0008\u000e-\u001f\u007f]/.test(trimmed)) return invalid('control character in line');
  const type = parseTokenType(typeText);
  if (!type) return invalid(`invalid token type "${typeText.slice(0, 40)}"`);
  if (login === undefined) return invalid('missing user field');
  if (pin === undefined) return invalid('missing PIN field');
  if (keyHex === undefined) return invalid('missing key field');
  if (login.length > MAX_FIELD || pin.length > MAX_FIELD) return invalid('user or PIN field too long');
  if (!/^([0-9a-fA-F]{2})+$/.test(keyHex)) return invalid('key is not an even number of hex digits');
  if (keyHex.length / 2 > MAX_KEY_BYTES) return invalid(`key longer than ${MAX_KEY_BYTES} bytes`);
  let counter = 0;
  if (counterText !== undefined) {
    if (!isSafeInt(counterText, type.stepSeconds > 0)) {
      return invalid(`invalid ${type.stepSeconds > 0 ? 'time offset' : 'counter'} "${counterText.slice(0, 20)}"`);
    }
    counter = Number(counterText);
  }
  if (tail.length > 4) return invalid(`too many fields (${fields.length})`);
  // mod_authn_otp tells the tails apart by their length:
  // 1 = failures; 2 = last OTP, time; 3 = + IP; 4 = failures, last OTP, time, IP
  const hasFailures = tail.length === 1 || tail.length === 4;
  const failuresText = hasFailures ? tail[0] : undefined;
  const rest = hasFailures ? tail.slice(1) : tail;
  const [lastOtp, timeText, lastIp] = rest as [string | undefined, string | undefined, string | undefined];
  let failures: number | undefined;
  if (failuresText !== undefined) {
    if (!isSafeInt(failuresText, false)) return invalid(`invalid failure count "${failuresText.slice(0, 20)}"`);
    failures = Number(failuresText);
  }
  let lastTime: number | undefined;
  if (timeText !== undefined) {
    lastTime = parseLocalTime(timeText);
    if (lastTime === undefined) return invalid(`invalid timestamp "${timeText.slice(0, 30)}"`);
  }
  if ((lastOtp?.length ?? 0) > MAX_FIELD || (lastIp?.length ?? 0) > MAX_FIELD) return invalid('field too long');
  const token: TokenLine = {
    lineNo, type, typeText, login, pin, keyHex, key: Buffer.from(keyHex, 'hex'),
    fieldCount: fields.length, liboathLayout: fields.length === 7, counter,
    ...(failures !== undefined ? { failures } : {}),
    ...(lastOtp !== undefined ? { lastOtp } : {}),
    ...(lastTime !== undefined ? { lastTime } : {}),
    ...(lastIp !== undefined ? { lastIp } : {}),
  };
  return { kind: 'token', token };
}

/** Lines pam_oath (liboath) can read: type and key as in users-file.md. */
export function pamOathReadable(token: TokenLine): boolean {
  return /^HOTP(\/(E|T30|T60)(\/[678])?)?$/.test(token.typeText) && token.keyHex.length <= 64;
}

/**
 * Lines that keep a layout pam_oath reads when changed: a 7-field (liboath) line,
 * and a 4-, 5- or 8-field line whose type and key pam_oath understands.
 */
function keepsPamOathLayout(token: TokenLine): boolean {
  return token.fieldCount === 7 || (pamOathReadable(token) && [4, 5, 8].includes(token.fieldCount));
}

/** Failure counts live in the file only where the layout has the field (mod_authn_otp's layouts). */
export function layoutStoresFailures(token: TokenLine): boolean {
  return !keepsPamOathLayout(token);
}

/**
 * The layout a changed line is written in (users-file.md, normative):
 * a 7-field line stays 7 fields; a pam_oath-readable 4-, 5- or 8-field line
 * becomes 8 fields; every other line takes mod_authn_otp's 9-field layout
 * (6 fields while no OTP is recorded, as mod_authn_otp writes it).
 */
export function writtenFieldCount(token: TokenLine, state: LineState): number {
  const pamLayout = keepsPamOathLayout(token);
  if (state.lastOtp === undefined || state.lastTime === undefined) return pamLayout ? 5 : 6;
  // Without an IP only liboath's own tail (last OTP, time) is truthful; both programs read it.
  if (token.fieldCount === 7 || state.lastIp === undefined) return 7;
  return pamLayout ? 8 : 9;
}

/** Format a changed line (without terminator), mod_authn_otp's column widths. */
export function formatLine(token: TokenLine, state: LineState): string {
  const count = writtenFieldCount(token, state);
  const fields = [
    token.typeText.padEnd(7), token.login.padEnd(13), token.pin.padEnd(7), token.keyHex,
    String(state.counter).padEnd(3),
  ];
  if (count === 6 || count === 9) fields.push(String(state.failures).padEnd(2));
  if (count >= 7 && state.lastOtp !== undefined && state.lastTime !== undefined) {
    fields.push(state.lastOtp.padEnd(7), formatLocalTime(state.lastTime));
    if (count >= 8 && state.lastIp !== undefined) fields.push(state.lastIp);
  }
  return fields.join(' ').trimEnd();
}

/** The state a line records now (what formatLine would need to reproduce it). */
export function lineState(token: TokenLine): LineState {
  return {
    counter: token.counter,
    failures: token.failures ?? 0,
    ...(token.lastOtp !== undefined ? { lastOtp: token.lastOtp } : {}),
    ...(token.lastTime !== undefined ? { lastTime: token.lastTime } : {}),
    ...(token.lastIp !== undefined ? { lastIp: token.lastIp } : {}),
  };
}

export interface Problem {
  readonly line: number;
  readonly reason: string;
}

/** A parsed users file. `lines[i]` holds the exact bytes of line i+1, terminator included. */
export interface UsersFileModel {
  readonly lines: readonly Buffer[];
  readonly parsed: readonly ParsedLine[];
  /** login -> indexes into `lines` of its token lines, in file order */
  readonly index: ReadonlyMap<string, readonly number[]>;
  /** logins that have at least one malformed line: refused entirely */
  readonly refused: ReadonlySet<string>;
  readonly problems: readonly Problem[];
  readonly tokenCount: number;
}

function splitLineBuffers(bytes: Buffer): Buffer[] {
  const lines: Buffer[] = [];
  let start = 0;
  while (start < bytes.length) {
    const nl = bytes.indexOf(0x0a, start);
    const end = nl === -1 ? bytes.length : nl + 1;
    lines.push(bytes.subarray(start, end));
    start = end;
  }
  return lines;
}

const withoutTerminator = (text: string): string =>
  text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;

export function parseUsersFile(bytes: Buffer): UsersFileModel {
  const lines = splitLineBuffers(bytes);
  const wholeFileUtf8 = isUtf8(bytes);
  const parsed: ParsedLine[] = new Array(lines.length);
  const index = new Map<string, number[]>();
  const refused = new Set<string>();
  const problems: Problem[] = [];
  let tokenCount = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] as Buffer;
    let result: ParsedLine;
    if (!wholeFileUtf8 && !isUtf8(raw)) {
      // A comment may be in any encoding; a token line must be UTF-8 to match a login.
      const text = raw.toString('latin1');
      const fields = text.trim().split(FIELD_SEPARATOR);
      const login = fields[1] !== undefined && isUtf8(Buffer.from(fields[1], 'latin1'))
        ? Buffer.from(fields[1], 'latin1').toString('utf8') : undefined;
      if (parseLine(withoutTerminator(text), i + 1).kind === 'none') result = { kind: 'none' };
      else result = login === undefined ? { kind: 'invalid', reason: 'line is not valid UTF-8' }
        : { kind: 'invalid', reason: 'line is not valid UTF-8', login };
    } else {
      result = parseLine(withoutTerminator(raw.toString('utf8')), i + 1);
    }
    parsed[i] = result;
    if (result.kind === 'token') {
      tokenCount++;
      const list = index.get(result.token.login);
      if (list) list.push(i);
      else index.set(result.token.login, [i]);
    } else if (result.kind === 'invalid') {
      problems.push({ line: i + 1, reason: result.reason });
      if (result.login !== undefined) refused.add(result.login);
    }
  }
  return { lines, parsed, index, refused, problems, tokenCount };
}

function terminatorOf(raw: Buffer): string {
  if (raw.length >= 2 && raw[raw.length - 2] === 0x0d && raw[raw.length - 1] === 0x0a) return '\r\n';
  return raw.length >= 1 && raw[raw.length - 1] === 0x0a ? '\n' : '';
}

/**
 * Replace token lines with their new state; every other line keeps its bytes.
 * The line keeps its own terminator (CRLF, LF, or none on a last line).
 */
export function withChangedLines(model: UsersFileModel, changes: ReadonlyMap<number, LineState>): UsersFileModel {
  if (changes.size === 0) return model;
  const lines = model.lines.slice();
  const parsed = model.parsed.slice();
  for (const [i, state] of changes) {
    const entry = parsed[i];
    const raw = lines[i];
    if (entry?.kind !== 'token' || raw === undefined) throw new Error(`line ${i + 1} is not a token line`);
    const text = formatLine(entry.token, state);
    lines[i] = Buffer.from(text + terminatorOf(raw), 'utf8');
    const reparsed = parseLine(text, i + 1);
    if (reparsed.kind !== 'token') throw new Error(`line ${i + 1} would not parse back: ${text}`);
    parsed[i] = reparsed;
  }
  return { ...model, lines, parsed };
}

export function serializeUsersFile(model: UsersFileModel): Buffer {
  return Buffer.concat(model.lines as Buffer[]);
}
