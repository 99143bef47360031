// A token's state when it lives in Redis (store: redis): what Redis holds,
// unless the users file is ahead of it. Pure: the shell reads Redis and the file.
//
// Switching a deployment from file to redis needs no step of its own: a token
// Redis does not know yet starts from the file's line, and a file that is ahead
// (an event counter further on, a later time step used: a gateway ran on the
// file meanwhile) wins over Redis. So no counter Redis or the file has ever
// reached goes back, and no code used under either works again.
import { isLocked, lastUsedStep, type Policy, type TokenState } from './decision.js';
import { lineState, type LineState, type TokenLine } from './usersFileFormat.js';

/** Everything of a token's state but its spec (the file's line). */
export type StoredState = Omit<TokenState, 'spec'>;

/** A line's state (by default the file's own) as the decision sees it. */
export function fileStateOf(token: TokenLine, s: LineState = lineState(token)): TokenState {
  return { spec: token, counter: s.counter, failures: s.failures, lastOtp: s.lastOtp, lastTime: s.lastTime, lastIp: s.lastIp };
}

/** What a line can record of a state. */
export const lineStateOf = (s: TokenState): LineState => ({
  counter: s.counter, failures: s.failures,
  ...(s.lastOtp !== undefined ? { lastOtp: s.lastOtp } : {}),
  ...(s.lastTime !== undefined ? { lastTime: s.lastTime } : {}),
  ...(s.lastIp !== undefined ? { lastIp: s.lastIp } : {}),
});

/** Has the file seen a later code than `stored` (the file's line then wins)? */
export function fileIsAhead(token: TokenLine, stored: StoredState, maxOffset: number): boolean {
  if (token.type.stepSeconds === 0) return token.counter > stored.counter;
  const file = lastUsedStep(fileStateOf(token), maxOffset);
  const redis = lastUsedStep({ spec: token, ...stored }, maxOffset);
  return file !== undefined && (redis === undefined || file > redis);
}

export interface Effective {
  readonly state: TokenState;
  /**
   * the state must be written even if the decision changes nothing: a lock
   * whose start nobody recorded starts now, and must start now for everyone
   */
  readonly mustWrite: boolean;
}

/** The state a decision works on: Redis's record (undefined: none yet) or the file's line, whichever is ahead. */
export function effectiveState(token: TokenLine, stored: StoredState | undefined, now: number, policy: Policy): Effective {
  const state: TokenState = stored === undefined || fileIsAhead(token, stored, policy.maxOffset)
    ? fileStateOf(token) : { spec: token, ...stored };
  // A count at the lock (from the file, or mod_authn_otp's forever lock) says
  // nothing of when the lock began: it begins now, as the file store does.
  if (state.lockedAt === undefined && policy.maxFailures > 0 && state.failures >= policy.maxFailures && isLocked(state, now, policy)) {
    return { state: { ...state, lockedAt: Math.floor(now) }, mustWrite: true };
  }
  return { state, mustWrite: false };
}

/** What Redis keeps of a state (the spec stays in the file). */
export function storedOf(s: TokenState): StoredState {
  const { spec: _spec, ...rest } = s;
  return rest;
}
