// The admin CLI with store: redis: what the gateways share lives in Redis, so
// `users list/show/export` show each line's state as Redis has it, and
// `unlock`, `logout`, `resync` (and the linger ends of `set-pin` and `remove`)
// change it there, by the same compare-and-set as a gateway's login: read all
// of the user's lines, decide, write all or nothing, again on a lost race. The
// users file stays the source of users, keys and PINs; this never writes it.
// Loaded only by the commands that need it (ioredis is not loaded otherwise).
import { Redis, type RedisOptions } from 'ioredis';
import type { StateConfig } from './config.js';
import { CliError } from './cliError.js';
import { endLinger, isLocked, lastUsedStep, type Policy, type TokenState } from './decision.js';
import { lingerActive } from './linger.js';
import { stepAt } from './otp.js';
import { redisOptionsOf } from './redisLink.js';
import { RedisTokenStore, type StoredRecord } from './redisState.js';
import { effectiveState, lineStateOf, storedOf, type StoredState } from './sharedState.js';
import { changeLines, resynced, resyncProblem, userRows, type UserRow } from './usersAdmin.js';
import {
  exportLine, formatLine, lineState, parseLine, tokenAt, type ExportFormat, type TokenLine, type UsersFileModel,
} from './usersFileFormat.js';

/** How long the CLI waits for the state store before giving up. */
const CONNECT_WAIT_MS = 5000;
/** How often an update is decided again after losing a race with a gateway (as a login does). */
const MAX_ATTEMPTS = 20;
/** Records read per round trip (a big file is read in slices). */
const READ_SLICE = 1000;
/** Who the CLI is on the events channel (a gateway's id is random hex: never this). */
const CLI_ID = 'otpgate-cli';

export interface SharedStore {
  /** the URL for messages (no password) */
  readonly url: string;
  readonly store: RedisTokenStore;
}

/** What went wrong, in a few words: an errno code, or the first line of the message (never a password). */
function why(err: unknown): string {
  const e = err as NodeJS.ErrnoException | undefined;
  if (typeof e?.code === 'string' && e.code !== '') return e.code;
  const message = (e?.message ?? String(err)).split('\n')[0] ?? '';
  return message.length > 120 ? `${message.slice(0, 117)}...` : message;
}

/** A failed command of the state store, as one line; `outcome` says what was or was not changed. */
export function storeError(shared: SharedStore, err: unknown, outcome = 'nothing was changed'): CliError {
  if (err instanceof CliError) return err;
  return new CliError(`state store ${shared.url}: ${why(err)}; ${outcome}`, 1);
}

/** A few quick tries, not ioredis's endless reconnecting: the CLI reports and exits. */
const fewTries = (times: number): number | null => (times <= 2 ? 100 * times : null);

/**
 * Connect to the state store, waiting a bounded time; when it cannot be
 * reached, one line naming it: `state store redis://... unreachable (ECONNREFUSED); nothing was changed`.
 */
async function openStore(state: StateConfig): Promise<{ shared: SharedStore; redis: Redis }> {
  const url = state.url ?? 'redis';
  let options: RedisOptions;
  try {
    options = redisOptionsOf(state);
  } catch (err) {
    throw new CliError(`state store ${url}: ${why(err)}; nothing was changed`, 1);
  }
  const redis = new Redis({
    ...options, retryStrategy: fewTries,
    ...(options.sentinels !== undefined ? { sentinelRetryStrategy: fewTries } : {}),
  });
  let last: unknown;
  redis.on('error', (err: Error) => { last = err; });
  const ready = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), CONNECT_WAIT_MS);
    const done = (up: boolean) => (): void => {
      clearTimeout(timer);
      resolve(up);
    };
    redis.once('ready', done(true));
    redis.once('end', done(false)); // no more tries
    // Rejects at the first closed attempt while the tries go on: the events decide.
    redis.connect().catch((err: unknown) => { last ??= err; });
  });
  if (!ready) {
    redis.disconnect();
    const cause = last === undefined ? `no answer within ${CONNECT_WAIT_MS / 1000} s` : why(last);
    throw new CliError(`state store ${url} unreachable (${cause}); nothing was changed`, 1);
  }
  return { shared: { url, store: new RedisTokenStore(redis, state.keyPrefix) }, redis };
}

/**
 * Run `fn` with the state store open when `state` is store: redis (with
 * undefined otherwise); the connection is closed afterwards, whatever happens,
 * so the process can exit.
 */
export async function withSharedStore<T>(state: StateConfig | undefined, fn: (shared: SharedStore | undefined) => Promise<T>): Promise<T> {
  if (state === undefined || state.store !== 'redis') return fn(undefined);
  const { shared, redis } = await openStore(state);
  try {
    return await fn(shared);
  } finally {
    await redis.quit().catch(() => undefined);
    redis.disconnect();
  }
}

async function readRecords(shared: SharedStore, tokens: readonly TokenLine[], outcome?: string): Promise<StoredRecord[]> {
  const records: StoredRecord[] = [];
  for (let from = 0; from < tokens.length; from += READ_SLICE) {
    const keys = tokens.slice(from, from + READ_SLICE).map((t) => shared.store.keyOf(t));
    try {
      records.push(...await shared.store.readAll(keys));
    } catch (err) {
      throw storeError(shared, err, outcome);
    }
  }
  return records;
}

/** The state each line has as the gateways see it: Redis's record, or the file's line when that is ahead. */
export async function effectiveStates(shared: SharedStore, tokens: readonly TokenLine[], now: number, policy: Policy): Promise<TokenState[]> {
  const records = await readRecords(shared, tokens);
  return tokens.map((t, k) => effectiveState(t, records[k]?.state, now, policy).state);
}

/** The file as it would read with each listed line holding `states` (same order): a view, never written. */
export function virtualModel(model: UsersFileModel, lines: readonly number[], states: readonly TokenState[]): UsersFileModel {
  const byToken = new Map(lines.map((i, k) => [tokenAt(model, i), states[k]]));
  return changeLines(model, lines, (token, before) => {
    const s = byToken.get(token);
    return s === undefined ? before : lineStateOf(s);
  });
}

const tokenLines = (model: UsersFileModel, only?: string): number[] => {
  const lines: number[] = [];
  model.parsed.forEach((entry, i) => {
    if (entry.kind === 'token' && (only === undefined || entry.token.login === only)) lines.push(i);
  });
  return lines;
};

export interface SharedView {
  /** the users file with every token line holding the state Redis has for it */
  readonly model: UsersFileModel;
  /** those states, by line index */
  readonly states: ReadonlyMap<number, TokenState>;
}

/** The file (or `only`'s lines) as the gateways see it: for list, show, export and otp. */
export async function sharedView(shared: SharedStore, model: UsersFileModel, now: number, policy: Policy, only?: string): Promise<SharedView> {
  const lines = tokenLines(model, only);
  const states = await effectiveStates(shared, lines.map((i) => tokenAt(model, i)), now, policy);
  return { model: virtualModel(model, lines, states), states: new Map(lines.map((i, k) => [i, states[k] as TokenState])) };
}

/**
 * `users list` / `show`: each token line as the gateways see it. Every layout
 * keeps a failure count in Redis, and Redis knows when a lock began and when
 * a linger was last ridden.
 */
export function sharedRows(view: SharedView, now: number, policy: Policy, only?: string): UserRow[] {
  return userRows(view.model, now, policy, only).map((row) => {
    const s = view.states.get(row.line - 1);
    if (s === undefined) return row;
    return {
      ...row, counter: s.counter, failures: s.failures, lastLogin: s.lastTime, lastIp: s.lastIp,
      locked: isLocked(s, now, policy),
      lingering: s.lastIp !== undefined && lingerActive(s, s.lastIp, now, policy),
    };
  });
}

/**
 * Line `i` of the view for `format`'s reader. mod_authn_otp's layout has a
 * failure count for every line, so a count Redis keeps for a line whose own
 * layout (pam_oath's) has none carries over too: a lock is not lifted by a
 * migration back to the file.
 */
export function exportSharedLine(view: SharedView, i: number, format: ExportFormat): string {
  const token = tokenAt(view.model, i);
  const line = exportLine(token, format);
  const failures = view.states.get(i)?.failures;
  if (format !== 'mod_authn_otp' || failures === undefined || failures === (token.failures ?? 0)) return line;
  const reparsed = parseLine(line, i + 1);
  if (reparsed.kind !== 'token') throw new Error(`line ${i + 1} would not parse back after the export`);
  return formatLine(reparsed.token, { ...lineState(reparsed.token), failures });
}

const sameStored = (a: StoredState, b: StoredState): boolean =>
  a.counter === b.counter && a.failures === b.failures && a.lockedAt === b.lockedAt && a.lastOtp === b.lastOtp &&
  a.lastTime === b.lastTime && a.lastIp === b.lastIp && a.lastActive === b.lastActive && a.usedStep === b.usedStep &&
  a.retiredOtp === b.retiredOtp;

export interface Decision<R> {
  /** new states, by index into the lines */
  readonly changes: ReadonlyMap<number, TokenState>;
  readonly result: R;
}

/**
 * Read the lines' records, let `decide` choose new states from their effective
 * states, and write them all or nothing, as a gateway's login does; on a lost
 * race (a gateway wrote meanwhile) read and decide again, a bounded number of
 * times. A line `decide` leaves as it is is only checked, not written (unless
 * a lock's start must be recorded). `decide` may throw a CliError: nothing is
 * written. `failed`: what a failure message says was changed (default: nothing).
 */
export async function updateLines<R>(
  shared: SharedStore, login: string, tokens: readonly TokenLine[], policy: Policy, clock: () => number,
  decide: (states: readonly TokenState[], now: number) => Decision<R>, failed = 'nothing was changed',
): Promise<R> {
  if (new Set(tokens.map((t) => shared.store.keyOf(t))).size !== tokens.length) {
    throw new CliError(`${login}: two lines with the same token type and key: with store: redis remove one first; ${failed}`, 1);
  }
  for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
    const records = await readRecords(shared, tokens, failed);
    const now = clock();
    const effective = tokens.map((t, k) => effectiveState(t, records[k]?.state, now, policy));
    const { changes, result } = decide(effective.map((e) => e.state), now);
    const writes = tokens.map((t, k) => {
      const record = records[k];
      const e = effective[k];
      const next = changes.get(k) ?? (e?.mustWrite ? e.state : undefined);
      const stored = next === undefined ? undefined : storedOf(next);
      const same = stored !== undefined && record?.state !== undefined && sameStored(stored, record.state);
      return { key: shared.store.keyOf(t), version: record?.version ?? 0, next: same ? undefined : stored };
    });
    if (writes.every((w) => w.next === undefined)) return result;
    let written: boolean;
    try {
      written = (await shared.store.compareAndSetAll(writes)) > 0;
    } catch (err) {
      // Not known whether the script ran: say so rather than "nothing was changed".
      throw storeError(shared, err, failed === 'nothing was changed' ? 'not known whether the change was made (run the command again)' : failed);
    }
    if (written) return result;
  }
  throw new CliError(`${login}: the state store kept changing under this command (${MAX_ATTEMPTS} attempts); ${failed}`, 1);
}

/** `users unlock`: failures 0 and no lock on every line, and every gateway's throttle forgets the account. */
export async function unlockShared(shared: SharedStore, login: string, tokens: readonly TokenLine[], policy: Policy, clock: () => number): Promise<void> {
  await updateLines(shared, login, tokens, policy, clock, (states) => {
    const changes = new Map<number, TokenState>();
    states.forEach((s, k) => { if (s.failures !== 0 || s.lockedAt !== undefined) changes.set(k, { ...s, failures: 0, lockedAt: undefined }); });
    return { changes, result: undefined };
  });
  try {
    await shared.store.publishThrottle(CLI_ID, { type: 'forget', login });
  } catch (err) {
    throw storeError(shared, err, 'the failure count was cleared, but running gateways\' throttles may still hold the account back');
  }
}

/**
 * End every linger of the lines, as the gateway's logout path does (decision.ts
 * endLinger: the code stays known as used). The write announces each new
 * version, so every gateway drops what it cached and no cached linger rides
 * on. True when a linger was recorded.
 */
export function logoutShared(
  shared: SharedStore, login: string, tokens: readonly TokenLine[], policy: Policy, clock: () => number, failed?: string,
): Promise<boolean> {
  return updateLines(shared, login, tokens, policy, clock, (states) => {
    const changes = new Map<number, TokenState>();
    states.forEach((s, k) => changes.set(k, endLinger(s, policy.maxOffset)));
    return { changes, result: states.some((s) => s.lastIp !== undefined) };
  }, failed);
}

/**
 * `users remove`: the removed lines' lingers end everywhere at once (see
 * logoutShared). Their records stay: a gateway whose copy of the users file
 * still lists the user would otherwise fall back to that copy's older line,
 * and codes used since would work there again. (A token enrolled again has a
 * new key, so a new record.)
 */
export async function forgetShared(shared: SharedStore, login: string, tokens: readonly TokenLine[], policy: Policy, clock: () => number): Promise<void> {
  await logoutShared(shared, login, tokens, policy, clock, `${login} was removed from the users file, but its lingers may go on until it is copied to every gateway`);
}

export interface Resync {
  /** 1-based line number */
  readonly line: number;
  readonly token: TokenLine;
  readonly state: TokenState;
}

/**
 * `users resync` on Redis's state: the search starts where the gateways are
 * (Redis's counter, or after the last step used), and the result is written
 * back by compare-and-set. A time token records the second code's step as
 * used, so neither code, nor any code used before, works again. Lines resync
 * cannot help are reported in `unfit`; undefined: the codes were not found.
 */
export async function resyncShared(
  shared: SharedStore, login: string, model: UsersFileModel, lines: readonly number[], code1: string, code2: string,
  policy: Policy, clock: () => number, unfit: (line: number, problem: string) => void,
): Promise<Resync | undefined> {
  const tokens = lines.map((i) => tokenAt(model, i));
  const told = new Set<number>();
  return updateLines(shared, login, tokens, policy, clock, (states, now) => {
    const view = virtualModel(model, lines, states);
    for (let k = 0; k < lines.length; k++) {
      const i = lines[k] as number;
      const s = states[k] as TokenState;
      const t = tokenAt(view, i);
      const problem = resyncProblem(t);
      if (problem !== undefined) {
        if (!told.has(i)) unfit(i + 1, problem);
        told.add(i);
        continue;
      }
      const found = resynced(t, code1, code2, now);
      if (found === undefined) continue;
      let next: TokenState;
      if (t.type.stepSeconds === 0) {
        next = { spec: s.spec, counter: found.counter, failures: 0 };
      } else {
        // The second code's step: used. Redis may know of a later used step than the line can say (usedStep).
        const used = stepAt(now, t.type.stepSeconds) + found.counter;
        const before = lastUsedStep(s, policy.maxOffset);
        if (before !== undefined && used - 1 <= before) continue;
        next = {
          spec: s.spec, counter: found.counter, failures: 0, lastOtp: found.lastOtp, lastTime: found.lastTime, usedStep: used,
        };
      }
      return { changes: new Map([[k, next]]), result: { line: i + 1, token: tokens[k] as TokenLine, state: next } };
    }
    return { changes: new Map(), result: undefined };
  });
}
