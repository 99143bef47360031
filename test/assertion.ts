// The signed identity assertion: what a backend verifies, and the key files it refuses.
import t from 'tap';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import { AssertionKeyError, assertionSigner, type AssertionConfig } from '../src/assertion.js';
import { tempDir } from './lib/harness.js';

const NOW = 1_800_000_000;

function ed25519Files(dir: string): { privateFile: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privateFile = join(dir, 'assertion-key.pem');
  writeFileSync(privateFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return { privateFile, publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

const configOf = (keyFile: string, algorithm: 'EdDSA' | 'HS256'): AssertionConfig =>
  ({ header: 'X-Otpgate-Assertion', algorithm, keyFile, audience: 'helpdesk', issuer: 'otpgate', ttlSeconds: 60 });

t.test('EdDSA: a backend verifies it with the public key; it expires after ttlSeconds', async (t) => {
  const dir = tempDir(t);
  const { privateFile, publicPem } = ed25519Files(dir);
  const jwt = await assertionSigner(configOf(privateFile, 'EdDSA'))('jürgen', NOW + 0.7);
  t.match(decodeProtectedHeader(jwt), { alg: 'EdDSA', typ: 'JWT' });
  const { createPublicKey } = await import('node:crypto');
  const key = createPublicKey(publicPem);
  const { payload } = await jwtVerify(jwt, key, { audience: 'helpdesk', issuer: 'otpgate', currentDate: new Date((NOW + 30) * 1000) });
  t.match(payload, { sub: 'jürgen', aud: 'helpdesk', iss: 'otpgate', iat: NOW, exp: NOW + 60 });
  t.match(payload.jti, /^[0-9a-f-]{36}$/);
  await t.rejects(jwtVerify(jwt, key, { audience: 'helpdesk', currentDate: new Date((NOW + 61) * 1000) }), errors.JWTExpired);
  await t.rejects(jwtVerify(jwt, key, { audience: 'another-app', currentDate: new Date(NOW * 1000) }), errors.JWTClaimValidationFailed);
  const other = createPublicKey(ed25519Files(tempDir(t)).publicPem);
  await t.rejects(jwtVerify(jwt, other, { currentDate: new Date(NOW * 1000) }), errors.JWSSignatureVerificationFailed,
    'a token signed with another key is refused');
  const second = await assertionSigner(configOf(privateFile, 'EdDSA'))('jürgen', NOW);
  t.not(decodeJwt(second).jti, payload.jti, 'every assertion has its own jti');
});

t.test('HS256: a shared secret of at least 32 bytes (a trailing newline is not part of it)', async (t) => {
  const dir = tempDir(t);
  const secret = randomBytes(48).toString('base64');
  const keyFile = join(dir, 'secret');
  writeFileSync(keyFile, `${secret}\n`, { mode: 0o600 });
  const jwt = await assertionSigner(configOf(keyFile, 'HS256'))('alice', NOW);
  const { payload } = await jwtVerify(jwt, Buffer.from(secret, 'latin1'), { audience: 'helpdesk', currentDate: new Date(NOW * 1000) });
  t.equal(payload.sub, 'alice');
  const short = join(dir, 'short');
  writeFileSync(short, 'too short\n');
  t.throws(() => assertionSigner(configOf(short, 'HS256')), new AssertionKeyError(`${short}: an HS256 secret needs at least 32 bytes (it has 9)`));
});

t.test('unusable key files: one line naming the file', async (t) => {
  const dir = tempDir(t);
  const missing = join(dir, 'missing.pem');
  t.throws(() => assertionSigner(configOf(missing, 'EdDSA')), { message: `${missing}: cannot read identityAssertion key (ENOENT)` });
  const garbage = join(dir, 'garbage.pem');
  writeFileSync(garbage, 'not a key');
  t.throws(() => assertionSigner(configOf(garbage, 'EdDSA')), { message: /^.*garbage\.pem: not a PEM private key/ });
  const rsa = join(dir, 'rsa.pem');
  writeFileSync(rsa, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  t.throws(() => assertionSigner(configOf(rsa, 'EdDSA')), { message: `${rsa}: EdDSA needs an Ed25519 key, this is rsa` });
});
