import t from 'tap';
import { decide, isLocked, lockOf, lockSeconds, lastUsedStep, pinMatches, type Policy, type TokenState, type Verdict } from '../src/decision.js';
import { parseTokenType } from '../src/usersFileFormat.js';
import { motp } from '../src/otp.js';
import { rfcHotp, rfcTotp } from './lib/harness.js';

const KEY = '3132333435363738393031323334353637383930';
const NOW = 1_700_000_000; // a step boundary for 30 s steps? 1_700_000_000 / 30 = 56666666.67
const STEP = Math.floor(NOW / 30);
const policy: Policy = { maxOffset: 4, maxLinger: 600, logoutOnIpChange: false, maxFailures: 5, lockoutSeconds: 300, maxLockoutSeconds: 0, permanentLockAfter: 0 };

function line(type: string, pin: string, fields: Partial<TokenState> = {}, liboathLayout = false): TokenState {
  const parsed = parseTokenType(type);
  if (!parsed) throw new Error(type);
  return { spec: { type: parsed, pin, key: Buffer.from(KEY, 'hex'), liboathLayout }, counter: 0, failures: 0, ...fields };
}

const at = (password: string, extra: { ip?: string; now?: number; logout?: boolean; usualIp?: boolean } = {}) =>
  ({ password, ip: extra.ip ?? '10.0.0.1', now: extra.now ?? NOW, ...(extra.logout ? { logout: true } : {}), ...(extra.usualIp ? { usualIp: true } : {}) });

const changed = (v: Verdict, i = 0): TokenState => {
  const s = v.changes.get(i);
  if (!s) throw new Error(`line ${i} did not change`);
  return s;
};

t.test('event token: PIN + code logs in and advances the counter past the used one', async (t) => {
  const s = line('HOTP', '1234', { counter: 3 });
  const v = decide([s], at(`1234${rfcHotp(KEY, 5)}`), policy);
  t.match(v, { granted: true, reason: 'ok', line: 0, counted: false });
  t.match(changed(v), { counter: 6, failures: 0, lastOtp: rfcHotp(KEY, 5), lastTime: NOW, lastIp: '10.0.0.1' });
});

t.test('event token: look-ahead limit and codes behind the counter', async (t) => {
  const s = line('HOTP', '1234', { counter: 3 });
  t.match(decide([s], at(`1234${rfcHotp(KEY, 7)}`), policy), { granted: true }, 'counter + maxOffset');
  t.match(decide([s], at(`1234${rfcHotp(KEY, 8)}`), policy), { granted: false, reason: 'bad_otp', counted: true });
  t.match(decide([s], at(`1234${rfcHotp(KEY, 2)}`), policy), { granted: false, reason: 'bad_otp' }, 'already used');
});

t.test('wrong PIN or wrong code: a failure that consumes nothing', async (t) => {
  const s = line('HOTP', '1234', { counter: 0 });
  const badPin = decide([s], at(`9999${rfcHotp(KEY, 0)}`), policy);
  t.match(badPin, { granted: false, reason: 'bad_pin', counted: true });
  t.match(changed(badPin), { counter: 0, failures: 1, lastOtp: undefined });
  const badCode = decide([s], at('1234000000'), policy);
  t.match(badCode, { granted: false, reason: 'bad_otp', counted: true });
  t.match(changed(badCode), { counter: 0, failures: 1 });
  t.match(decide([s], at('12'), policy), { reason: 'bad_otp', counted: false }, 'too short to hold a code: not a guess');
});

t.test('PIN "-" means the code alone; PIN "+" never logs in without a PIN provider', async (t) => {
  t.match(decide([line('HOTP', '-')], at(rfcHotp(KEY, 0)), policy), { granted: true });
  t.match(decide([line('HOTP', '-')], at(`1${rfcHotp(KEY, 0)}`), policy), { granted: false, reason: 'bad_pin' });
  t.match(decide([line('HOTP', '+')], at(`anything${rfcHotp(KEY, 0)}`), policy), { granted: false, reason: 'bad_pin' });
  t.match(decide([line('HOTP', '+')], at(rfcHotp(KEY, 0)), policy), { granted: false });
});

t.test('pinMatches is exact', async (t) => {
  t.ok(pinMatches('1234', '1234'));
  t.notOk(pinMatches('1234', '12345'));
  t.notOk(pinMatches('1234', ''));
  t.ok(pinMatches('-', ''));
  t.notOk(pinMatches('+', '+'));
  t.notOk(pinMatches('Pin', 'pin'));
});

t.test('time token: window, drift tracking, and no reuse of a used step', async (t) => {
  const s = line('HOTP/T30', '1', { counter: 0 });
  const code = rfcHotp(KEY, STEP + 2);
  const v = decide([s], at(`1${code}`), policy);
  t.match(v, { granted: true, reason: 'ok' });
  t.match(changed(v), { counter: 2, lastOtp: code, usedStep: STEP + 2 }, 'drift stored as used step - current step');
  const after = changed(v);
  t.equal(lastUsedStep(after, 4), STEP + 2, 'derivable from the time and the drift');
  // Outside the linger, neither that code nor an earlier step's code is accepted.
  const later = NOW + 700;
  t.match(decide([after], at(`1${code}`, { now: later }), policy), { granted: false, counted: false }, 'replay after linger');
  t.match(decide([{ ...after, usedStep: undefined }], at(`1${rfcHotp(KEY, STEP + 1)}`, { now: NOW + 5 }), policy),
    { granted: false, reason: 'bad_otp' }, 'an earlier step than the used one');
  t.match(decide([after], at(`1${rfcHotp(KEY, STEP + 3)}`, { now: NOW + 5 }), policy), { granted: true }, 'a later step');
});

t.test('time token: the drift moves the window', async (t) => {
  const s = line('HOTP/T30', '-', { counter: 10 });
  t.match(decide([s], at(rfcHotp(KEY, STEP + 12)), policy), { granted: true });
  t.match(decide([s], at(rfcHotp(KEY, STEP)), policy), { granted: false });
  const stale = line('HOTP/T30', '-', { counter: -50 });
  const v = decide([stale], at(rfcHotp(KEY, STEP)), policy);
  t.match(v, { granted: true }, 'a stale negative drift re-synchronises at the real step');
  t.equal(changed(v).counter, 0);
});

t.test('time token in a liboath 7-field line: field 5 is bookkeeping, the last step is located', async (t) => {
  const s = line('HOTP/T30', '-', { counter: 7, lastOtp: rfcHotp(KEY, STEP - 1), lastTime: NOW - 30 }, true);
  t.equal(lastUsedStep(s, 4), STEP - 1);
  t.match(decide([s], at(rfcHotp(KEY, STEP - 1)), policy), { granted: false }, 'a pam_oath login is used, never a linger');
  const v = decide([s], at(rfcHotp(KEY, STEP + 1)), policy);
  t.match(v, { granted: true });
  t.equal(changed(v).counter, 8, 'liboath bookkeeping: old value + |steps off|');
});

t.test('digits 1..10 and MOTP', async (t) => {
  t.match(decide([line('HOTP/E/8', '-')], at(rfcHotp(KEY, 0, 8)), policy), { granted: true });
  t.match(decide([line('HOTP/E/10', 'x')], at(`x${rfcHotp(KEY, 1, 10)}`), policy), { granted: true });
  t.match(decide([line('HOTP/E/1', 'x')], at(`x${rfcHotp(KEY, 0, 1)}`), policy), { granted: true });
  const m = line('MOTP', '4321');
  const code = motp(Buffer.from(KEY, 'hex'), '4321', Math.floor(NOW / 10), 6);
  const first = decide([m], at(code), policy);
  t.match(first, { granted: true }, 'MOTP: the code alone, the PIN is hashed in');
  t.match(decide([changed(first)], at(code, { now: NOW + 5 }), { ...policy, maxLinger: 0 }), { granted: false }, 'MOTP codes are single use');
  t.match(decide([line('MOTP', '4321')], at(code.toUpperCase()), policy), { granted: true }, 'hex case-insensitive');
  t.match(decide([line('MOTP', '+')], at(code), policy), { granted: false });
});

t.test('lingering: the same PIN+code within maxLinger of first use', async (t) => {
  const used = line('HOTP', '1', { counter: 6, lastOtp: rfcHotp(KEY, 5), lastTime: NOW - 100, lastIp: '10.0.0.1' });
  const v = decide([used], at(`1${rfcHotp(KEY, 5)}`), policy);
  t.match(v, { granted: true, reason: 'linger' });
  t.match(changed(v), { counter: 6, lastTime: NOW - 100, lastActive: NOW }, 'nothing consumed, idle clock moves');
  t.match(decide([used], at(`1${rfcHotp(KEY, 5)}`, { now: NOW + 500 }), policy), { granted: false, counted: false },
    'linger counted from first use, not sliding');
  t.match(decide([used], at(`2${rfcHotp(KEY, 5)}`), policy), { granted: false, reason: 'bad_pin' }, 'PIN still checked');
  t.match(decide([used], at(`1${rfcHotp(KEY, 5)}`, { ip: '10.9.9.9' }), policy), { granted: true }, 'other IP allowed by default');
  t.match(decide([used], at(`1${rfcHotp(KEY, 5)}`, { ip: '10.9.9.9' }), { ...policy, logoutOnIpChange: true }),
    { granted: false }, 'logoutOnIpChange');
  t.match(decide([used], at(`1${rfcHotp(KEY, 5)}`), { ...policy, maxLinger: 0 }), { granted: false }, 'maxLinger 0: no linger');
  t.match(decide([{ ...used, lastTime: NOW + 60 }], at(`1${rfcHotp(KEY, 5)}`), policy), { granted: false }, 'a future time is not trusted');
});

t.test('maxIdle slides with activity; whichever limit comes first ends the linger', async (t) => {
  const idle = { ...policy, maxIdle: 60 };
  const used = line('HOTP', '1', { counter: 6, lastOtp: rfcHotp(KEY, 5), lastTime: NOW, lastIp: '10.0.0.1' });
  const pw = `1${rfcHotp(KEY, 5)}`;
  t.match(decide([used], at(pw, { now: NOW + 70 }), idle), { granted: false }, 'idle too long');
  let s = used;
  for (let now = NOW + 50; now < NOW + 600; now += 50) {
    const v = decide([s], at(pw, { now }), idle);
    t.equal(v.granted, true, `active at +${now - NOW}s`);
    s = changed(v);
  }
  t.match(decide([s], at(pw, { now: NOW + 600 }), idle), { granted: false }, 'maxLinger still ends it');
});

t.test('a pam_oath-recorded last OTP (no IP) never lingers', async (t) => {
  const s = line('HOTP', '1', { counter: 6, lastOtp: rfcHotp(KEY, 5), lastTime: NOW - 10 });
  t.match(decide([s], at(`1${rfcHotp(KEY, 5)}`), policy), { granted: false, counted: false });
});

t.test('an empty password from the lingering IP logs out', async (t) => {
  const used = line('HOTP', '1', { counter: 6, lastOtp: rfcHotp(KEY, 5), lastTime: NOW - 100, lastIp: '10.0.0.1' });
  const v = decide([used], at(''), policy);
  t.match(v, { granted: false, reason: 'logout' });
  t.match(changed(v), { lastOtp: undefined, lastTime: undefined, lastIp: undefined, retiredOtp: rfcHotp(KEY, 5), counter: 6 });
  t.match(decide([changed(v)], at(`1${rfcHotp(KEY, 5)}`), policy), { granted: false, counted: false },
    'the retired code does not log in again and a browser resending it is not a guess');
  t.match(decide([used], at('', { ip: '10.0.0.2' }), policy), { reason: 'bad_otp', counted: false }, 'other IP: nothing ends');
  t.equal(decide([used], at('', { ip: '10.0.0.2' }), policy).changes.size, 0);
});

t.test('logout path: ends the linger the credentials ride, consumes no fresh code', async (t) => {
  const used = line('HOTP/T30', '1', { counter: 0, lastOtp: rfcTotp(KEY, NOW - 100), lastTime: NOW - 100, lastIp: '10.0.0.1' });
  const v = decide([used], at(`1${rfcTotp(KEY, NOW - 100)}`, { logout: true }), policy);
  t.match(v, { granted: false, reason: 'logout' });
  const out = changed(v);
  t.match(out, { lastOtp: rfcTotp(KEY, NOW - 100), lastTime: NOW - 100, lastIp: undefined },
    'a time token keeps its last OTP and time (the used step survives a restart), not the IP');
  t.equal(out.usedStep, Math.floor((NOW - 100) / 30), 'the used step is remembered');
  t.match(decide([{ ...out, usedStep: undefined, retiredOtp: undefined }], at(`1${rfcTotp(KEY, NOW - 100)}`, { now: NOW + 5 }), policy),
    { granted: false }, 'from the file alone (a restart), the logged-out code is refused');
  const fresh = decide([used], at(`1${rfcTotp(KEY, NOW)}`, { logout: true }), policy);
  t.match(fresh, { granted: false, reason: 'logout' });
  t.equal(fresh.changes.size, 0, 'a fresh code is not consumed by a logout');
  t.equal(decide([used], at('1000000', { logout: true }), policy).changes.size, 0, 'wrong credentials end nothing');
  t.match(decide([out], at(`1${rfcTotp(KEY, NOW - 100)}`), policy), { granted: false }, 'the logged-out code is dead');
});

t.test('liboath-layout line: logout keeps the last OTP in the file, drops the linger', async (t) => {
  const used = line('HOTP', '1', { counter: 6, lastOtp: rfcHotp(KEY, 5), lastTime: NOW - 10, lastIp: '10.0.0.1' }, true);
  const v = decide([used], at(''), policy);
  t.match(changed(v), { lastOtp: rfcHotp(KEY, 5), lastTime: NOW - 10, lastIp: undefined });
});

t.test('failures count up and lock; a lock ends by itself; success resets', async (t) => {
  let s = line('HOTP', '1');
  for (let i = 1; i <= 5; i++) {
    const v = decide([s], at('1000000'), policy);
    t.match(v, { reason: 'bad_otp', counted: true });
    s = changed(v);
    t.equal(s.failures, i);
  }
  t.equal(s.lockedAt, NOW);
  t.ok(isLocked(s, NOW + 299, policy));
  const locked = decide([s], at(`1${rfcHotp(KEY, 0)}`, { now: NOW + 10 }), policy);
  t.match(locked, { granted: false, reason: 'locked' });
  t.equal(locked.changes.size, 0, 'a locked user consumes nothing and counts nothing');
  t.notOk(isLocked(s, NOW + 300, policy));
  const ok = decide([s], at(`1${rfcHotp(KEY, 0)}`, { now: NOW + 300 }), policy);
  t.match(ok, { granted: true });
  t.match(changed(ok), { failures: 0, lockedAt: undefined });
  const again = decide([s], at('1000000', { now: NOW + 300 }), policy);
  t.match(changed(again), { failures: 6, lockedAt: NOW + 300 }, 'a failure after the lock ends locks again');
});

t.test('lockoutSeconds 0 locks until an admin clears the count; maxFailures 0 never locks', async (t) => {
  const s = line('HOTP', '1', { failures: 5, lockedAt: NOW - 100_000 });
  t.ok(isLocked(s, NOW, { ...policy, lockoutSeconds: 0 }));
  t.notOk(isLocked(s, NOW, { ...policy, maxFailures: 0 }));
  t.ok(isLocked({ ...s, lockedAt: undefined }, NOW, policy), 'unknown start of a lock: locked (the caller records it)');
  const counted = decide([line('HOTP', '1', { failures: 99 })], at('1000000'), { ...policy, maxFailures: 0 });
  t.equal(changed(counted).failures, 100, 'failures are counted even without a limit');
});

t.test('repeated locks grow, up to maxLockoutSeconds; permanentLockAfter failures lock until an admin clears them', async (t) => {
  const growing = { ...policy, maxLockoutSeconds: 3600, permanentLockAfter: 100 };
  t.same([5, 6, 7, 8, 9, 10, 50].map((f) => lockSeconds(f, growing)), [300, 600, 1200, 2400, 3600, 3600, 3600]);
  t.equal(lockSeconds(9, { ...growing, maxLockoutSeconds: 0 }), 300, 'maxLockoutSeconds 0: no growth');
  // One failure after the first lock ended: the next lock is twice as long.
  const s = line('HOTP', '1', { failures: 5, lockedAt: NOW - 300 });
  t.notOk(isLocked(s, NOW, growing), 'the first lock (300 s) is over');
  const after = changed(decide([s], at('1000000'), growing));
  t.match(after, { failures: 6, lockedAt: NOW });
  t.ok(isLocked(after, NOW + 599, growing));
  t.notOk(isLocked(after, NOW + 600, growing));
  t.equal(lockOf(line('HOTP', '1', { failures: 100, lockedAt: NOW - 100_000 }), NOW, growing), 'permanent');
  t.equal(lockOf(line('HOTP', '1', { failures: 99, lockedAt: NOW - 100_000 }), NOW, growing), 'none');
});

t.test('a timed lock does not hold from the account\'s usual IP; a permanent one does', async (t) => {
  const locked = line('HOTP', '1', { failures: 5, lockedAt: NOW - 10 });
  const good = `1${rfcHotp(KEY, 0)}`;
  t.match(decide([locked], at(good), policy), { granted: false, reason: 'locked' });
  const usual = decide([locked], at(good, { usualIp: true }), policy);
  t.match(usual, { granted: true, reason: 'ok' }, 'the owner logs in from where it usually does');
  t.match(changed(usual), { failures: 0, lockedAt: undefined }, 'and the count starts over');
  const wrong = decide([locked], at('1000000', { usualIp: true }), policy);
  t.match(changed(wrong), { failures: 6, lockedAt: NOW }, 'a failure from the usual IP still counts');
  const forever = line('HOTP', '1', { failures: 5, lockedAt: NOW - 10 });
  t.match(decide([forever], at(good, { usualIp: true }), { ...policy, lockoutSeconds: 0 }), { reason: 'locked' },
    'lockoutSeconds 0 (mod_authn_otp): locked everywhere until an admin clears it');
});

t.test('several lines per user: first line whose PIN and code match wins; only it is consumed', async (t) => {
  const a = line('HOTP', '1111', { counter: 0 });
  const b = line('HOTP', '2222', { counter: 0 });
  const v = decide([a, b], at(`2222${rfcHotp(KEY, 0)}`), policy);
  t.match(v, { granted: true, line: 1 });
  t.same([...v.changes.keys()], [1]);
  const both = decide([a, b], at(`1111${rfcHotp(KEY, 0)}`), policy);
  t.match(both, { granted: true, line: 0 });
  const fail = decide([a, b], at('1111000000'), policy);
  t.same([...fail.changes.keys()], [0, 1], 'a failure counts on every line tried');
  const reset = decide([a, { ...b, failures: 3 }], at(`1111${rfcHotp(KEY, 0)}`), policy);
  t.equal(reset.changes.get(1)?.failures, 0, 'success clears the other lines\' failures');
  const lockedFirst = decide([{ ...a, failures: 5, lockedAt: NOW }, b], at(`2222${rfcHotp(KEY, 0)}`), policy);
  t.match(lockedFirst, { granted: true, line: 1 }, 'a locked line is skipped');
});

t.test('the same brand-new code twice: the second rides the linger the first started', async (t) => {
  const s = line('HOTP', '1', { counter: 0 });
  const pw = `1${rfcHotp(KEY, 0)}`;
  const first = decide([s], at(pw), policy);
  t.match(first, { granted: true, reason: 'ok' });
  t.match(decide([changed(first)], at(pw), policy), { granted: true, reason: 'linger' });
});

t.test('a hashed PIN matches only when the caller verified it (verifiedPins)', async (t) => {
  const HASH = '$scrypt$ln=14,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$WN+87vPtGO4o1fwEttloKNIwtqGZqnsfkSCWNJhrpMg';
  const OTHER = '$scrypt$ln=14,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
  const s = line('HOTP', HASH, { counter: 0 });
  const pw = `1234${rfcHotp(KEY, 0)}`;
  const ok = decide([s], { ...at(pw), verifiedPins: new Set([HASH]) }, policy);
  t.match(ok, { granted: true, reason: 'ok' });
  t.match(changed(ok), { counter: 1, failures: 0 });
  for (const [what, verifiedPins] of [['not verified', undefined], ['none matched', new Set<string>()],
    ['another hash verified (the PIN changed since)', new Set([OTHER])]] as const) {
    const v = decide([s], { ...at(pw), ...(verifiedPins ? { verifiedPins } : {}) }, policy);
    t.match(v, { granted: false, reason: 'bad_pin', counted: true }, what);
    t.match(changed(v), { counter: 0, failures: 1, lastOtp: undefined }, `${what}: a failure, no code consumed`);
  }
  t.match(decide([s], { ...at(HASH + rfcHotp(KEY, 0)) }, policy), { reason: 'bad_pin' }, 'typing the hash itself is no PIN');
  const used = line('HOTP', HASH, { counter: 1, lastOtp: rfcHotp(KEY, 0), lastTime: NOW - 10, lastIp: '10.0.0.1' });
  t.match(decide([used], { ...at(pw), verifiedPins: new Set([HASH]) }, policy), { granted: true, reason: 'linger' });
  t.match(decide([used], at(pw), policy), { granted: false, reason: 'bad_pin' }, 'a linger needs the PIN verified too');
  const plain = line('HOTP', '1234', { counter: 0 });
  t.match(decide([s, plain], at(pw), policy), { granted: true, line: 1 }, 'a plain line beside it is checked as ever');
  t.match(decide([s, plain], { ...at(pw), verifiedPins: new Set([HASH]) }, policy), { granted: true, line: 0 }, 'first match wins');
});
