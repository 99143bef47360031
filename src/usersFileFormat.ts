// The users file as text: parse every layout mod_authn_otp and liboath write,
// and format a changed line so both programs can still read it
// (../shared/spec/users-file.md). Pure: bytes in, bytes out.
import { isUtf8 } from 'node:buffer';
import { codeAt, codesEqual, type TokenType } from './otp.js';
import { formatLocalTime, isLocalTimeText, parseLocalTime } from './localTime.js';
import { isHashedPin, looksHashed, parsePinHash } from './pinHash.js';

export interface TokenLine {
  /** 1-based line number in the file it was read from */
  readonly lineNo: number;
  readonly type: TokenType;
  /** field 1 exactly as written (pam_oath is case-sensitive about it) */
  readonly typeText: string;
  readonly login: string;
  /** field 3 as written: `-` no PIN, `+` checked elsewhere, a `$scrypt$` hash (pinHash.ts), else the PIN */
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
  /** a new PIN field (the admin CLI's set-pin); the line's own when absent */
  readonly pin?: string;
}

/** The IP field of a line whose last code has no IP (never a client's address, so it never lingers). */
export const NO_IP = '-';

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

// A file has few distinct type fields; parse each once.
const typeCache = new Map<string, TokenType | null>();
function cachedTokenType(text: string): TokenType | undefined {
  let type = typeCache.get(text);
  if (type === undefined) {
    type = parseTokenType(text) ?? null;
    if (typeCache.size < 1000) typeCache.set(text, type);
  }
  return type ?? undefined;
}

/**
 * A token line. The key and the timestamp are decoded when first used: a
 * 100,000-user file is checked at every load, and few of its lines log in.
 */
class Token implements TokenLine {
  #key: Buffer | undefined;
  #lastTime: number | undefined;
  constructor(
    readonly lineNo: number, readonly type: TokenType, readonly typeText: string, readonly login: string,
    readonly pin: string, readonly keyHex: string, readonly fieldCount: number, readonly counter: number,
    readonly failures: number | undefined, readonly lastOtp: string | undefined,
    private readonly lastTimeText: string | undefined, readonly lastIp: string | undefined,
  ) {}

  get liboathLayout(): boolean { return this.fieldCount === 7; }
  get key(): Buffer { return (this.#key ??= Buffer.from(this.keyHex, 'hex')); }
  get lastTime(): number | undefined {
    if (this.lastTimeText !== undefined && this.#lastTime === undefined) this.#lastTime = parseLocalTime(this.lastTimeText);
    return this.#lastTime;
  }
}

const isSafeInt = (s: string, signed: boolean): boolean =>
  (signed ? /^-?\d{1,15}$/ : /^\d{1,15}$/).test(s);

const LEADING_BLANKS = /^[ \t\v\f\r]+/;
const CONTROL = /[\u0000-\u0008\u000e-\u001f\u007f]/;
const HEX_KEY = /^(?:[0-9a-fA-F]{2})+$/;

/** Parse one line (without its terminator). `lineNo` is 1-based. */
export function parseLine(text: string, lineNo: number): ParsedLine {
  const trimmed = text.replace(LEADING_BLANKS, '');
  if (trimmed === '' || trimmed.charCodeAt(0) === 0x23 /* # */) return { kind: 'none' };
  const fields = trimmed.split(FIELD_SEPARATOR);
  if (fields[fields.length - 1] === '') fields.pop();
  const [typeText, login, pin, keyHex, counterText, ...tail] = fields as
    [string, string | undefined, string | undefined, string | undefined, string | undefined, ...string[]];
  const invalid = (reason: string): ParsedLine =>
    login === undefined ? { kind: 'invalid', reason } : { kind: 'invalid', reason, login };
  if (CONTROL.test(trimmed)) return invalid('control character in line');
  const type = cachedTokenType(typeText);
  if (!type) return invalid(`invalid token type "${typeText.slice(0, 40)}"`);
  if (login === undefined) return invalid('missing user field');
  if (pin === undefined) return invalid('missing PIN field');
  if (keyHex === undefined) return invalid('missing key field');
  if (login.length > MAX_FIELD || pin.length > MAX_FIELD) return invalid('user or PIN field too long');
  // Every line of a big file is parsed at each load: only a field starting with `$` can be a hash.
  if (pin.charCodeAt(0) === 0x24 /* $ */ && isHashedPin(pin)) {
    if (type.algorithm === 'MOTP') return invalid('an MOTP PIN cannot be hashed (it is part of the code)');
    // Not echoed: a PIN's hash can be guessed offline, and a typo may have left a plain PIN there.
    if (parsePinHash(pin) === undefined) return invalid('malformed hashed PIN (field 3)');
  } else if (pin.charCodeAt(0) === 0x24 && looksHashed(pin)) {
    // An argon2 or bcrypt hash pasted from elsewhere would otherwise be a plain PIN: the hash itself would log in.
    return invalid('unsupported PIN hash (field 3: otpgate reads $scrypt$ hashes only)');
  }
  if (!HEX_KEY.test(keyHex)) return invalid('key is not an even number of hex digits');
  if (keyHex.length / 2 > MAX_KEY_BYTES) return invalid(`key longer than ${MAX_KEY_BYTES} bytes`);
  let counter = 0;
  if (counterText !== undefined) {
    if (!isSafeInt(counterText, type.stepSeconds > 0)) {
      // Not echoed: a line with a field too many can hold a key here.
      return invalid(`invalid ${type.stepSeconds > 0 ? 'time offset' : 'counter'} (field 5: expected a whole number)`);
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
    if (!isSafeInt(failuresText, false)) return invalid('invalid failure count (field 6: expected a whole number)');
    failures = Number(failuresText);
  }
  if (timeText !== undefined && !isLocalTimeText(timeText)) return invalid(`invalid timestamp "${timeText.slice(0, 30)}"`);
  if ((lastOtp?.length ?? 0) > MAX_FIELD || (lastIp?.length ?? 0) > MAX_FIELD) return invalid('field too long');
  return {
    kind: 'token',
    token: new Token(lineNo, type, typeText, login, pin, keyHex, fields.length, counter, failures, lastOtp, timeText,
      lastIp === NO_IP ? undefined : lastIp),
  };
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
  // A used code without an IP (after a logout) keeps the line's layout with NO_IP:
  // as 7 fields it would read as liboath's, whose field 5 is not a drift and
  // which has no failure count.
  if (token.fieldCount === 7) return 7;
  return pamLayout ? 8 : 9;
}

/** Fields 1-5 in mod_authn_otp's column widths. */
const leadingFields = (typeText: string, login: string, pin: string, keyHex: string, counter: number): string[] =>
  [typeText.padEnd(7), login.padEnd(13), pin.padEnd(7), keyHex, String(counter).padEnd(3)];

/**
 * A new user's line (without terminator): mod_authn_otp's layout with a failure
 * count (6 fields), so a lock, and an admin's unlock, are kept in the file.
 */
export function newTokenLine(
  typeText: string, login: string, pin: string, keyHex: string, counter: number, used?: { otp: string; time: number },
): string {
  const lead = leadingFields(typeText, login, pin, keyHex, counter);
  if (used === undefined) return [...lead, '0'].join(' ');
  // A code already seen (a time token's first code): recorded as used, without an IP, so it never logs in.
  return [...lead, '0 ', used.otp.padEnd(7), formatLocalTime(used.time), NO_IP].join(' ');
}

/** Format a changed line (without terminator), mod_authn_otp's column widths. */
export function formatLine(token: TokenLine, state: LineState): string {
  const count = writtenFieldCount(token, state);
  const fields = leadingFields(token.typeText, token.login, state.pin ?? token.pin, token.keyHex, state.counter);
  if (count === 6 || count === 9) fields.push(String(state.failures).padEnd(2));
  if (count >= 7 && state.lastOtp !== undefined && state.lastTime !== undefined) {
    fields.push(state.lastOtp.padEnd(7), formatLocalTime(state.lastTime));
    if (count >= 8) fields.push(state.lastIp ?? NO_IP);
  }
  return fields.join(' ').trimEnd();
}

/** Do two states record the same thing? (A pin given equal to the line's own counts as none.) */
export function sameLineState(a: LineState, b: LineState, token: TokenLine): boolean {
  return a.counter === b.counter && a.failures === b.failures && a.lastOtp === b.lastOtp &&
    a.lastTime === b.lastTime && a.lastIp === b.lastIp && (a.pin ?? token.pin) === (b.pin ?? token.pin);
}

/** The token line at index `i` of a model (throws when that line is not one). */
export function tokenAt(model: UsersFileModel, i: number): TokenLine {
  const entry = model.parsed[i];
  if (entry?.kind !== 'token') throw new Error(`line ${i + 1} is not a token line`);
  return entry.token;
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

/**
 * A parsed users file: the exact bytes, where each line starts, and what each
 * line says. Line i (0-based) is `bytes[starts[i] .. starts[i+1])`, terminator
 * included. One buffer and an offset table instead of a buffer per line: a
 * 100,000-user file is parsed at every load and its copy made at every write.
 */
export interface UsersFileModel {
  readonly bytes: Buffer;
  /** line start offsets, plus bytes.length at the end (length = line count + 1) */
  readonly starts: Float64Array;
  readonly parsed: readonly ParsedLine[];
  /** login -> indexes of its token lines, in file order */
  readonly index: ReadonlyMap<string, readonly number[]>;
  /** logins that have at least one malformed line: refused entirely */
  readonly refused: ReadonlySet<string>;
  readonly problems: readonly Problem[];
  readonly tokenCount: number;
  /** token lines whose PIN is stored hashed: while there are any, unknown logins cost a scrypt too */
  readonly hashedPins: number;
}

function lineStarts(bytes: Buffer): Float64Array {
  const starts: number[] = [0];
  let start = 0;
  while (start < bytes.length) {
    const nl = bytes.indexOf(0x0a, start);
    start = nl === -1 ? bytes.length : nl + 1;
    starts.push(start);
  }
  return Float64Array.from(starts);
}

const withoutTerminator = (text: string): string =>
  text.endsWith('\r\n') ? text.slice(0, -2) : text.endsWith('\n') ? text.slice(0, -1) : text;

/** A line that is not UTF-8: a comment in any encoding is still a comment; anything else is refused. */
function parseForeignLine(raw: Buffer, lineNo: number): ParsedLine {
  const latin1 = raw.toString('latin1');
  if (parseLine(withoutTerminator(latin1), lineNo).kind === 'none') return { kind: 'none' };
  const second = latin1.trim().split(FIELD_SEPARATOR)[1];
  const login = second !== undefined && isUtf8(Buffer.from(second, 'latin1'))
    ? Buffer.from(second, 'latin1').toString('utf8') : undefined;
  return login === undefined ? { kind: 'invalid', reason: 'line is not valid UTF-8' }
    : { kind: 'invalid', reason: 'line is not valid UTF-8', login };
}

/** Parses a file a slice of lines at a time, so a big file can be parsed without stalling the event loop. */
class FileParser {
  readonly starts: Float64Array;
  readonly parsed: ParsedLine[];
  readonly index = new Map<string, number[]>();
  readonly refused = new Set<string>();
  readonly problems: Problem[] = [];
  tokenCount = 0;
  hashedPins = 0;
  next = 0;
  // Decoding once and walking the text line by line (split on the same LF byte
  // as the offsets) is much cheaper than decoding each line's bytes.
  private readonly text: string | undefined;
  private from = 0;

  constructor(readonly bytes: Buffer) {
    this.starts = lineStarts(bytes);
    this.parsed = new Array(this.starts.length - 1);
    this.text = isUtf8(bytes) ? bytes.toString('utf8') : undefined;
  }

  get done(): boolean { return this.next >= this.parsed.length; }

  parseLines(count: number): void {
    const end = Math.min(this.parsed.length, this.next + count);
    for (let i = this.next; i < end; i++) this.record(i, this.parseAt(i));
    this.next = end;
  }

  model(): UsersFileModel {
    const { bytes, starts, parsed, index, refused, problems, tokenCount, hashedPins } = this;
    return { bytes, starts, parsed, index, refused, problems, tokenCount, hashedPins };
  }

  private parseAt(i: number): ParsedLine {
    const { text } = this;
    if (text === undefined) {
      const raw = this.bytes.subarray(this.starts[i], this.starts[i + 1]);
      return isUtf8(raw) ? parseLine(withoutTerminator(raw.toString('utf8')), i + 1) : parseForeignLine(raw, i + 1);
    }
    const nl = text.indexOf('\n', this.from);
    const end = nl === -1 ? text.length : nl;
    const cut = end > this.from && text.charCodeAt(end - 1) === 0x0d ? end - 1 : end;
    const line = text.slice(this.from, cut);
    this.from = end + 1;
    return parseLine(line, i + 1);
  }

  private record(i: number, result: ParsedLine): void {
    this.parsed[i] = result;
    if (result.kind === 'token') {
      this.tokenCount++;
      if (isHashedPin(result.token.pin)) this.hashedPins++;
      const list = this.index.get(result.token.login);
      if (list) list.push(i);
      else this.index.set(result.token.login, [i]);
    } else if (result.kind === 'invalid') {
      this.problems.push({ line: i + 1, reason: result.reason });
      if (result.login !== undefined) this.refused.add(result.login);
    }
  }
}

export function parseUsersFile(bytes: Buffer): UsersFileModel {
  const parser = new FileParser(bytes);
  parser.parseLines(Infinity);
  return parser.model();
}

/** The same as parseUsersFile, yielding to the event loop every `slice` lines. */
export async function parseUsersFileInSlices(bytes: Buffer, slice = 5000): Promise<UsersFileModel> {
  const parser = new FileParser(bytes);
  while (!parser.done) {
    parser.parseLines(slice);
    if (!parser.done) await new Promise<void>((resolve) => setImmediate(resolve));
  }
  return parser.model();
}

function terminatorOf(raw: Buffer): string {
  if (raw.length >= 2 && raw[raw.length - 2] === 0x0d && raw[raw.length - 1] === 0x0a) return '\r\n';
  return raw.length >= 1 && raw[raw.length - 1] === 0x0a ? '\n' : '';
}

/**
 * Replace token lines with their new state; every other byte stays as it was.
 * A changed line keeps its own terminator (CRLF, LF, or none on a last line).
 * `into`, when big enough, receives the new bytes (a buffer no model uses any
 * more): a fresh multi-megabyte buffer at every write costs more in page faults
 * than the copy itself.
 */
export function withChangedLines(model: UsersFileModel, changes: ReadonlyMap<number, LineState>, into?: Buffer): UsersFileModel {
  if (changes.size === 0) return model;
  const parsed = model.parsed.slice();
  const order = [...changes.keys()].sort((a, b) => a - b);
  const pieces: Buffer[] = [];
  const growth: number[] = [];
  let copied = 0;
  for (const i of order) {
    const entry = parsed[i];
    if (entry?.kind !== 'token') throw new Error(`line ${i + 1} is not a token line`);
    const text = formatLine(entry.token, changes.get(i) as LineState);
    const reparsed = parseLine(text, i + 1);
    // (The line holds a PIN and a key: the message must not.)
    if (reparsed.kind !== 'token') throw new Error(`line ${i + 1} would not parse back after the change`);
    parsed[i] = reparsed;
    const from = model.starts[i] as number;
    const to = model.starts[i + 1] as number;
    const line = Buffer.from(text + terminatorOf(model.bytes.subarray(from, to)), 'utf8');
    pieces.push(model.bytes.subarray(copied, from), line);
    growth.push(line.length - (to - from));
    copied = to;
  }
  pieces.push(model.bytes.subarray(copied));
  // A line starts later (or earlier) by the growth of the changed lines before it:
  // only the lines after the first change move.
  const starts = model.starts.slice();
  let shift = 0;
  for (let c = 0; c < order.length; c++) {
    shift += growth[c] as number;
    const to = c + 1 < order.length ? (order[c + 1] as number) : starts.length - 1;
    for (let k = (order[c] as number) + 1; k <= to; k++) starts[k] = (model.starts[k] as number) + shift;
  }
  const size = pieces.reduce((n, p) => n + p.length, 0);
  let bytes: Buffer;
  if (into !== undefined && into.length >= size && into.buffer !== model.bytes.buffer) {
    let at = 0;
    for (const p of pieces) at += p.copy(into, at);
    bytes = into.subarray(0, size);
  } else bytes = Buffer.concat(pieces, size);
  // A change never touches a PIN: hashedPins carries over.
  return { ...model, bytes, starts, parsed };
}

export type ExportFormat = 'oath' | 'mod_authn_otp';

/**
 * The next counter an event token expects. liboath records the counter of the
 * code it accepted (its last OTP), mod_authn_otp and otpgate the next one.
 */
export function nextEventCounter(token: TokenLine): number {
  const used = token.liboathLayout && token.type.algorithm === 'HOTP' && token.lastOtp !== undefined &&
    codesEqual(codeAt(token.type, token.key, '', token.counter), token.lastOtp);
  return used ? token.counter + 1 : token.counter;
}

/** Why `format`'s reader could not use this line; undefined if it can. */
export function exportProblem(token: TokenLine, format: ExportFormat): string | undefined {
  if (isHashedPin(token.pin)) return 'its PIN is hashed, which only otpgate can check (set-pin a plain PIN first)';
  if (format === 'oath' && !pamOathReadable(token)) {
    return `pam_oath cannot read token type ${token.typeText} or a key of ${token.keyHex.length / 2} bytes`;
  }
  return undefined;
}

/**
 * The line in `format`'s own layout (without terminator). oath: 5 fields, or 7
 * with the last OTP and its time. mod_authn_otp: 6 fields, or 9 with the last
 * OTP, time and IP (it has no layout for an OTP without IP). A time token's field
 * 5 on a liboath line is bookkeeping, not a drift: mod_authn_otp gets drift 0.
 */
export function exportLine(token: TokenLine, format: ExportFormat): string {
  let counter = token.counter;
  if (format === 'mod_authn_otp' && token.liboathLayout) counter = token.type.stepSeconds > 0 ? 0 : nextEventCounter(token);
  const fields = leadingFields(token.typeText, token.login, token.pin, token.keyHex, counter);
  const last = token.lastOtp !== undefined && token.lastTime !== undefined
    ? [token.lastOtp.padEnd(7), formatLocalTime(token.lastTime)] : undefined;
  if (format === 'oath') return [...fields, ...(last ?? [])].join(' ').trimEnd();
  fields.push(String(token.failures ?? 0).padEnd(2));
  if (last !== undefined && token.lastIp !== undefined) fields.push(...last, token.lastIp);
  return fields.join(' ').trimEnd();
}
