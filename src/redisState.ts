// Token state in Redis, for several gateways sharing it (issue 7): one hash
// per token line holding what changes (counter or drift, failures, last OTP,
// its time and IP) and a version. Every update is a compare-and-set on that
// version in one Lua script, so of two gateways that decided on the same state,
// exactly one writes; the other reads again and decides again. The users file
// still defines users, keys and PINs; nothing secret goes to Redis: a token's
// key name is a SHA-256 of its login, type and key, its fields hold no PIN or key.
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { LineState, TokenLine } from './usersFileFormat.js';

export interface StoredState {
  /** 0: Redis holds nothing for the token yet */
  readonly version: number;
  readonly state: LineState | undefined;
}

// KEYS: the hashes of the lines a decision read (all of a user's lines: a
// login consumes one and clears the others' failures). ARGV, per key: the
// version the caller decided on, '1' to write or '0' only to check, then FIELDS
// field, value pairs ('' deletes the field). Nothing is written unless every
// version still holds. Redis runs a script atomically.
const FIELDS = 5;
const COMPARE_AND_SET = `
local per = 2 + 2 * ${FIELDS}
for k = 1, #KEYS do
  if (redis.call('HGET', KEYS[k], 'v') or '0') ~= ARGV[(k - 1) * per + 1] then return 0 end
end
for k = 1, #KEYS do
  local base = (k - 1) * per
  if ARGV[base + 2] == '1' then
    for i = base + 3, base + per, 2 do
      if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[k], ARGV[i]) else redis.call('HSET', KEYS[k], ARGV[i], ARGV[i + 1]) end
    end
    redis.call('HSET', KEYS[k], 'v', tonumber(ARGV[base + 1]) + 1)
  end
end
return 1
`;

// Seeding from a users file: a token Redis does not know takes the file's
// state; one it knows keeps its own, except that an event token's counter is
// raised to the file's when the file is ahead (a counter never goes back).
// ARGV[1] '1' for an event token, ARGV[2] the counter, then field, value pairs.
const SEED = `
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  for i = 3, #ARGV, 2 do
    if ARGV[i + 1] ~= '' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  end
  redis.call('HSET', KEYS[1], 'v', 1)
  return 1
end
if ARGV[1] == '1' and tonumber(redis.call('HGET', KEYS[1], 'c') or '0') < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'c', ARGV[2], 'v', tonumber(v) + 1)
  return 1
end
return 0
`;

interface Scripts {
  otpgateCompareAndSet(keyCount: number, ...keysAndArgs: string[]): Promise<number>;
  otpgateSeed(key: string, ...args: string[]): Promise<number>;
}

const fieldsOf = (s: LineState): string[] => [
  'c', String(s.counter), 'f', String(s.failures),
  'o', s.lastOtp ?? '', 't', s.lastTime === undefined ? '' : String(s.lastTime), 'i', s.lastIp ?? '',
];

export class RedisTokenStore {
  private readonly scripts: Scripts;

  constructor(private readonly redis: Redis, private readonly prefix: string) {
    redis.defineCommand('otpgateCompareAndSet', { lua: COMPARE_AND_SET });
    redis.defineCommand('otpgateSeed', { numberOfKeys: 1, lua: SEED });
    this.scripts = redis as unknown as Scripts;
  }

  /** The token's key name: no login, PIN or key in it. */
  keyOf(token: TokenLine): string {
    return `${this.prefix}token:${createHash('sha256').update(`${token.login}\0${token.typeText}\0${token.keyHex}`).digest('hex')}`;
  }

  async read(token: TokenLine): Promise<StoredState> {
    const h = await this.redis.hgetall(this.keyOf(token));
    if (h.v === undefined) return { version: 0, state: undefined };
    const state: LineState = {
      counter: Number(h.c ?? 0), failures: Number(h.f ?? 0),
      ...(h.o !== undefined ? { lastOtp: h.o } : {}),
      ...(h.t !== undefined ? { lastTime: Number(h.t) } : {}),
      ...(h.i !== undefined ? { lastIp: h.i } : {}),
    };
    return { version: Number(h.v), state };
  }

  /** Write `next` if the token is still at `version`; false: someone else wrote first (read and decide again). */
  compareAndSet(token: TokenLine, version: number, next: LineState): Promise<boolean> {
    return this.compareAndSetAll([{ token, version, next }]);
  }

  /**
   * All or nothing, for the lines one decision read: each line whose `next` is
   * given takes it, but only if every line is still at the version the decision
   * saw (a line without `next` is only checked). False: decide again.
   */
  async compareAndSetAll(lines: readonly { token: TokenLine; version: number; next?: LineState | undefined }[]): Promise<boolean> {
    const keys = lines.map((l) => this.keyOf(l.token));
    const args = lines.flatMap((l) => (l.next === undefined
      ? [String(l.version), '0', ...fieldsOf({ counter: 0, failures: 0 })]
      : [String(l.version), '1', ...fieldsOf(l.next)]));
    return (await this.scripts.otpgateCompareAndSet(keys.length, ...keys, ...args)) === 1;
  }

  /** Take the users file's state for a token, never lowering what Redis has (see SEED). True if Redis changed. */
  async seed(token: TokenLine, state: LineState): Promise<boolean> {
    const event = token.type.stepSeconds === 0 ? '1' : '0';
    return (await this.scripts.otpgateSeed(this.keyOf(token), event, String(state.counter), ...fieldsOf(state))) === 1;
  }
}
