import t from 'tap';
import { readFileSync } from 'node:fs';
import { codeAt, codesEqual, findEventCounter, findTimeStep, hotp, locateStep, motp, stepAt, type TokenType } from '../src/otp.js';

const rfc4226 = JSON.parse(readFileSync(new URL('./vectors/rfc4226.json', import.meta.url), 'utf8')) as
  { keyHex: string; digits: number; cases: { counter: number; otp: string }[] };
const rfc6238 = JSON.parse(readFileSync(new URL('./vectors/rfc6238.json', import.meta.url), 'utf8')) as
  { keyHex: string; digits: number; step: number; cases: { unixTime: number; step: number; otp: string }[] };

const HOTP6: TokenType = { algorithm: 'HOTP', stepSeconds: 0, digits: 6 };
const TOTP30: TokenType = { algorithm: 'HOTP', stepSeconds: 30, digits: 6 };
const key = Buffer.from(rfc4226.keyHex, 'hex');

t.test('RFC 4226 appendix D vectors', async (t) => {
  for (const c of rfc4226.cases) t.equal(hotp(key, c.counter, rfc4226.digits), c.otp, `counter ${c.counter}`);
});

t.test('RFC 6238 appendix B vectors (SHA-1, 8 digits)', async (t) => {
  const k = Buffer.from(rfc6238.keyHex, 'hex');
  for (const c of rfc6238.cases) {
    t.equal(stepAt(c.unixTime, rfc6238.step), c.step, `step of ${c.unixTime}`);
    t.equal(hotp(k, c.step, rfc6238.digits), c.otp, `time ${c.unixTime}`);
  }
});

t.test('1 to 10 digits: the truncated value modulo 10^digits; 10 digits is the whole 31-bit value', async (t) => {
  // RFC 4226 appendix D: counter 0 truncates to 1284755224
  const expected = ['4', '24', '224', '5224', '55224', '755224', '4755224', '84755224', '284755224', '1284755224'];
  expected.forEach((code, i) => t.equal(hotp(key, 0, i + 1), code, `${i + 1} digits`));
});

t.test('MOTP: first digits of md5(counter, hex key, PIN)', async (t) => {
  // md5("1000" + "0123456789abcdef" + "1234") computed independently with md5sum
  const k = Buffer.from('0123456789abcdef', 'hex');
  t.equal(motp(k, '1234', 1000, 6), '6a62b8');
  t.equal(codeAt({ algorithm: 'MOTP', stepSeconds: 10, digits: 6 }, k, '1234', 1000), '6a62b8');
  t.not(motp(k, '9999', 1000, 6), '6a62b8', 'the PIN is part of the code');
});

t.test('codesEqual', async (t) => {
  t.ok(codesEqual('123456', '123456'));
  t.notOk(codesEqual('123456', '123457'));
  t.notOk(codesEqual('12345', '123456'));
  t.notOk(codesEqual('', '1'));
});

t.test('event window: counter .. counter+maxOffset only', async (t) => {
  const code5 = hotp(key, 5, 6);
  t.same(findEventCounter(HOTP6, key, '', code5, 5, 4), { counter: 5 });
  t.same(findEventCounter(HOTP6, key, '', code5, 1, 4), { counter: 5 });
  t.equal(findEventCounter(HOTP6, key, '', code5, 0, 4), undefined, 'beyond the look-ahead');
  t.equal(findEventCounter(HOTP6, key, '', code5, 6, 4), undefined, 'behind the counter');
  t.equal(findEventCounter(HOTP6, key, '', '000000', 0, 4), undefined);
});

t.test('time window: plus/minus maxOffset around now + drift', async (t) => {
  const now = 1_700_000_000;
  const s = stepAt(now, 30);
  for (const d of [-4, -1, 0, 1, 4]) {
    t.same(findTimeStep(TOTP30, key, '', hotp(key, s + d, 6), now, 0, 4, undefined), { counter: s + d }, `offset ${d}`);
  }
  t.equal(findTimeStep(TOTP30, key, '', hotp(key, s + 5, 6), now, 0, 4, undefined), undefined, '5 steps ahead');
  t.equal(findTimeStep(TOTP30, key, '', hotp(key, s - 5, 6), now, 0, 4, undefined), undefined, '5 steps behind');
  t.same(findTimeStep(TOTP30, key, '', hotp(key, s + 7, 6), now, 3, 4, undefined), { counter: s + 7 }, 'drift moves the window');
});

t.test('time window: a stale negative drift stretches the upper end to the real step (mod_authn_otp 1.1.4)', async (t) => {
  const now = 1_700_000_000;
  const s = stepAt(now, 30);
  t.same(findTimeStep(TOTP30, key, '', hotp(key, s, 6), now, -20, 4, undefined), { counter: s });
  t.equal(findTimeStep(TOTP30, key, '', hotp(key, s + 1, 6), now, -20, 4, undefined), undefined);
});

t.test('time window: steps at or before the last used step are refused', async (t) => {
  const now = 1_700_000_000;
  const s = stepAt(now, 30);
  t.equal(findTimeStep(TOTP30, key, '', hotp(key, s, 6), now, 0, 4, s), undefined);
  t.equal(findTimeStep(TOTP30, key, '', hotp(key, s - 2, 6), now, 0, 4, s - 1), undefined);
  t.same(findTimeStep(TOTP30, key, '', hotp(key, s + 1, 6), now, 0, 4, s), { counter: s + 1 });
});

t.test('locateStep finds the step that produced a code', async (t) => {
  t.equal(locateStep(TOTP30, key, '', hotp(key, 1000, 6), 1002, 3), 1000);
  t.equal(locateStep(TOTP30, key, '', hotp(key, 1000, 6), 1010, 3), undefined);
});
