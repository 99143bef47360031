// The signed identity assertion: besides the plain identity header, a short-lived
// JWT that a backend (or a middleware in front of it) can verify, so a request
// that reached the helpdesk without passing the gateway carries no identity.
import { createPrivateKey, createSecretKey, randomUUID, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { SignJWT } from 'jose';

export interface AssertionConfig {
  readonly header: string;
  readonly algorithm: 'EdDSA' | 'HS256';
  /** EdDSA: an Ed25519 private key (PEM, PKCS#8); HS256: the shared secret, at least 32 bytes */
  readonly keyFile: string;
  readonly audience: string;
  readonly issuer: string;
  readonly ttlSeconds: number;
}

export type Signer = (login: string, now: number) => Promise<string>;

/** A key file that cannot be used, as one line naming it. */
export class AssertionKeyError extends Error {}

function loadKey(config: AssertionConfig): KeyObject {
  let bytes: Buffer;
  try {
    bytes = readFileSync(config.keyFile);
  } catch (err) {
    throw new AssertionKeyError(`${config.keyFile}: cannot read identityAssertion key (${(err as NodeJS.ErrnoException).code ?? 'error'})`);
  }
  if (config.algorithm === 'HS256') {
    // A trailing newline from `openssl rand -base64 48 > file` is not part of the secret.
    const secret = Buffer.from(bytes.toString('latin1').replace(/\r?\n$/, ''), 'latin1');
    if (secret.length < 32) throw new AssertionKeyError(`${config.keyFile}: an HS256 secret needs at least 32 bytes (it has ${secret.length})`);
    return createSecretKey(secret);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(bytes);
  } catch {
    throw new AssertionKeyError(`${config.keyFile}: not a PEM private key (openssl genpkey -algorithm ed25519)`);
  }
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new AssertionKeyError(`${config.keyFile}: EdDSA needs an Ed25519 key, this is ${key.asymmetricKeyType ?? 'unknown'}`);
  }
  return key;
}

/** Load the key now (a bad one fails the start or the reload) and return the signer. */
export function assertionSigner(config: AssertionConfig): Signer {
  const key = loadKey(config);
  return (login, now) => {
    const iat = Math.floor(now);
    return new SignJWT({})
      .setProtectedHeader({ alg: config.algorithm, typ: 'JWT' })
      .setSubject(login)
      .setIssuer(config.issuer)
      .setAudience(config.audience)
      .setIssuedAt(iat)
      .setExpirationTime(iat + config.ttlSeconds)
      .setJti(randomUUID())
      .sign(key);
  };
}
