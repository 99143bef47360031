// `otpgate users ...` and `otpgate otp`: enrol, inspect and repair users in the
// users file, safely while gateways run on it (usersFileEdit.ts), with the
// jobs of genotpurl, otptool and otplock in one place.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fchmodSync, fchownSync, fstatSync, openSync, rmSync, statSync, writeFileSync, type Stats } from 'node:fs';
import { resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseConfig, type Config, type StateConfig } from './config.js';
import type { Policy } from './decision.js';
import { otpauthUri } from './enrolment.js';
import { LockTimeoutError } from './fileLock.js';
import { formatLocalTime } from './localTime.js';
import { codesEqual, findEventCounter, findTimeStep, stepAt } from './otp.js';
import { DEFAULT_SCRYPT, hashPin } from './pinHash.js';
import { Prompter } from './prompt.js';
import { CliError } from './cliError.js';
import { configFileFrom, policyOf, readConfig, safetyOf } from './configFile.js';
import { UsersFileError, type FileSafety } from './usersFile.js';
import type { SharedStore } from './redisAdmin.js';
import {
  appendLines, changeLines, codesFrom, currentPosition, importPlan, linesOf, loggedOut, loginProblem, pinProblem,
  removeLines, resyncProblem, resynced, tokenAt, unlocked, userRows, type PinPolicy, type UserRow,
} from './usersAdmin.js';
import { editUsersFile, readUsersFile, withUsersFileLock } from './usersFileEdit.js';
import {
  exportLine, exportProblem, layoutStoresFailures, newTokenLine, parseTokenType,
  type ExportFormat, type TokenLine, type UsersFileModel,
} from './usersFileFormat.js';

interface FileOptions {
  file?: string;
  config?: string;
  lockTimeout: number;
}

interface Settings {
  readonly usersFile: string;
  readonly policy: Policy;
  readonly safety: FileSafety;
  readonly hashPins: boolean;
  readonly pinPolicy: PinPolicy;
  readonly enrolmentType: string;
  readonly issuer: string;
  readonly lockTimeoutMs: number;
  /** store: redis: the state store the gateways share (undefined: the users file holds the state) */
  readonly shared: StateConfig | undefined;
}

const now = (): number => Date.now() / 1000;

/** Defaults, when only a users file is named. */
function defaultConfig(usersFile: string): Config {
  const result = parseConfig(`upstream: http://127.0.0.1:1\nusersFile: ${JSON.stringify(usersFile)}\n`, '(defaults)', process.cwd());
  if (!result.ok) throw new CliError(result.errors.join('\n'), 2);
  return result.config;
}

function settingsOf(opts: FileOptions): Settings {
  const config = opts.file !== undefined && opts.config === undefined
    ? defaultConfig(resolve(opts.file))
    : readConfig(configFileFrom(opts.config));
  return {
    usersFile: opts.file !== undefined ? resolve(opts.file) : config.usersFile,
    policy: policyOf(config), safety: safetyOf(config), hashPins: config.hashPins, pinPolicy: config.pinPolicy,
    enrolmentType: config.enrolment.type, issuer: config.enrolment.issuer ?? config.realm,
    lockTimeoutMs: opts.lockTimeout * 1000,
    shared: config.state.store === 'redis' ? config.state : undefined,
  };
}

type RedisAdmin = typeof import('./redisAdmin.js');
interface Shared { readonly store: SharedStore; readonly admin: RedisAdmin }

/**
 * Run `fn` with the state store open when the config says store: redis (else
 * with undefined). Loaded only then: file-mode commands never load ioredis.
 */
async function withShared<T>(s: Settings, fn: (shared: Shared | undefined) => Promise<T>): Promise<T> {
  if (s.shared === undefined) return fn(undefined);
  const admin = await import('./redisAdmin.js');
  return admin.withSharedStore(s.shared, (store) => fn(store === undefined ? undefined : { store, admin }));
}

/** store: redis: each gateway reads its own copy of the users file; an edit reaches them only when copied. */
function copyNote(s: Settings): void {
  if (s.shared !== undefined) note(`${s.usersFile}: store: redis: copy the users file to every gateway (each reads its own copy)`);
}

const wholeNumber = (min: number, max = Number.MAX_SAFE_INTEGER) => (text: string): number => {
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) throw new InvalidArgumentError(`expected a whole number from ${min} to ${max}`);
  return Number(text);
};

function withFileOptions(cmd: Command): Command {
  return cmd
    .option('-f, --file <path>', 'the users file (default: usersFile of the config)')
    .option('-c, --config <file>', 'config file (default: $OTPGATE_CONFIG, then /etc/otpgate/otpgate.yaml)')
    .option('--lock-timeout <seconds>', 'how long to wait for the users-file lock', wholeNumber(1, 3600), 10);
}

function read(s: Settings): UsersFileModel {
  return readUsersFile(s.usersFile, s.safety);
}

/** The token lines of `login`; a one-line error when there are none. */
function tokenLinesOf(model: UsersFileModel, s: Settings, login: string): number[] {
  const all = linesOf(model, login);
  const tokens = all.filter((i) => model.parsed[i]?.kind === 'token');
  if (all.length === 0) throw new CliError(`${login}: no such user in ${s.usersFile}`, 1);
  const bad = all.find((i) => model.parsed[i]?.kind === 'invalid');
  if (bad !== undefined) {
    const entry = model.parsed[bad];
    throw new CliError(`${s.usersFile}:${bad + 1}: ${entry?.kind === 'invalid' ? entry.reason : 'malformed'} (fix or remove the line first)`, 1);
  }
  return tokens;
}

/** The token lines of `login` as the file has them now. */
function userTokens(s: Settings, login: string): TokenLine[] {
  const model = read(s);
  return tokenLinesOf(model, s, login).map((i) => tokenAt(model, i));
}

const edit = <T>(s: Settings, fn: (model: UsersFileModel) => { model?: UsersFileModel; result: T }): Promise<T> =>
  editUsersFile(s.usersFile, { safety: s.safety, lockTimeoutMs: s.lockTimeoutMs }, fn);

const out = (text: string): void => { process.stdout.write(`${text}\n`); };
const note = (text: string): void => { process.stderr.write(`${text}\n`); };

interface PinOptions {
  pin?: string | boolean;
  askPin?: boolean;
  hashPins?: boolean;
}

const PIN_FLAGS = 'no terminal to ask for the PIN; pass --pin PIN, --pin - (read from standard input) or --no-pin';

/** The PIN field a new PIN is stored as: `-` for none, the PIN, or its hash. */
async function newPinField(opts: PinOptions, s: Settings, prompter: Prompter, login: string, hashable: boolean): Promise<{ field: string; hashed: boolean }> {
  if (opts.pin === false) return { field: '-', hashed: false };
  let pin: string;
  if (typeof opts.pin === 'string' && opts.pin !== '-') pin = opts.pin;
  else if (opts.pin === '-') pin = await prompter.stdinLine('PIN');
  else {
    pin = await prompter.ask(`New PIN for ${login}: `, true, PIN_FLAGS);
    const again = await prompter.ask('Same PIN again: ', true, PIN_FLAGS);
    if (!codesEqual(pin, again)) throw new CliError('the two PINs differ; nothing was changed', 1);
  }
  const problem = pinProblem(pin, s.pinPolicy);
  if (problem !== undefined) throw new CliError(`${login}: ${problem}`, 2);
  const hash = opts.hashPins === true || (opts.hashPins === undefined && s.hashPins);
  if (!hash) return { field: pin, hashed: false };
  if (!hashable) throw new CliError(`${login}: an MOTP PIN is part of the code and cannot be hashed; use --no-hash-pins`, 2);
  return { field: await hashPin(pin, DEFAULT_SCRYPT), hashed: true };
}

function pinOptions(cmd: Command): Command {
  return cmd
    .option('--pin <pin>', 'the PIN ("-": read it from standard input; on the command line it shows in ps and shell history)')
    .option('--no-pin', 'no PIN: the password is the code alone')
    .option('--ask-pin', 'ask for the PIN at the terminal, without echo (the default)')
    .option('--hash-pins', 'store the PIN as a scrypt hash ($scrypt$...): only otpgate can check it, mod_authn_otp and pam_oath cannot (default: hashPins of the config)')
    .option('--no-hash-pins', 'store the PIN as plain text, readable by mod_authn_otp and pam_oath');
}

/**
 * `--type` plus `--digits` as the file's type field, spelled as pam_oath reads
 * it (it is case-sensitive and knows no `T` or `E` shorthand).
 */
function typeField(type: string, digits: number | undefined): string {
  const parsed = parseTokenType(type);
  if (parsed === undefined || parsed.algorithm !== 'HOTP') {
    throw new CliError('--type: expected an HOTP type, e.g. HOTP/T30 (TOTP), HOTP/T60 or HOTP/E (counter); MOTP tokens are not enrolled with an app', 2);
  }
  if (digits !== undefined && digits !== parsed.digits && type.split('/').length === 3) {
    throw new CliError(`--digits ${digits} contradicts --type ${type}`, 2);
  }
  const n = digits ?? parsed.digits;
  if (parsed.stepSeconds === 0) return n === 6 ? 'HOTP/E' : `HOTP/E/${n}`;
  return `HOTP/T${parsed.stepSeconds}${n === 6 ? '' : `/${n}`}`;
}

async function showEnrolment(token: { type: TokenLine['type']; login: string; key: Uint8Array; counter?: number }, label: string, issuer: string, qr: boolean, png?: string): Promise<void> {
  const uri = otpauthUri({ ...token, login: label }, issuer);
  const { default: QRCode } = qr || png !== undefined ? await import('qrcode') : { default: undefined };
  if (qr && QRCode) out(await QRCode.toString(uri, { type: 'terminal', small: true }));
  out(uri);
  if (png !== undefined && QRCode) {
    try {
      // It holds the key: readable by the admin only, and never over an existing file.
      writeFileSync(png, await QRCode.toBuffer(uri, { type: 'png' }), { mode: 0o600, flag: 'wx' });
    } catch (err) {
      throw new CliError(`${png}: cannot write the QR code (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 1);
    }
    note(`QR code written to ${png} (it holds the key: delete it once scanned)`);
  }
}

/** Where the first code from the app puts the new token: the next counter, or the drift. */
function firstCodePosition(type: TokenLine['type'], key: Uint8Array, code: string, at: number): number | undefined {
  if (type.stepSeconds === 0) {
    // An app starts at counter 0; a few presses before typing are forgiven.
    const match = findEventCounter(type, key, '', code, 0, 20);
    return match === undefined ? undefined : match.counter + 1;
  }
  // A clock a few minutes off is forgiven too: the drift is recorded.
  const match = findTimeStep(type, key, '', code, Math.floor(at), 0, 10, undefined);
  return match === undefined ? undefined : match.counter - stepAt(at, type.stepSeconds);
}
const failuresText = (r: UserRow): string => (r.failures === undefined ? '-' : String(r.failures));
const timeText = (t: number | undefined): string => (t === undefined ? '-' : formatLocalTime(t).slice(0, -1));
const stateText = (r: UserRow): string => [r.locked ? 'locked' : '', r.lingering ? 'lingering' : ''].filter(Boolean).join(',') || '-';

function rowJson(r: UserRow): Record<string, unknown> {
  return {
    login: r.login, line: r.line, type: r.type, counter: r.counter, failures: r.failures ?? null, pin: r.pin,
    lastLogin: r.lastLogin === undefined ? null : new Date(r.lastLogin * 1000).toISOString(), lastIp: r.lastIp ?? null,
    locked: r.locked, lingering: r.lingering,
  };
}

function table(rows: readonly UserRow[]): string {
  const cells = [['LOGIN', 'LINE', 'TYPE', 'COUNTER', 'FAILURES', 'PIN', 'LAST LOGIN', 'FROM', 'STATE'],
    ...rows.map((r) => [r.login, String(r.line), r.type, String(r.counter), failuresText(r), r.pin, timeText(r.lastLogin), r.lastIp ?? '-', stateText(r)])];
  const widths = cells[0]?.map((_, c) => Math.max(...cells.map((row) => (row[c] ?? '').length))) ?? [];
  return cells.map((row) => row.map((cell, c) => cell.padEnd(widths[c] ?? 0)).join('  ').trimEnd()).join('\n');
}

function reportProblems(model: UsersFileModel, s: Settings): void {
  for (const p of model.problems) note(`${s.usersFile}:${p.line}: ${p.reason}`);
}

async function confirm(prompter: Prompter, question: string, yes: boolean | undefined): Promise<void> {
  if (yes === true) return;
  const answer = await prompter.ask(`${question} [y/N] `, false, 'no terminal to confirm showing the key; pass --yes');
  if (!/^y(es)?$/i.test(answer.trim())) throw new CliError('not confirmed; nothing shown', 1);
}

/** Say so for each line whose layout leaves what the command changes to the gateways' memory. */
function noteMemoryOnly(s: Settings, model: UsersFileModel, lines: readonly number[], memoryOnly: (t: TokenLine) => boolean, why: string): void {
  for (const i of lines) if (memoryOnly(tokenAt(model, i))) note(`${s.usersFile}:${i + 1}: this layout (pam_oath's) ${why}`);
}

const ISO_TIME = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;

function parseAt(text: string): number {
  const seconds = /^\d{1,11}$/.test(text) ? Number(text) : ISO_TIME.test(text) ? Date.parse(text) / 1000 : NaN;
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new InvalidArgumentError('expected epoch seconds or an ISO 8601 date and time, e.g. 2026-11-25T14:00:00Z');
  }
  return seconds;
}

export function usersCommand(prompter: Prompter): Command {
  const users = new Command('users').description('manage the users file, safely while gateways use it');

  pinOptions(withFileOptions(users.command('add')
    .description('enrol a user: new random key, otpauth:// URI and QR code for the app, first code to confirm')
    .argument('<login>', 'the user name typed into the browser prompt')))
    .option('--type <type>', 'token type: HOTP/T30 (TOTP, 30 s), HOTP/T60, HOTP/E (counter) (default: enrolment.type of the config)')
    .addOption(new Option('--digits <n>', 'code length').argParser(wholeNumber(6, 8)))
    .option('--key <hex>', 'use this key (e.g. of a hardware token) instead of a new random one')
    .option('--issuer <name>', 'issuer shown by the app (default: enrolment.issuer, then realm of the config)')
    .option('--label <text>', 'account name shown by the app (default: the login)')
    .option('--code <code>', 'the first code, instead of asking ("-": read it from standard input, after the URI is printed)')
    .option('--no-verify', 'do not ask for a first code')
    .option('--qr', 'print the QR code (the default when standard output is a terminal)')
    .option('--no-qr', 'do not print the QR code')
    .option('--qr-png <file>', 'also write the QR code as a PNG file (mode 0600; never over an existing file)')
    .action(async (login: string, opts: FileOptions & PinOptions & {
      type?: string; digits?: number; key?: string; issuer?: string; label?: string; code?: string; verify: boolean; qr?: boolean; qrPng?: string;
    }) => {
      const s = settingsOf(opts);
      const problem = loginProblem(login);
      if (problem !== undefined) throw new CliError(`${JSON.stringify(login)}: ${problem}`, 2);
      const typeText = typeField(opts.type ?? s.enrolmentType, opts.digits);
      const type = parseTokenType(typeText) as TokenLine['type'];
      if (opts.key !== undefined && (!/^(?:[0-9a-fA-F]{2}){1,256}$/.test(opts.key))) throw new CliError('--key: expected 1 to 256 bytes in hex', 2);
      const existing = (model: UsersFileModel): void => {
        const at = linesOf(model, login)[0];
        if (at !== undefined) throw new CliError(`${login}: already in ${s.usersFile} (line ${at + 1}); nothing was changed`, 1);
      };
      existing(read(s));
      const pin = await newPinField(opts, s, prompter, login, true);
      const key = opts.key !== undefined ? Buffer.from(opts.key, 'hex') : randomBytes(20);
      await showEnrolment({ type, login, key, counter: 0 }, opts.label ?? login, opts.issuer ?? s.issuer, opts.qr ?? process.stdout.isTTY === true, opts.qrPng);
      let counter = 0;
      let used: { otp: string; time: number } | undefined;
      if (opts.verify) {
        const code = (opts.code === '-' ? await prompter.stdinLine('code')
          : opts.code ?? await prompter.ask('Code shown by the app: ', false, 'no terminal to ask for the first code; pass --code CODE, --code - (read from standard input) or --no-verify')).trim();
        const at = now();
        const position = firstCodePosition(type, key, code, at);
        if (position === undefined) {
          if (opts.qrPng !== undefined) rmSync(opts.qrPng, { force: true }); // it holds a key nobody will use
          throw new CliError(`${login}: that code does not belong to the new key (check the app's clock); nothing was changed`, 1);
        }
        counter = position;
        // An event token's counter moves past the code; a time token's code is recorded as used.
        if (type.stepSeconds > 0) used = { otp: code, time: Math.floor(at) };
      }
      const line = await edit(s, (model) => {
        existing(model);
        const next = appendLines(model, [newTokenLine(typeText, login, pin.field, key.toString('hex'), counter, used)]);
        return { model: next, result: (next.index.get(login)?.[0] ?? 0) + 1 };
      });
      out(`${login}: added to ${s.usersFile}:${line} (${typeText}, ${type.digits} digits, ${pin.field === '-' ? 'no PIN' : pin.hashed ? 'PIN hashed' : 'PIN'}${opts.verify ? ', first code verified' : ''})`);
      copyNote(s);
    });

  withFileOptions(users.command('list').description('every token line: type, counter, failures, last login, locked or lingering (never keys or PINs)'))
    .option('--json', 'one JSON array, for scripts')
    .action(async (opts: FileOptions & { json?: boolean }) => {
      const s = settingsOf(opts);
      const model = read(s);
      reportProblems(model, s);
      const rows = await withShared(s, async (r) => {
        if (r === undefined) return userRows(model, now(), s.policy);
        const at = now();
        return r.admin.sharedRows(await r.admin.sharedView(r.store, model, at, s.policy), at, s.policy);
      });
      out(opts.json ? JSON.stringify(rows.map(rowJson), null, 2) : table(rows));
    });

  withFileOptions(users.command('show').description('one user; --uri/--qr show the enrolment again (it reveals the key: asks first)')
    .argument('<login>'))
    .option('--json', 'as JSON')
    .option('--uri', 'print the otpauth:// URI')
    .option('--qr', 'print the QR code')
    .option('--yes', 'reveal the key without asking')
    .option('--issuer <name>', 'issuer in the URI (default: enrolment.issuer, then realm)')
    .action(async (login: string, opts: FileOptions & { json?: boolean; uri?: boolean; qr?: boolean; yes?: boolean; issuer?: string }) => {
      const s = settingsOf(opts);
      const file = read(s);
      tokenLinesOf(file, s, login);
      // store: redis: each line as Redis has it (the URI's counter too).
      const { rows, model } = await withShared(s, async (r) => {
        if (r === undefined) return { rows: userRows(file, now(), s.policy, login), model: file };
        const at = now();
        const view = await r.admin.sharedView(r.store, file, at, s.policy, login);
        return { rows: r.admin.sharedRows(view, at, s.policy, login), model: view.model };
      });
      if (opts.json) out(JSON.stringify(rows.map(rowJson), null, 2));
      else {
        for (const r of rows) {
          out([`login       ${r.login}`, `line        ${r.line}`, `type        ${r.type}`, `counter     ${r.counter}`,
            `failures    ${failuresText(r)}`, `pin         ${r.pin}`, `last login  ${timeText(r.lastLogin)}`,
            `from        ${r.lastIp ?? '-'}`, `state       ${stateText(r)}`].join('\n'));
        }
      }
      if (!opts.uri && !opts.qr) return;
      await confirm(prompter, `This shows ${login}'s secret key. Continue?`, opts.yes);
      for (const i of tokenLinesOf(model, s, login)) {
        const t = tokenAt(model, i);
        if (t.type.algorithm !== 'HOTP') {
          note(`${s.usersFile}:${i + 1}: an MOTP token has no otpauth:// URI`);
          continue;
        }
        await showEnrolment({ type: t.type, login, key: t.key, counter: t.counter }, login, opts.issuer ?? s.issuer, opts.qr === true);
      }
    });

  withFileOptions(users.command('remove').description('remove every line of a user').argument('<login>'))
    .action(async (login: string, opts: FileOptions) => {
      const s = settingsOf(opts);
      // store: redis: connected first, so an unreachable store changes nothing.
      await withShared(s, async (r) => {
        const { removed, tokens } = await edit(s, (model) => {
          const lines = linesOf(model, login);
          if (lines.length === 0) throw new CliError(`${login}: no such user in ${s.usersFile}`, 1);
          const tokenLines = lines.filter((i) => model.parsed[i]?.kind === 'token').map((i) => tokenAt(model, i));
          return { model: removeLines(model, new Set(lines)), result: { removed: lines.map((i) => i + 1), tokens: tokenLines } };
        });
        out(`${login}: removed (line${removed.length > 1 ? 's' : ''} ${removed.join(', ')})`);
        if (r === undefined) return;
        // Its lingers end on every gateway at once; its records stay (see forgetShared).
        await r.admin.forgetShared(r.store, login, tokens, s.policy, now);
        note(`${s.usersFile}: store: redis: copy the users file to every other gateway now: until then they still let ${login} log in with new codes`);
      });
    });

  pinOptions(withFileOptions(users.command('set-pin').description('set a new PIN on every token line of a user (this ends its linger)')
    .argument('<login>')))
    .action(async (login: string, opts: FileOptions & PinOptions) => {
      const s = settingsOf(opts);
      const before = read(s);
      const motp = tokenLinesOf(before, s, login).some((i) => tokenAt(before, i).type.algorithm === 'MOTP');
      const pin = await newPinField(opts, s, prompter, login, !motp);
      await withShared(s, async (r) => {
        const { count, tokens } = await edit(s, (model) => {
          const lines = tokenLinesOf(model, s, login);
          return {
            model: changeLines(model, lines, (_t, st) => ({ ...st, pin: pin.field })),
            result: { count: lines.length, tokens: lines.map((i) => tokenAt(model, i)) },
          };
        });
        out(`${login}: ${pin.field === '-' ? 'PIN removed' : pin.hashed ? 'PIN set (hashed)' : 'PIN set'} on ${count} line${count > 1 ? 's' : ''}`);
        if (r === undefined) return;
        // The linger ends in Redis: no gateway's cache keeps riding it with the old PIN.
        await r.admin.logoutShared(r.store, login, tokens, s.policy, now, 'the PIN was set in the users file, but its linger was not ended');
        copyNote(s);
      });
    });

  withFileOptions(users.command('unlock').description('set the failure count to 0').argument('<login>'))
    .action(async (login: string, opts: FileOptions) => {
      const s = settingsOf(opts);
      if (s.shared !== undefined) {
        // store: redis: every layout keeps its count in Redis; the gateways' throttles are told to forget the account.
        const tokens = userTokens(s, login);
        await withShared(s, async (r) => r?.admin.unlockShared(r.store, login, tokens, s.policy, now));
        out(`${login}: failure count cleared`);
        return;
      }
      const { lines, stored, model } = await edit(s, (m) => {
        const ls = tokenLinesOf(m, s, login);
        const withCount = ls.filter((i) => layoutStoresFailures(tokenAt(m, i)));
        return { model: changeLines(m, withCount, unlocked), result: { lines: ls, stored: withCount.length, model: m } };
      });
      noteMemoryOnly(s, model, lines, (t) => !layoutStoresFailures(t), 'has no failure count; a running gateway keeps it in memory');
      if (stored === 0) {
        throw new CliError(`${login}: no line of it keeps a failure count in the file; nothing was changed ` +
          '(a running gateway ends a timed lock by itself; a permanent one, with lockoutSeconds 0, ends with a restart)', 1);
      }
      out(`${login}: failure count cleared`);
    });

  withFileOptions(users.command('logout').description('end the user\'s linger: the browser must log in with a new code').argument('<login>'))
    .action(async (login: string, opts: FileOptions) => {
      const s = settingsOf(opts);
      if (s.shared !== undefined) {
        const tokens = userTokens(s, login);
        const ended = await withShared(s, async (r) => r?.admin.logoutShared(r.store, login, tokens, s.policy, now));
        out(ended === true ? `${login}: logged out` : `${login}: no linger recorded`);
        return;
      }
      const { changed, lines, model } = await edit(s, (m) => {
        const ls = tokenLinesOf(m, s, login);
        const next = changeLines(m, ls, (t, st) => loggedOut(t, st, s.policy.maxOffset));
        return { model: next, result: { changed: !next.bytes.equals(m.bytes), lines: ls, model: next } };
      });
      noteMemoryOnly(s, model, lines, (t) => t.liboathLayout && t.type.stepSeconds > 0,
        'cannot record where a linger came from; a running gateway keeps it in memory until it ends or the gateway restarts');
      out(changed ? `${login}: logged out` : `${login}: no linger recorded in the file`);
    });

  withFileOptions(users.command('resync').description('find two consecutive codes (10,000 counters ahead, or a day either way) and continue after them')
    .argument('<login>').argument('<code1>').argument('<code2>'))
    .action(async (login: string, code1: string, code2: string, opts: FileOptions) => {
      const s = settingsOf(opts);
      const at = now();
      const notFound = `${login}: the two codes were not found one after the other (10,000 counters ahead, or a day either way, after the last code used); nothing was changed`;
      if (s.shared !== undefined) {
        const file = read(s);
        const lines = tokenLinesOf(file, s, login);
        const found = await withShared(s, async (r) => r?.admin.resyncShared(r.store, login, file, lines, code1.trim(), code2.trim(), s.policy, now,
          (line, problem) => note(`${s.usersFile}:${line}: ${problem}`)));
        if (found === undefined) throw new CliError(notFound, 1);
        const what = found.token.type.stepSeconds === 0 ? `next counter ${found.state.counter}` : `offset ${found.state.counter} steps`;
        out(`${login}: resynchronised line ${found.line}: ${what}, failures cleared`);
        return;
      }
      const result = await edit(s, (model) => {
        const unfit: string[] = [];
        for (const i of tokenLinesOf(model, s, login)) {
          const t = tokenAt(model, i);
          const problem = resyncProblem(t);
          if (problem !== undefined) {
            unfit.push(`${s.usersFile}:${i + 1}: ${problem}`);
            continue;
          }
          const state = resynced(t, code1.trim(), code2.trim(), at);
          if (state !== undefined) return { model: changeLines(model, [i], () => state), result: { line: i + 1, state, t } };
        }
        for (const u of unfit) note(u);
        throw new CliError(notFound, 1);
      });
      const what = result.t.type.stepSeconds === 0 ? `next counter ${result.state.counter}` : `offset ${result.state.counter} steps`;
      out(`${login}: resynchronised line ${result.line}: ${what}, failures cleared`);
    });

  withFileOptions(users.command('import').description('append the users of an oath-toolkit (users.oath) or mod_authn_otp file; on any conflict nothing is changed')
    .argument('<file>'))
    .option('--dry-run', 'report what would be imported, change nothing')
    .action(async (file: string, opts: FileOptions & { dryRun?: boolean }) => {
      const s = settingsOf(opts);
      let source: UsersFileModel;
      try {
        source = readUsersFile(file, { allowInsecurePermissions: true, allowSymlinkedUsersFile: true, allowUnsafeUsersFileDirectory: true });
      } catch (err) {
        throw new CliError((err as Error).message, 1);
      }
      const plan = await edit(s, (model) => {
        const p = importPlan(model, source, file, s.usersFile);
        if (p.conflicts.length > 0 || opts.dryRun || p.lines.length === 0) return { result: p };
        return { model: appendLines(model, p.lines), result: p };
      });
      if (plan.conflicts.length > 0) {
        for (const c of plan.conflicts) note(c);
        throw new CliError(`${file}: ${plan.conflicts.length} conflict${plan.conflicts.length > 1 ? 's' : ''}; nothing was imported`, 1);
      }
      out(`${file}: ${opts.dryRun ? 'would import' : 'imported'} ${plan.lines.length} line${plan.lines.length === 1 ? '' : 's'} for ${plan.users} user${plan.users === 1 ? '' : 's'}`);
      if (!opts.dryRun && plan.lines.length > 0) copyNote(s);
    });

  withFileOptions(users.command('export').description('write every user in the layout mod_authn_otp or pam_oath (oath-toolkit) reads'))
    .addOption(new Option('--format <format>', 'the reader').choices(['oath', 'mod_authn_otp']).makeOptionMandatory())
    .option('-o, --output <file>', 'write here (mode 0600; never over an existing file) instead of standard output')
    .option('--skip-unreadable', 'leave out, with a warning, lines the reader cannot use (instead of exporting nothing)')
    .action(async (opts: FileOptions & { format: ExportFormat; output?: string; skipUnreadable?: boolean }) => {
      const s = settingsOf(opts);
      const file = read(s);
      // store: redis: each line with the state Redis has (the way back from redis to a file).
      const view = await withShared(s, async (r) => (r === undefined ? undefined
        : { ...await r.admin.sharedView(r.store, file, now(), s.policy), lineOf: r.admin.exportSharedLine }));
      const model = view?.model ?? file;
      const lines: string[] = [];
      const refused: string[] = model.problems.map((p) => `${s.usersFile}:${p.line}: ${p.reason}`);
      model.parsed.forEach((entry, i) => {
        if (entry.kind !== 'token') return;
        const why = exportProblem(entry.token, opts.format);
        if (why === undefined) lines.push(view ? view.lineOf(view, i, opts.format) : exportLine(entry.token, opts.format));
        else refused.push(`${s.usersFile}:${i + 1}: ${entry.token.login}: ${why}`);
      });
      for (const r of refused) note(`${opts.skipUnreadable ? 'skipped ' : ''}${r}`);
      if (refused.length > 0 && !opts.skipUnreadable) {
        throw new CliError(`${refused.length} line${refused.length > 1 ? 's' : ''} cannot be exported for ${opts.format}; nothing was written (--skip-unreadable leaves them out)`, 1);
      }
      const text = lines.map((l) => `${l}\n`).join('');
      if (opts.output === undefined) {
        process.stdout.write(text);
        return;
      }
      try {
        writeFileSync(opts.output, text, { mode: 0o600, flag: 'wx' });
      } catch (err) {
        throw new CliError(`${opts.output}: cannot write (${(err as NodeJS.ErrnoException).code ?? 'error'})`, 1);
      }
      note(`${opts.output}: ${lines.length} line${lines.length === 1 ? '' : 's'} written`);
    });

  withFileOptions(users.command('lock')
    .description('run a command (an editor, a script) while holding the users-file lock, so it never races a gateway; its path is in $OTPGATE_USERS_FILE')
    .argument('<command...>', 'the command and its arguments, after --'))
    .action(async (command: string[], opts: FileOptions) => {
      const s = settingsOf(opts);
      read(s); // the same checks as every command: no link, no file others can read
      const code = await withUsersFileLock(s.usersFile, s.lockTimeoutMs, async () => {
        const before = statSync(s.usersFile);
        const status = await runHolding(command, s.usersFile);
        keepOwnerAndMode(s.usersFile, before);
        return status;
      });
      copyNote(s);
      process.exitCode = code;
    });

  return users;
}

/**
 * An editor run as root that writes a new file leaves it root's, and the
 * gateway's own user could not read it: give it back the owner and mode it had.
 * Through a descriptor opened without following links: the directory's owner
 * could have put a link to another file of root's in its place.
 */
function keepOwnerAndMode(usersFile: string, before: Stats): void {
  let fd: number;
  try {
    fd = openSync(usersFile, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP') note(`${usersFile}: is now a symbolic link; owner and mode not touched`);
    return; // gone: the gateway says so
  }
  try {
    const after = fstatSync(fd);
    if (!after.isFile()) {
      note(`${usersFile}: is no longer a regular file; owner and mode not touched`);
      return;
    }
    const restore = (what: string, fn: () => void): void => {
      try {
        fn();
        note(`${usersFile}: ${what} restored`);
      } catch (err) {
        note(`${usersFile}: cannot restore ${what} (${(err as NodeJS.ErrnoException).code ?? 'error'}); the gateway may not be able to use it`);
      }
    };
    if (after.uid !== before.uid || after.gid !== before.gid) restore(`owner ${before.uid}:${before.gid}`, () => fchownSync(fd, before.uid, before.gid));
    if ((after.mode & 0o7777) !== (before.mode & 0o7777)) restore(`mode ${(before.mode & 0o7777).toString(8)}`, () => fchmodSync(fd, before.mode & 0o7777));
  } finally {
    closeSync(fd);
  }
}

/** Run the command; the lock is held until it ends, whatever signal reaches us meanwhile. */
function runHolding(command: readonly string[], usersFile: string): Promise<number> {
  const [file, ...args] = command as [string, ...string[]];
  return new Promise((resolveExit, reject) => {
    const child = spawn(file, args, { stdio: 'inherit', env: { ...process.env, OTPGATE_USERS_FILE: usersFile } });
    const forward = (signal: NodeJS.Signals): void => { child.kill(signal); };
    const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
    for (const sig of signals) process.on(sig, forward);
    const done = (): void => { for (const sig of signals) process.off(sig, forward); };
    child.once('error', (err: NodeJS.ErrnoException) => {
      done();
      reject(new CliError(`${file}: cannot run (${err.code ?? err.message})`, 1));
    });
    child.once('exit', (code, signal) => {
      done();
      resolveExit(code ?? 128 + (signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : signal === 'SIGHUP' ? 1 : 9));
    });
  });
}

export function otpCommand(): Command {
  return withFileOptions(new Command('otp')
    .description('print a user\'s codes (otptool\'s job), for tests and support; reads the key, changes nothing')
    .argument('<login>'))
    .addOption(new Option('--count <n>', 'how many consecutive codes').argParser(wholeNumber(1, 1000)).default(1))
    .addOption(new Option('--at <time>', 'time tokens: codes at this time (epoch seconds or ISO 8601) instead of now').argParser(parseAt).conflicts('counter'))
    .addOption(new Option('--counter <n>', 'the counter (event tokens) or time step (time tokens) to start at').argParser(wholeNumber(0, 2 ** 52)))
    .addOption(new Option('--line <n>', 'which of the user\'s token lines (1 = its first)').argParser(wholeNumber(1)).default(1))
    .action(async (login: string, opts: FileOptions & { count: number; at?: number; counter?: number; line: number }) => {
      const s = settingsOf(opts);
      const file = read(s);
      const lines = tokenLinesOf(file, s, login);
      const i = lines[opts.line - 1];
      if (i === undefined) throw new CliError(`${login}: has ${lines.length} token line${lines.length > 1 ? 's' : ''}, not ${opts.line}`, 2);
      // store: redis: from where the gateways are (Redis's counter or drift), unless --counter says where.
      const model = opts.counter !== undefined ? file
        : await withShared(s, async (r) => (r === undefined ? file : (await r.admin.sharedView(r.store, file, now(), s.policy, login)).model));
      const t = tokenAt(model, i);
      const from = opts.counter ?? currentPosition(t, opts.at ?? now());
      out(codesFrom(t, from, opts.count).join('\n'));
    });
}

/** The one-line message for an error of the file layer. */
export function adminError(err: unknown): CliError | undefined {
  if (err instanceof LockTimeoutError) return new CliError(`${err.message}; nothing was changed (is an editor holding it? see otpgate users lock)`, 1);
  if (err instanceof UsersFileError) return new CliError(err.message, err.constructor.name === 'UnsafeUsersFileError' ? 2 : 1);
  return undefined;
}
