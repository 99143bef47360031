// PINs stored hashed: scrypt (RFC 7914) in a PHC-style string,
// `$scrypt$ln=14,r=8,p=1$<salt>$<hash>` (base64 without padding), which carries
// its own parameters so they can be raised later without breaking old lines.
// mod_authn_otp and pam_oath compare the PIN field as plain text: a line with a
// hashed PIN works with otpgate only.
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';

export interface ScryptParams {
  /** log2 of scrypt's cost N */
  readonly ln: number;
  readonly r: number;
  readonly p: number;
}

export interface PinHash {
  readonly params: ScryptParams;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

/** N = 2^14, r = 8: 16 MiB and some tens of milliseconds per check (OWASP's scrypt minimum is 2^17 with r = 8 for passwords; a PIN guess at the gateway is throttled anyway). */
export const DEFAULT_SCRYPT: ScryptParams = { ln: 14, r: 8, p: 1 };

const PREFIX = '$scrypt$';
const SALT_BYTES = 16;
const HASH_BYTES = 32;
const FORMAT = /^\$scrypt\$ln=([1-9]\d?),r=([1-9]\d?),p=([1-9]\d?)\$([A-Za-z0-9+/]{22})\$([A-Za-z0-9+/]{43})$/;
/** A users file is trusted input, but a typo must not make every check allocate gigabytes. */
const MAX_MEMORY = 256 * 1024 * 1024;

const memoryOf = (p: ScryptParams): number => 128 * p.r * 2 ** p.ln;

/** A modular-crypt or PHC hash of any program (`$2y$...`, `$argon2id$...`, `$scrypt$...`). */
export const looksHashed = (field: string): boolean => /^\$[0-9a-z-]+\$/.test(field);

/** Does the stored PIN field hold a hash (rather than a plain PIN, `-` or `+`)? */
export const isHashedPin = (stored: string): boolean => stored.startsWith(PREFIX);

/** Parse a stored hash; undefined if it is not one this version can check. */
export function parsePinHash(stored: string): PinHash | undefined {
  const m = FORMAT.exec(stored);
  if (!m) return undefined;
  const params = { ln: Number(m[1]), r: Number(m[2]), p: Number(m[3]) };
  if (params.ln < 10 || params.ln > 22 || params.p > 16 || memoryOf(params) > MAX_MEMORY) return undefined;
  return { params, salt: Buffer.from(m[4] as string, 'base64'), hash: Buffer.from(m[5] as string, 'base64') };
}

const derive = (pin: string, salt: Buffer, params: ScryptParams): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    scrypt(pin, salt, HASH_BYTES, { N: 2 ** params.ln, r: params.r, p: params.p, maxmem: memoryOf(params) + 1024 * 1024 },
      (err, key) => (err ? reject(err) : resolve(key)));
  });

const b64 = (b: Buffer): string => b.toString('base64').replace(/=+$/, '');

/** Hash a PIN for the users file (runs in the thread pool). */
export async function hashPin(pin: string, params: ScryptParams = DEFAULT_SCRYPT, salt: Buffer = randomBytes(SALT_BYTES)): Promise<string> {
  const hash = await derive(pin, salt, params);
  const field = `${PREFIX}ln=${params.ln},r=${params.r},p=${params.p}$${b64(salt)}$${b64(hash)}`;
  // Never write a hash the gateway would refuse as malformed (salt length, cost bounds).
  if (parsePinHash(field) === undefined) throw new Error('scrypt parameters or salt outside what the users file accepts');
  return field;
}

/** Does `typed` hash to the stored value? Constant-time comparison of the digests. */
export async function verifyPin(stored: PinHash, typed: string): Promise<boolean> {
  const hash = await derive(typed, stored.salt, stored.params);
  return timingSafeEqual(hash, stored.hash);
}
