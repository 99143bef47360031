import t from 'tap';
import { DEFAULT_SCRYPT, hashPin, isHashedPin, parsePinHash, verifyPin, type PinHash } from '../src/pinHash.js';
import { parseLine } from '../src/usersFileFormat.js';

// Cheap parameters where the cost is not what is tested (2^10: about a millisecond).
const FAST = { ln: 10, r: 8, p: 1 };
const SALT = Buffer.from('000102030405060708090a0b0c0d0e0f', 'hex');

const parsed = (stored: string): PinHash => {
  const h = parsePinHash(stored);
  if (h === undefined) throw new Error(`not a hash this version reads: ${stored}`);
  return h;
};

t.test('hashPin and parsePinHash round trip; the right PIN verifies, others do not', async (t) => {
  const stored = await hashPin('4711', FAST);
  t.match(stored, /^\$scrypt\$ln=10,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
  t.ok(isHashedPin(stored));
  const h = parsed(stored);
  t.same(h.params, FAST);
  t.equal(h.salt.length, 16);
  t.equal(h.hash.length, 32);
  t.equal(await verifyPin(h, '4711'), true);
  for (const wrong of ['4712', '', '47110', ' 4711', '4711 ']) t.equal(await verifyPin(h, wrong), false, JSON.stringify(wrong));
  t.not(await hashPin('4711', FAST), stored, 'a fresh random salt each time');
  t.same(parsed(await hashPin('x')).params, DEFAULT_SCRYPT, 'the default parameters');
});

t.test('a known vector: the same PIN and salt always give the same field', async (t) => {
  // Hard-coded: a change of encoding or parameters would break every stored PIN.
  t.equal(await hashPin('1234', DEFAULT_SCRYPT, SALT), '$scrypt$ln=14,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$WN+87vPtGO4o1fwEttloKNIwtqGZqnsfkSCWNJhrpMg');
  // RFC 7914 section 12 (N = 16384, r = 8, p = 1): the first 32 bytes of its 64-byte output.
  const rfc = Buffer.from('7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2', 'hex');
  const h = { params: { ln: 14, r: 8, p: 1 }, salt: Buffer.from('SodiumChloride'), hash: rfc };
  t.equal(await verifyPin(h, 'pleaseletmein'), true);
  t.equal(await verifyPin(h, 'pleaseletmeim'), false);
  // Its 14-byte salt is not what the users file holds: hashPin never writes a field the gateway would refuse.
  await t.rejects(hashPin('pleaseletmein', { ln: 14, r: 8, p: 1 }, Buffer.from('SodiumChloride')), /outside what the users file accepts/);
});

t.test('fields this version cannot check are rejected', async (t) => {
  const salt = 'AAECAwQFBgcICQoLDA0ODw';
  const hash = 'WN+87vPtGO4o1fwEttloKNIwtqGZqnsfkSCWNJhrpMg';
  t.ok(parsePinHash(`$scrypt$ln=14,r=8,p=1$${salt}$${hash}`), 'the well-formed field');
  const bad: [string, string][] = [
    [`$scrypt$ln=14,r=8,p=1$${salt.slice(1)}$${hash}`, 'salt one character short'],
    [`$scrypt$ln=14,r=8,p=1$${salt}A$${hash}`, 'salt one character long'],
    [`$scrypt$ln=14,r=8,p=1$${salt}$${hash}A`, 'hash one character long'],
    [`$scrypt$ln=14,r=8,p=1$${salt}==$${hash}=`, 'base64 padding'],
    [`$scrypt$ln=14,r=8,p=1$${salt.slice(0, -1)}-$${hash}`, 'base64url, not base64'],
    [`$scrypt$ln=9,r=8,p=1$${salt}$${hash}`, 'ln below 10'],
    [`$scrypt$ln=23,r=8,p=1$${salt}$${hash}`, 'ln above 22'],
    [`$scrypt$ln=014,r=8,p=1$${salt}$${hash}`, 'a leading zero'],
    [`$scrypt$ln=18,r=16,p=1$${salt}$${hash}`, '512 MiB of memory'],
    [`$scrypt$ln=20,r=8,p=1$${salt}$${hash}`, '1 GiB of memory'],
    [`$scrypt$ln=14,r=8,p=17$${salt}$${hash}`, 'p above 16'],
    [`$scrypt$ln=14,r=8$${salt}$${hash}`, 'p missing'],
    [`$scrypt$ln=14,r=8,p=1$${salt}`, 'hash missing'],
    [`$scrypt$ln=14,r=8,p=1$${salt}$`, 'hash empty'],
    [`$scrypt$${salt}$${hash}`, 'parameters missing'],
    ['$scrypt$', 'nothing after the prefix'],
    [`$scrypt$ln=14,r=8,p=1$${salt}$${hash}$`, 'a part too many'],
    [`$scrypt$p=1,r=8,ln=14$${salt}$${hash}`, 'parameters out of order'],
    [`$argon2id$v=19$m=65536,t=3,p=4$${salt}$${hash}`, 'another algorithm'],
  ];
  for (const [field, what] of bad) t.equal(parsePinHash(field), undefined, what);
  await t.rejects(hashPin('1', FAST, Buffer.from('SodiumChloride')), /outside what the users file accepts/,
    'a salt other than 16 bytes would make a field this version does not read: hashPin refuses it');
});

t.test('the field fits mod_authn_otp\'s 128-character PIN field, and a line holding it parses', async (t) => {
  const stored = await hashPin('a long passphrase as a PIN, longer than the field itself could hold'.repeat(3));
  t.ok(stored.length < 128, `${stored.length} characters`);
  const longest = `$scrypt$ln=22,r=99,p=16$${'A'.repeat(22)}$${'A'.repeat(43)}`;
  t.ok(longest.length < 128, `the longest field the pattern allows: ${longest.length} characters`);
  const line = parseLine(`HOTP/T30 ann ${stored} 3132333435363738393031323334353637383930`, 1);
  t.equal(line.kind, 'token');
  if (line.kind === 'token') t.equal(line.token.pin, stored);
});
