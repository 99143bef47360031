// Token state in Redis, for several gateways sharing it (store: redis): one hash
// per token line holding what changes (counter or drift, failures, lock, last
// OTP, its time and IP, idle clock, last used step, retired code) and a version.
// Every update is a compare-and-set on the versions of all of a user's lines in
// one Lua script, so of two gateways that decided on the same state, exactly
// one writes; the other reads again and decides again. The script publishes
// each new version, so every gateway drops what it cached of that token.
// Nothing secret goes to Redis: a token's key name is a SHA-256 of its login,
// type and key, its fields hold no login, PIN or key.
import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { StoredState } from './sharedState.js';
import type { TokenLine } from './usersFileFormat.js';

export interface StoredRecord {
  /** 0: Redis holds nothing for the token yet */
  readonly version: number;
  readonly state: StoredState | undefined;
}

/** A message on the events channel: a token's new version (from the scripts), or a gateway's throttle news. */
export type StateEvent =
  | { readonly kind: 'version'; readonly key: string; readonly version: number }
  | { readonly kind: 'throttle'; readonly from: string; readonly event: ThrottleEvent };

/** What one gateway's throttle learnt that the others' should count too. */
export type ThrottleEvent =
  | { readonly type: 'failed'; readonly login: string; readonly ip: string; readonly known: boolean; readonly usual: boolean }
  | { readonly type: 'succeeded'; readonly login: string; readonly ip: string }
  | { readonly type: 'forget'; readonly login: string };

// The hash's fields: c counter, f failures, l lockedAt, o lastOtp, t lastTime,
// i lastIp, a lastActive, u usedStep, r retiredOtp; v the version.
const FIELDS = 9;

// KEYS: the hashes of the lines a decision read (all of a user's lines: a
// login consumes one and clears the others' failures). ARGV[1] the events
// channel, ARGV[2] the sequence key, then per key: the version the caller
// decided on, '1' to write or '0' only to check, then FIELDS field, value pairs
// ('' deletes the field). Nothing is written unless every version still holds.
// A write's version comes from one sequence for all tokens, so a version never
// repeats, even for a record deleted and written again. Returns it (0: a
// version had changed). The idle clock (a) only moves forward: gateways move
// it without a version (see TOUCH).
const COMPARE_AND_SET = `
local per = 2 + 2 * ${FIELDS}
for k = 1, #KEYS do
  if (redis.call('HGET', KEYS[k], 'v') or '0') ~= ARGV[(k - 1) * per + 3] then return 0 end
end
local v = redis.call('INCR', ARGV[2])
for k = 1, #KEYS do
  local base = (k - 1) * per + 2
  if ARGV[base + 2] == '1' then
    for i = base + 3, base + per, 2 do
      local field, value = ARGV[i], ARGV[i + 1]
      if field == 'a' then
        if value ~= '' and tonumber(value) > tonumber(redis.call('HGET', KEYS[k], 'a') or '0') then redis.call('HSET', KEYS[k], 'a', value) end
      elseif value == '' then redis.call('HDEL', KEYS[k], field) else redis.call('HSET', KEYS[k], field, value) end
    end
    redis.call('HSET', KEYS[k], 'v', v)
    redis.call('PUBLISH', ARGV[1], 'v ' .. KEYS[k] .. ' ' .. v)
  end
end
return v
`;

// A ride of a linger moves the token's idle clock forward, without a version:
// it changes no decision's outcome but an idle timeout's, and must not make
// logins on other gateways decide again.
const TOUCH = `
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('HGET', KEYS[1], 'a') or '0') < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'a', ARGV[1])
end
return 1
`;

interface Scripts {
  otpgateCompareAndSet(keyCount: number, ...keysAndArgs: string[]): Promise<number>;
  otpgateTouch(key: string, at: string): Promise<number>;
}

const text = (n: number | undefined): string => (n === undefined ? '' : String(n));
const fieldsOf = (s: StoredState): string[] => [
  'c', String(s.counter), 'f', String(s.failures), 'l', text(s.lockedAt), 'o', s.lastOtp ?? '', 't', text(s.lastTime),
  'i', s.lastIp ?? '', 'a', text(s.lastActive), 'u', text(s.usedStep), 'r', s.retiredOtp ?? '',
];
const NOTHING = fieldsOf({ counter: 0, failures: 0 });

const num = (v: string | undefined): number | undefined => (v === undefined ? undefined : Number(v));

/** A hash as read (HGETALL) into a record. */
export function recordOf(h: Record<string, string>): StoredRecord {
  if (h.v === undefined) return { version: 0, state: undefined };
  const state: StoredState = {
    counter: Number(h.c ?? 0), failures: Number(h.f ?? 0), lockedAt: num(h.l), lastOtp: h.o, lastTime: num(h.t),
    lastIp: h.i, lastActive: num(h.a), usedStep: num(h.u), retiredOtp: h.r,
  };
  return { version: Number(h.v), state };
}

/** A throttle event as another gateway sent it, checked field by field. */
function isThrottleEvent(e: Record<string, unknown> | undefined): e is ThrottleEvent {
  if (typeof e?.login !== 'string') return false;
  if (e.type === 'forget') return true;
  if (typeof e.ip !== 'string') return false;
  return e.type === 'succeeded' || (e.type === 'failed' && typeof e.known === 'boolean' && typeof e.usual === 'boolean');
}

/** The events channel's message read, or undefined for one this version does not know. */
export function eventOf(message: string): StateEvent | undefined {
  if (message.startsWith('v ')) {
    const [, key, version] = message.split(' ');
    return key !== undefined && version !== undefined && /^\d+$/.test(version) ? { kind: 'version', key, version: Number(version) } : undefined;
  }
  if (message.startsWith('t ')) {
    try {
      const { from, event } = JSON.parse(message.slice(2)) as { from: unknown; event: Record<string, unknown> | undefined };
      return typeof from === 'string' && isThrottleEvent(event) ? { kind: 'throttle', from, event } : undefined;
    } catch {
      return undefined;
    }
  }
  return undefined;
}

/** Where version and throttle news for gateways with this key prefix go. */
export const channelOf = (prefix: string): string => `${prefix}events`;

// Key names are computed on every lingering request: cached per line object.
const keyNames = new WeakMap<TokenLine, string>();

export class RedisTokenStore {
  private readonly scripts: Scripts;
  /** where version and throttle news go */
  readonly channel: string;
  /** the one sequence every write's version comes from */
  private readonly sequence: string;

  constructor(private readonly redis: Redis, private readonly prefix: string) {
    redis.defineCommand('otpgateCompareAndSet', { lua: COMPARE_AND_SET });
    redis.defineCommand('otpgateTouch', { numberOfKeys: 1, lua: TOUCH });
    this.scripts = redis as unknown as Scripts;
    this.channel = channelOf(prefix);
    this.sequence = `${prefix}version`;
  }

  /** The token's key name: no login, PIN or key in it. */
  keyOf(token: TokenLine): string {
    let key = keyNames.get(token);
    if (key === undefined) {
      key = `${this.prefix}token:${createHash('sha256').update(`${token.login}\0${token.typeText}\0${token.keyHex}`).digest('hex')}`;
      keyNames.set(token, key);
    }
    return key;
  }

  /** A key name for a login that has no token: the same work and round trip as a real one. */
  decoyKeyOf(login: string): string {
    return `${this.prefix}token:${createHash('sha256').update(`${login}\0decoy`).digest('hex')}`;
  }

  async read(token: TokenLine): Promise<StoredRecord> {
    return recordOf(await this.redis.hgetall(this.keyOf(token)));
  }

  /** Several tokens' records in one round trip (not one snapshot: the compare-and-set checks that). */
  async readAll(keys: readonly string[]): Promise<StoredRecord[]> {
    if (keys.length === 1) return [recordOf(await this.redis.hgetall(keys[0] as string))];
    const pipeline = this.redis.pipeline();
    for (const key of keys) pipeline.hgetall(key);
    const results = (await pipeline.exec()) ?? [];
    return results.map(([err, h]) => {
      if (err) throw err;
      return recordOf(h as Record<string, string>);
    });
  }

  /** Write `next` if the token is still at `version`; false: someone else wrote first (read and decide again). */
  async compareAndSet(token: TokenLine, version: number, next: StoredState): Promise<boolean> {
    return (await this.compareAndSetAll([{ key: this.keyOf(token), version, next }])) > 0;
  }

  /**
   * All or nothing, for the lines one decision read: each line whose `next` is
   * given takes it, but only if every line is still at the version the decision
   * saw (a line without `next` is only checked). The written lines' new
   * version, or 0: decide again.
   */
  async compareAndSetAll(lines: readonly { key: string; version: number; next?: StoredState | undefined }[]): Promise<number> {
    const args = lines.flatMap((l) => (l.next === undefined
      ? [String(l.version), '0', ...NOTHING]
      : [String(l.version), '1', ...fieldsOf(l.next)]));
    return this.scripts.otpgateCompareAndSet(lines.length, ...lines.map((l) => l.key), this.channel, this.sequence, ...args);
  }

  /** Wait until `replicas` replicas have every write of this connection so far; how many did. */
  async replicated(replicas: number, timeoutMs: number): Promise<number> {
    return this.redis.wait(replicas, timeoutMs);
  }

  /** Move a token's idle clock forward to `at` (epoch seconds). */
  async touch(key: string, at: number): Promise<void> {
    await this.scripts.otpgateTouch(key, String(at));
  }

  /** Tell every gateway's throttle (`from`: this gateway, which has counted it already). */
  async publishThrottle(from: string, event: ThrottleEvent): Promise<void> {
    await this.redis.publish(this.channel, `t ${JSON.stringify({ from, event })}`);
  }
}
