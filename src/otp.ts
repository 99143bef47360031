// OTP maths: pure functions of key, counter and time. No I/O, no clock.
import { createHash, createHmac } from 'node:crypto';
import { counterToBytes, dynamicTruncate, truncateDigits } from '@otplib/core';

export type Algorithm = 'HOTP' | 'MOTP';

export interface TokenType {
  readonly algorithm: Algorithm;
  /** seconds per step; 0 = event (counter) based */
  readonly stepSeconds: number;
  /** 1 to 10 */
  readonly digits: number;
}

/**
 * RFC 4226 HOTP. 10 digits yields the whole 31-bit value, zero padded, as
 * mod_authn_otp does. otplib's truncation steps around node:crypto's HMAC,
 * rather than its generateSync: that one validates its options on every call
 * (the window search makes several calls per login, and fresh logins are
 * computed under the users-file lock) and refuses keys under 16 bytes, which
 * legacy hardware tokens in mod_authn_otp files have.
 */
export function hotp(key: Uint8Array, counter: number, digits: number): string {
  return truncateDigits(dynamicTruncate(createHmac('sha1', key).update(counterToBytes(counter)).digest()), digits);
}

/**
 * Mobile-OTP (motp.sourceforge.net): the first DIGITS hex digits of
 * md5(counter || hex(key) || pin). The PIN is part of the hash, not typed before the code.
 */
export function motp(key: Uint8Array, pin: string, counter: number, digits: number): string {
  const hex = Buffer.from(key).toString('hex');
  return createHash('md5').update(`${counter}${hex}${pin}`).digest('hex').slice(0, digits);
}

export function codeAt(type: TokenType, key: Uint8Array, pin: string, counter: number): string {
  return type.algorithm === 'MOTP' ? motp(key, pin, counter, type.digits) : hotp(key, counter, type.digits);
}

/**
 * Constant-time comparison of two codes; only the (public) length may leak. A
 * loop without early exit rather than timingSafeEqual: that one needs two
 * buffers made per comparison, and lingering requests compare on every request.
 */
export function codesEqual(a: string, b: string): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

/** The RFC 6238 time step containing `nowSeconds`. */
export function stepAt(nowSeconds: number, stepSeconds: number): number {
  return Math.floor(nowSeconds / stepSeconds);
}

export interface Match {
  /** the counter or time step whose code matched */
  readonly counter: number;
}

/**
 * Event tokens: the code must belong to one of counter .. counter+maxOffset
 * (RFC 4226 section 7.4 look-ahead window). Every candidate is computed, so the
 * time taken does not depend on where (or whether) the code matched.
 */
export function findEventCounter(
  type: TokenType, key: Uint8Array, pin: string, code: string, counter: number, maxOffset: number,
): Match | undefined {
  let found: Match | undefined;
  for (let c = counter; c <= counter + maxOffset; c++) {
    if (c < 0) continue;
    if (codesEqual(codeAt(type, key, pin, c), code) && found === undefined) found = { counter: c };
  }
  return found;
}

/**
 * Time tokens: steps within plus/minus maxOffset of now + drift. When the stored
 * drift is below -maxOffset, the upper end is stretched to the real current step
 * so a token whose drift went stale can re-synchronise (mod_authn_otp since 1.1.4).
 * Steps at or before `notAfter` were already used and are never accepted again.
 */
export function findTimeStep(
  type: TokenType, key: Uint8Array, pin: string, code: string,
  nowSeconds: number, drift: number, maxOffset: number, notAfter: number | undefined,
): Match | undefined {
  const base = stepAt(nowSeconds, type.stepSeconds) + drift;
  const lo = -maxOffset;
  const hi = Math.max(maxOffset, -drift);
  // Try the expected step first, then outwards, so the smallest drift correction wins.
  const order: number[] = [0];
  for (let d = 1; d <= Math.max(-lo, hi); d++) {
    if (d <= hi) order.push(d);
    if (-d >= lo) order.push(-d);
  }
  let found: Match | undefined;
  for (const d of order) {
    const step = base + d;
    if (step < 0) continue;
    const used = notAfter !== undefined && step <= notAfter;
    if (codesEqual(codeAt(type, key, pin, step), code) && !used && found === undefined) found = { counter: step };
  }
  return found;
}

/** Which step, near `aroundStep`, produced `code`? (for lines whose field 5 is not a drift) */
export function locateStep(
  type: TokenType, key: Uint8Array, pin: string, code: string, aroundStep: number, radius: number,
): number | undefined {
  let latest: number | undefined;
  for (let s = aroundStep - radius; s <= aroundStep + radius; s++) {
    if (s >= 0 && codesEqual(codeAt(type, key, pin, s), code)) latest = s;
  }
  return latest;
}
