// The admin CLI's pure functions over a parsed users file (src/usersAdmin.ts),
// and the export of a line to another program's layout (usersFileFormat.ts
// exportLine / exportProblem). Expected codes come from the independent RFC
// 4226 helper in the harness, never from src/otp.ts; times are fixed.
import t from 'tap';
import { createHash } from 'node:crypto';
import type { Policy } from '../src/decision.js';
import { endLinger } from '../src/decision.js';
import { formatLocalTime } from '../src/localTime.js';
import {
  appendLines, changeLines, codesFrom, currentPosition, importPlan, linesOf, loggedOut, loginProblem, pinProblem,
  removeLines, resyncProblem, resynced, tokenAt, unlocked, userRows, type PinPolicy,
} from '../src/usersAdmin.js';
import {
  exportLine, exportProblem, lineState, newTokenLine, parseUsersFile, type LineState, type TokenLine, type UsersFileModel,
} from '../src/usersFileFormat.js';
import { rfcHotp, secret, secretKey } from './lib/harness.js';

// the last overload of t.test is (cb): its argument is a subtest
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const POLICY: Policy = {
  maxOffset: 4, maxLinger: 600, logoutOnIpChange: false, maxFailures: 5, lockoutSeconds: 300, maxLockoutSeconds: 3600,
  permanentLockAfter: 100,
};

/** A fixed "now": mid-June 2025, far from any DST change, on no step boundary of 30 or 60 s. */
const NOW = 1_750_000_017;
const at = formatLocalTime;

/** Distinct keys of this file only (not the RFC test key other files may print). */
const key = (name: string, bytes = 20): string =>
  secretKey(createHash('sha512').update(`usersAdmin ${name}`).digest('hex').slice(0, bytes * 2));
const K1 = key('k1');
const K2 = key('k2');
const K3 = key('k3');
const K4 = key('k4');
const K5 = key('k5');
const K6 = key('k6');
const K7 = key('k7');
const K8 = key('k8');
const K9 = key('k9');
const ALL_KEYS = [K1, K2, K3, K4, K5, K6, K7, K8, K9];

const PIN_A = secret('pin-Alpha-7431');
const PIN_B = secret('pin-Bravo-2290');

const model = (text: string | Buffer): UsersFileModel =>
  parseUsersFile(typeof text === 'string' ? Buffer.from(text, 'utf8') : text);
const lineCount = (m: UsersFileModel): number => m.starts.length - 1;
const lineBytes = (m: UsersFileModel, i: number): Buffer => m.bytes.subarray(m.starts[i], m.starts[i + 1]);
const allLines = (m: UsersFileModel): Buffer[] => Array.from({ length: lineCount(m) }, (_, i) => lineBytes(m, i));
const lineText = (m: UsersFileModel, i: number): string => lineBytes(m, i).toString('utf8');

function only(m: UsersFileModel, login: string): TokenLine {
  const idx = m.index.get(login);
  if (idx === undefined || idx.length !== 1) throw new Error(`expected exactly one line of ${login}`);
  return tokenAt(m, idx[0] as number);
}

const fieldsOf = (line: string): string[] => line.trim().split(/[ \t]+/);

// ---------------------------------------------------------------------------

t.test('loginProblem: names a line can hold and Basic auth can send', async (t) => {
  const ok = ['alice', 'bob.smith@example.org', 'DOMAIN\\carl', 'x#y', 'ünïcödé', 'a'.repeat(128), 'é'.repeat(64)];
  for (const login of ok) {
    t.equal(loginProblem(login), undefined, `accepts ${JSON.stringify(login.slice(0, 20))}`);
    // and such a name really is the user field of the line it ends up in
    const m = appendLines(model(''), [newTokenLine('HOTP', login, '-', K1, 0)]);
    t.equal(only(m, login).login, login, `${JSON.stringify(login.slice(0, 20))} parses back as the login`);
  }
  const refused: [string, RegExp][] = [
    ['', /empty/],
    [' ', /blanks or control/],
    ['al ice', /blanks or control/],
    [' alice', /blanks or control/],
    ['alice ', /blanks or control/],
    ['al\tice', /blanks or control/],
    ['al\nice', /blanks or control/],
    ['al\rice', /blanks or control/],
    ['al\u0000ice', /blanks or control/],
    ['al\u0001ice', /blanks or control/],
    ['al\u001bice', /blanks or control/],
    ['al\u007fice', /blanks or control/],
    ['al\u00a0ice', /blanks or control/],
    ['#alice', /"#".*comment/],
    ['al:ice', /":"/],
    ['alice:', /":"/],
    [':alice', /":"/],
    ['a'.repeat(129), /at most 128 bytes/],
    ['é'.repeat(65), /at most 128 bytes/], // 65 characters, 130 bytes
    ['€'.repeat(43), /at most 128 bytes/], // 43 characters, 129 bytes
  ];
  for (const [login, why] of refused) {
    const problem = loginProblem(login);
    t.ok(problem !== undefined, `refuses ${JSON.stringify(login.slice(0, 20))}`);
    t.match(problem ?? '', why, `reason for ${JSON.stringify(login.slice(0, 20))}`);
  }
});

t.test('pinProblem: the policy, the reserved values, and the PIN never echoed', async (t) => {
  const four: PinPolicy = { minLength: 4, digitsOnly: false };
  const sixDigits: PinPolicy = { minLength: 6, digitsOnly: true };
  const none: PinPolicy = { minLength: 0, digitsOnly: false };

  t.equal(pinProblem(PIN_A, four), undefined, 'a plain PIN of 14 characters');
  t.equal(pinProblem('1234', four), undefined, 'exactly minLength');
  t.equal(pinProblem('€€€€', four), undefined, 'minLength counts characters, not bytes');
  t.equal(pinProblem('😀😀😀😀', four), undefined, 'minLength counts code points, not UTF-16 units');
  t.ok(pinProblem('😀😀😀😀', { minLength: 5, digitsOnly: false }), '4 code points are fewer than 5');
  t.equal(pinProblem('x'.repeat(128), four), undefined, '128 bytes is the most a field holds');
  t.equal(pinProblem('483920', sixDigits), undefined, 'digits only, long enough');
  t.equal(pinProblem('0000000000', sixDigits), undefined, 'leading zeros are digits');
  t.equal(pinProblem('a', none), undefined, 'minLength 0');

  const refused: [string, PinPolicy, RegExp][] = [
    ['x7q', four, /at least 4 characters/],
    ['48392', sixDigits, /at least 6 characters/],
    ['48392a7', sixDigits, /only have digits/],
    ['٤٨٣٩٢٠٧', sixDigits, /only have digits/], // Arabic-Indic digits are not ASCII digits
    [secret('pin with blanks'), four, /blanks or control/],
    [secret('pin\twith-tab'), four, /blanks or control/],
    [secret('pin\nnewline-1'), four, /blanks or control/],
    [secret('pin\u0007bell-22'), four, /blanks or control/],
    [secret('pin\u007fdel-333'), four, /blanks or control/],
    [secret(' leading-blank'), four, /blanks or control/],
    ['-', none, /"-", "\+"/],
    ['+', none, /"-", "\+"/],
    ['$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g', four, /look like a hash/],
    ['$scrypt$anything', none, /look like a hash/],
    ['$2y$10$abcdefghijklmnopqrstuv', none, /look like a hash/],
    [secret(`long-${'p'.repeat(124)}`), four, /at most 128 bytes/],
    [secret(`long-${'é'.repeat(62)}`), four, /at most 128 bytes/], // 67 characters, 129 bytes
  ];
  for (const [pin, policy, why] of refused) {
    const problem = pinProblem(pin, policy);
    const name = JSON.stringify(pin.slice(0, 16));
    t.ok(problem !== undefined, `refuses ${name}`);
    t.match(problem ?? '', why, `reason for ${name}`);
    // '-' and '+' are one character: their own quoted spelling in the message is the point.
    if (pin.length > 1) t.notOk((problem ?? '').includes(pin), `the reason for ${name} does not contain the PIN`);
  }
  // Every check, not only the first one failing, keeps the PIN out.
  for (const pin of [PIN_A, PIN_B]) {
    const problem = pinProblem(pin, { minLength: 40, digitsOnly: true });
    t.ok(problem);
    t.notOk((problem ?? '').includes(pin));
    t.notOk((pinProblem(pin, { minLength: 1, digitsOnly: true }) ?? '').includes(pin));
  }
});

// ---------------------------------------------------------------------------

t.test('appendLines keeps every existing byte and adds lines in the file\'s own endings', async (t) => {
  const newLine = newTokenLine('HOTP/T30', 'newbie', PIN_A, K9, 0);
  const check = (t: Test, before: string, expectedGap: string, eol: string): void => {
    const original = Buffer.from(before, 'utf8');
    const after = appendLines(model(original), [newLine]);
    t.ok(after.bytes.subarray(0, original.length).equals(original), 'every byte before the new line stays');
    t.equal(after.bytes.subarray(original.length).toString('utf8'), `${expectedGap}${newLine}${eol}`, 'what is added');
    const tok = only(after, 'newbie');
    t.match(tok, { login: 'newbie', pin: PIN_A, keyHex: K9, counter: 0, failures: 0, fieldCount: 6 });
    t.equal(tok.type.stepSeconds, 30);
    t.equal(after.problems.length, model(original).problems.length, 'no new problem');
  };

  t.test('LF file with comments, blank lines and a malformed line', async (t) => {
    check(t, `# users\n\n   # indented\nHOTP\talice  -   ${K1}   7\nHOTP broken - zz\n`, '', '\n');
  });
  t.test('CRLF file: the new line gets CRLF', async (t) => {
    check(t, `# users\r\nHOTP alice - ${K1} 7\r\n`, '', '\r\n');
  });
  t.test('CRLF file whose last line has no newline', async (t) => {
    check(t, `# users\r\nHOTP alice - ${K1} 7`, '\r\n', '\r\n');
  });
  t.test('LF file whose last line has no newline: one is added before the new line', async (t) => {
    check(t, `HOTP alice - ${K1} 7\n# the end`, '\n', '\n');
  });
  t.test('a one-line file without any newline', async (t) => {
    check(t, `HOTP alice - ${K1} 7`, '\n', '\n');
  });
  t.test('an empty file', async (t) => {
    check(t, '', '', '\n');
  });

  t.test('several lines at once, in order', async (t) => {
    const original = Buffer.from(`HOTP alice - ${K1} 7\n`);
    const lines = [newTokenLine('HOTP', 'u1', '-', K2, 0), newTokenLine('HOTP/E/8', 'u2', '+', K3, 5)];
    const after = appendLines(model(original), lines);
    t.equal(after.bytes.toString('utf8'), `${original.toString('utf8')}${lines[0]}\n${lines[1]}\n`);
    t.same([...after.index.keys()], ['alice', 'u1', 'u2']);
    t.match(only(after, 'u2'), { pin: '+', counter: 5, keyHex: K3 });
  });
});

t.test('removeLines removes exactly those lines, malformed ones of the login included', async (t) => {
  const text = [
    '# head comment, alice is mentioned here\r\n',
    `HOTP alice - ${K1} 0\n`,
    `HOTP/T30  bob\t${PIN_B}  ${K2} -1 2\n`,
    `   HOTP   alice  ${PIN_A} ${K3} 5\n`,
    'HOTP alice - zz\n', // malformed key, but it names alice
    `BOGUS alice - ${K4}\n`, // malformed type, but it names alice
    `HOTP alice2 - ${K5} 0\n`,
    'HOTP\n', // malformed, names nobody
    '\n',
    `HOTP carol - ${K6} 0`, // last line without newline
  ];
  const m = model(text.join(''));
  t.equal(lineCount(m), text.length);
  t.ok(m.refused.has('alice'), 'alice has malformed lines');
  const alice = linesOf(m, 'alice');
  t.same(alice, [1, 3, 4, 5], 'linesOf: token and malformed lines of alice, not alice2, not the comment');
  t.same(linesOf(m, 'nobody'), []);

  const after = removeLines(m, new Set(alice));
  const kept = text.filter((_, i) => !alice.includes(i)).join('');
  t.ok(after.bytes.equals(Buffer.from(kept, 'utf8')), 'every other line byte for byte (CRLF, tabs, no final newline)');
  t.equal(after.index.get('alice'), undefined);
  t.notOk(after.refused.has('alice'), 'no malformed line of alice left');
  t.same(linesOf(after, 'alice'), []);
  t.same([...after.index.keys()], ['bob', 'alice2', 'carol']);
  t.equal(after.problems.length, 1, 'the anonymous malformed line stays');

  const lastGone = removeLines(m, new Set([text.length - 1]));
  t.ok(lastGone.bytes.equals(Buffer.from(text.slice(0, -1).join(''), 'utf8')), 'removing the last line');
  const firstGone = removeLines(m, new Set([0]));
  t.ok(firstGone.bytes.equals(Buffer.from(text.slice(1).join(''), 'utf8')), 'removing the first line');
  t.ok(removeLines(m, new Set()).bytes.equals(m.bytes), 'removing nothing');
});

// ---------------------------------------------------------------------------

t.test('changeLines: unlock, logout and set-pin change only their lines', async (t) => {
  const T = NOW - 120;
  const text = [
    '# users file\n', // 0
    `HOTP       alice   -   ${K1} 12 3\n`, // 1: 6 fields, event, 3 failures
    `HOTP/T30 bob  ${PIN_B}  ${K2}  -1  2 123456 ${at(T)} 10.0.0.1\n`, // 2: 9 fields, time, drift -1, 2 failures
    `HOTP carol - ${K3} 7 654321 ${at(T)} 10.0.0.2\n`, // 3: 8 fields, event
    `HOTP/T30 dave - ${K4} 5 111111 ${at(T)}\n`, // 4: 7 fields (liboath), time
    `HOTP   erin ${PIN_A} ${K5} 4 0 222222 ${at(T)} 10.0.0.3\r\n`, // 5: 9 fields, event, CRLF
    `HOTP/T30 frank - ${K6} 0 0 333333 ${at(T)} 10.0.0.4\n`, // 6: 9 fields, time, no failures
    `HOTP/T30\tgina  -  ${K7}  0  444444  ${at(T)}  10.0.0.5`, // 7: 8 fields, time, no final newline
  ];
  const m = model(text.join(''));
  t.equal(m.problems.length, 0);
  const all = [1, 2, 3, 4, 5, 6, 7];

  const unchangedExcept = (t: Test, after: UsersFileModel, changed: number[]): void => {
    t.equal(lineCount(after), lineCount(m));
    for (let i = 0; i < lineCount(m); i++) {
      if (!changed.includes(i)) t.ok(lineBytes(after, i).equals(lineBytes(m, i)), `line ${i + 1} byte for byte`);
      else t.notOk(lineBytes(after, i).equals(lineBytes(m, i)), `line ${i + 1} changed`);
    }
  };

  t.test('unlocked clears failure counts, nothing else', async (t) => {
    const after = changeLines(m, all, unlocked);
    unchangedExcept(t, after, [1, 2]);
    t.match(tokenAt(after, 1), { login: 'alice', counter: 12, failures: 0, fieldCount: 6, keyHex: K1, pin: '-' });
    const bob = tokenAt(after, 2);
    t.match(bob, { login: 'bob', pin: PIN_B, keyHex: K2, counter: -1, failures: 0, lastOtp: '123456', lastTime: T, lastIp: '10.0.0.1', fieldCount: 9 });
    t.ok(lineText(after, 1).endsWith('\n') && !lineText(after, 1).endsWith('\r\n'), 'keeps its LF');
  });

  t.test('loggedOut is the gateway\'s logout (decision.ts endLinger) in the file\'s terms', async (t) => {
    for (const i of all) {
      const tok = tokenAt(m, i);
      const s = lineState(tok);
      const ended = endLinger({ spec: tok, ...s }, POLICY.maxOffset);
      const out = loggedOut(tok, s, POLICY.maxOffset);
      t.equal(out.counter, ended.counter, `line ${i + 1}: counter as the gateway`);
      t.equal(out.failures, ended.failures, `line ${i + 1}: failures as the gateway`);
      t.equal(out.lastOtp, ended.lastOtp, `line ${i + 1}: last OTP as the gateway`);
      t.equal(out.lastTime, ended.lastTime, `line ${i + 1}: last time as the gateway`);
      t.equal(out.lastIp, undefined, `line ${i + 1}: the IP is gone`);
    }
    const after = changeLines(m, all, (tok, s) => loggedOut(tok, s, POLICY.maxOffset));
    // dave (7 fields) records no IP: nothing to end.
    unchangedExcept(t, after, [2, 3, 5, 6, 7]);
    // Event tokens forget their last OTP (the counter moved past it).
    const carol = tokenAt(after, 3);
    t.match(carol, { login: 'carol', counter: 7 });
    t.equal(carol.lastOtp, undefined);
    t.equal(carol.lastTime, undefined);
    t.equal(carol.lastIp, undefined);
    const erin = tokenAt(after, 5);
    t.match(erin, { login: 'erin', pin: PIN_A, counter: 4, failures: 0 });
    t.equal(erin.lastOtp, undefined);
    t.ok(lineText(after, 5).endsWith('\r\n'), 'erin keeps her CRLF');
    // Time tokens keep their last OTP and time (which step was used) and lose the IP.
    for (const [i, otp] of [[2, '123456'], [6, '333333'], [7, '444444']] as const) {
      const tok = tokenAt(after, i);
      t.equal(tok.lastOtp, otp, `line ${i + 1} keeps its last OTP`);
      t.equal(tok.lastTime, T, `line ${i + 1} keeps its last time`);
      t.equal(tok.lastIp, undefined, `line ${i + 1} loses its IP`);
    }
    t.notOk(lineText(after, 7).endsWith('\n'), 'the last line still has no newline');
    // Nothing else moves: dave's line, the comment.
    t.ok(lineBytes(after, 0).equals(lineBytes(m, 0)));
    t.ok(lineBytes(after, 4).equals(lineBytes(m, 4)));
  });

  t.test('a logout does not change which code a time token expects next, nor its failure count', async (t) => {
    // bob: mod_authn_otp's 9-field line, drift -1, 2 failures. After the logout the
    // gateway must still add the drift, and the count must still be in the file.
    const after = changeLines(m, [2], (tok, s) => loggedOut(tok, s, POLICY.maxOffset));
    const before = tokenAt(m, 2);
    const bob = tokenAt(after, 2);
    t.equal(currentPosition(bob, NOW), currentPosition(before, NOW), 'the step the gateway expects is unchanged');
    t.equal(bob.liboathLayout, false, 'field 5 is still a drift, not liboath bookkeeping');
    t.equal(bob.failures, 2, 'the failure count stays in the file');
  });

  t.test('set-pin: {...state, pin} rewrites only the PIN of the listed lines', async (t) => {
    const NEW = secret('pin-Charlie-5512');
    const after = changeLines(m, [1, 5], (_tok, s) => ({ ...s, pin: NEW }));
    unchangedExcept(t, after, [1, 5]);
    t.match(tokenAt(after, 1), { login: 'alice', pin: NEW, keyHex: K1, counter: 12, failures: 3 });
    const erin = tokenAt(after, 5);
    t.match(erin, { login: 'erin', pin: NEW, keyHex: K5, counter: 4, failures: 0, lastOtp: '222222', lastTime: T, lastIp: '10.0.0.3' });
    t.ok(lineText(after, 5).endsWith('\r\n'));
    t.notOk(after.bytes.toString('utf8').includes(PIN_A), 'the old PIN is gone');
    t.ok(after.bytes.toString('utf8').includes(PIN_B), 'other users\' PINs stay');
  });

  t.test('a change that changes nothing returns identical bytes', async (t) => {
    t.ok(changeLines(m, all, (_tok, s) => s).bytes.equals(m.bytes), 'identity');
    t.ok(changeLines(m, all, (_tok, s) => ({ ...s })).bytes.equals(m.bytes), 'a copy');
    t.ok(changeLines(m, [3, 4, 5, 6, 7], unlocked).bytes.equals(m.bytes), 'unlock of lines without failures');
    t.ok(changeLines(m, [1, 4], (tok, s) => loggedOut(tok, s, POLICY.maxOffset)).bytes.equals(m.bytes),
      'logout of lines without an IP');
    t.ok(changeLines(m, [], () => { throw new Error('not called'); }).bytes.equals(m.bytes), 'no lines');
    const twice = changeLines(changeLines(m, all, unlocked), all, unlocked);
    t.ok(twice.bytes.equals(changeLines(m, all, unlocked).bytes), 'unlocking twice = once');
  });

  t.test('setting the PIN a line already has changes nothing', async (t) => {
    const same = changeLines(m, all, (tok, s) => ({ ...s, pin: tok.pin }));
    t.ok(same.bytes.equals(m.bytes), 'identical bytes');
  });

  t.test('changeLines refuses an index that is not a token line', async (t) => {
    t.throws(() => changeLines(m, [0], unlocked), /line 1 is not a token line/);
  });
});

// ---------------------------------------------------------------------------

t.test('userRows: what each token line says, without keys or PINs', async (t) => {
  const HASH = '$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
  const text = [
    '# users\n', // 1
    `HOTP locked6 - ${K1} 3 5\n`, // 2: failures = maxFailures
    `HOTP open6 ${PIN_A} ${K2} 3 4\n`, // 3: one below
    `HOTP/T30 locked9 + ${K3} -2 7 123456 ${at(NOW - 100)} 10.0.0.9\n`, // 4: locked and lingering
    `HOTP/T30 pam5 - ${K4} 0\n`, // 5
    `HOTP pam4 ${PIN_B} ${K5}\n`, // 6
    `HOTP/T30 pam7 - ${K6} 9 111111 ${at(NOW - 10)}\n`, // 7: no IP: never lingers
    `HOTP pam8 ${HASH} ${K7} 4 222222 ${at(NOW - 599)} 10.0.0.8\n`, // 8: last second of the linger
    `HOTP late9 - ${K8} 4 0 333333 ${at(NOW - 600)} 10.0.0.7\n`, // 9: linger just over
    `HOTP future9 - ${K9} 4 0 333333 ${at(NOW + 5)} 10.0.0.6\n`, // 10: a time in the future is not trusted
    'HOTP broken - zz\n', // 11: malformed
    `HOTP/T30 perm9 - ${K1} 0 150 555555 ${at(NOW - 5000)} 10.0.0.5\n`, // 12: permanently locked
  ];
  const m = model(text.join(''));
  const rows = userRows(m, NOW, POLICY);
  t.same(rows.map((r) => r.login), ['locked6', 'open6', 'locked9', 'pam5', 'pam4', 'pam7', 'pam8', 'late9', 'future9', 'perm9']);
  const row = (login: string) => {
    const r = rows.find((x) => x.login === login);
    if (!r) throw new Error(`no row for ${login}`);
    return r;
  };
  t.same(row('locked6'), {
    login: 'locked6', line: 2, type: 'HOTP', counter: 3, failures: 5, pin: 'none',
    lastLogin: undefined, lastIp: undefined, locked: true, lingering: false,
  });
  t.match(row('open6'), { line: 3, failures: 4, pin: 'plain', locked: false, lingering: false });
  t.same(row('locked9'), {
    login: 'locked9', line: 4, type: 'HOTP/T30', counter: -2, failures: 7, pin: 'external',
    lastLogin: NOW - 100, lastIp: '10.0.0.9', locked: true, lingering: true,
  });
  for (const login of ['pam5', 'pam4', 'pam7', 'pam8']) {
    t.equal(row(login).failures, undefined, `${login}: pam_oath's layout keeps no failure count`);
    t.equal(row(login).locked, false, `${login}: not locked by the file`);
  }
  t.match(row('pam5'), { line: 5, pin: 'none', counter: 0 });
  t.match(row('pam4'), { line: 6, pin: 'plain', counter: 0 });
  t.match(row('pam7'), { line: 7, lastLogin: NOW - 10, lastIp: undefined, lingering: false, counter: 9 });
  t.match(row('pam8'), { line: 8, pin: 'hashed', lastLogin: NOW - 599, lastIp: '10.0.0.8', lingering: true });
  t.match(row('late9'), { line: 9, failures: 0, locked: false, lingering: false });
  t.match(row('future9'), { line: 10, lingering: false });
  t.match(row('perm9'), { line: 12, failures: 150, locked: true, lingering: false });

  t.test('the policy decides', async (t) => {
    const noLimit = userRows(m, NOW, { ...POLICY, maxFailures: 0 });
    t.notOk(noLimit.some((r) => r.locked), 'maxFailures 0: nothing is locked');
    const strict = userRows(m, NOW, { ...POLICY, maxFailures: 4 });
    t.equal(strict.find((r) => r.login === 'open6')?.locked, true, '4 failures lock at maxFailures 4');
    const shortLinger = userRows(m, NOW, { ...POLICY, maxLinger: 100 });
    t.equal(shortLinger.find((r) => r.login === 'locked9')?.lingering, false, '100 s after: over with maxLinger 100');
    const later = userRows(m, NOW + 1, POLICY);
    t.equal(later.find((r) => r.login === 'pam8')?.lingering, false, 'one second later the linger is over');
  });

  t.test('only one login', async (t) => {
    const one = userRows(m, NOW, POLICY, 'pam8');
    t.equal(one.length, 1);
    t.equal(one[0]?.line, 8);
    t.same(userRows(m, NOW, POLICY, 'broken'), [], 'a malformed line has no row');
    t.same(userRows(m, NOW, POLICY, 'nobody'), []);
  });

  t.test('no key and no PIN in the rows', async (t) => {
    const json = JSON.stringify(rows);
    for (const k of ALL_KEYS) {
      t.notOk(json.includes(k), 'no key (hex)');
      t.notOk(json.toUpperCase().includes(k.toUpperCase()), 'no key (upper-case hex)');
      t.notOk(json.includes(Buffer.from(k, 'hex').toString('base64')), 'no key (base64)');
    }
    t.notOk(json.includes(PIN_A), 'no plain PIN');
    t.notOk(json.includes(PIN_B), 'no plain PIN');
    t.notOk(json.includes('$scrypt$'), 'no PIN hash');
    t.notOk(json.includes('c2FsdHNhbHRzYWx0c2FsdA'), 'no salt');
  });
});

// ---------------------------------------------------------------------------

t.test('resynced: event tokens', async (t) => {
  const tok = only(model(`HOTP evt ${PIN_A} ${K1} 1000 3 654321 ${at(NOW - 50)} 10.0.0.1\n`), 'evt');
  const code = (c: number): string => rfcHotp(K1, c, 6);

  t.same(resynced(tok, code(1500), code(1501), NOW), { counter: 1502, failures: 0 }, '500 ahead: counter = c + 2');
  t.same(resynced(tok, code(1000), code(1001), NOW), { counter: 1002, failures: 0 }, 'at the counter');
  t.same(resynced(tok, code(1000 + 9_998), code(1000 + 9_999), NOW), { counter: 1000 + 10_000, failures: 0 },
    'the last pair inside the window');
  t.equal(resynced(tok, code(1000 + 10_000), code(1000 + 10_001), NOW), undefined, 'beyond 10,000: not found');
  t.equal(resynced(tok, code(500), code(501), NOW), undefined, 'behind the counter: not found (a counter never goes back)');
  t.equal(resynced(tok, code(999), code(1000), NOW), undefined, 'straddling the counter: not found');
  t.equal(resynced(tok, code(1501), code(1500), NOW), undefined, 'the wrong order: not found');
  t.equal(resynced(tok, code(1500), code(1502), NOW), undefined, 'not consecutive: not found');

  const eight = only(model(`HOTP/E/8 evt8 - ${K2} 3\n`), 'evt8');
  t.same(resynced(eight, rfcHotp(K2, 700, 8), rfcHotp(K2, 701, 8), NOW), { counter: 702, failures: 0 }, '8 digits');

  // Written through changeLines: the new line expects the code after the pair.
  const m = model(`# x\nHOTP evt ${PIN_A} ${K1} 1000 3 654321 ${at(NOW - 50)} 10.0.0.1\n`);
  const state = resynced(tokenAt(m, 1), code(1500), code(1501), NOW);
  t.ok(state);
  const after = changeLines(m, [1], () => state as LineState);
  const moved = tokenAt(after, 1);
  t.match(moved, { counter: 1502, failures: 0, pin: PIN_A, keyHex: K1 });
  t.equal(currentPosition(moved, NOW), 1502);
  t.same(codesFrom(moved, currentPosition(moved, NOW), 1), [code(1502)]);
  t.ok(lineBytes(after, 0).equals(lineBytes(m, 0)));
});

for (const step of [30, 60]) {
  t.test(`resynced: time tokens, ${step} s steps`, async (t) => {
    const typeText = `HOTP/T${step}`;
    const nowStep = Math.floor(NOW / step);
    const code = (s: number): string => rfcHotp(K3, s, 6);
    const lines = [
      `${typeText} tim - ${K3} 0\n`, // 5 fields, no drift
      `${typeText} tim9 - ${K3} 3 2 123456 ${at(NOW - 40)} 10.0.0.1\n`, // 9 fields, drift 3
      `${typeText} tim7 - ${K3} 40 123456 ${at(NOW - 40)}\n`, // 7 fields, liboath
    ];
    for (const line of lines) {
      const m = model(line);
      const tok = tokenAt(m, 0);
      const name = `${tok.fieldCount}-field line`;
      if (tok.liboathLayout) {
        t.match(resyncProblem(tok), /7-field layout has no time offset/, `${name}: liboath's field 5 is no drift: refused`);
        continue;
      }
      t.equal(resyncProblem(tok), undefined);
      const threeHoursAgo = nowStep - (3 * 3600) / step; // step of the second code
      const twentyHoursAhead = nowStep + (20 * 3600) / step;
      // The second code is recorded as used, at now: its step is now + drift, and it never works again.
      const used = (s: number): LineState => ({ counter: s - nowStep, failures: 0, lastOtp: code(s), lastTime: NOW });
      // The 9-field line used a code (drift 3) a moment ago: codes up to that step are spent.
      const spent = tok.lastTime !== undefined;
      t.same(resynced(tok, code(threeHoursAgo - 1), code(threeHoursAgo), NOW),
        spent ? undefined : used(threeHoursAgo), `${name}: codes from 3 hours ago`);
      t.same(resynced(tok, code(twentyHoursAhead - 1), code(twentyHoursAhead), NOW),
        used(twentyHoursAhead), `${name}: codes from 20 hours ahead`);
      t.same(resynced(tok, code(nowStep - 1), code(nowStep), NOW), spent ? undefined : used(nowStep), `${name}: codes of now`);
      t.equal(resynced(tok, code(nowStep + (25 * 3600) / step - 1), code(nowStep + (25 * 3600) / step), NOW), undefined,
        `${name}: 25 hours ahead is not found`);
      t.equal(resynced(tok, code(nowStep + 10), code(nowStep + 12), NOW), undefined, `${name}: not consecutive`);
      t.equal(resynced(tok, '000000', '000000', NOW), undefined, `${name}: wrong codes`);

      // The new line puts the second code at now, whatever its layout was.
      const state = resynced(tok, code(twentyHoursAhead - 1), code(twentyHoursAhead), NOW) as LineState;
      const after = tokenAt(changeLines(m, [0], () => state), 0);
      t.equal(currentPosition(after, NOW), twentyHoursAhead, `${name}: after the resync the gateway expects code 2's step`);
      t.same(codesFrom(after, currentPosition(after, NOW), 1), [code(twentyHoursAhead)]);
      t.equal(after.liboathLayout, false, `${name}: field 5 of the new line is a drift`);
      t.same([after.lastOtp, after.lastIp], [code(twentyHoursAhead), undefined], `${name}: code 2 recorded as used, with no IP to linger from`);
    }
  });
}

t.test('codesFrom and currentPosition match RFC 4226', async (t) => {
  const m = model([
    `HOTP e6 - ${K1} 42 1\n`,
    `HOTP/E/8 e8 - ${K2} 7\n`,
    `HOTP/E/10 e10 - ${K2} 0\n`,
    `HOTP/T30 t5 - ${K3} -2\n`, // 5 fields: drift -2
    `HOTP/T30 t7 - ${K4} 17 123456 ${at(NOW - 60)}\n`, // liboath: field 5 is bookkeeping
    `HOTP/T30 t8 - ${K5} 3 123456 ${at(NOW - 60)} 10.0.0.1\n`, // 8 fields: drift 3
    `HOTP/T60/8 t60 - ${K6} 1\n`,
    `HOTP e4 - ${K7}\n`, // 4 fields: counter 0
  ].join(''));
  const tok = (login: string): TokenLine => only(m, login);
  const range = (from: number, n: number): number[] => Array.from({ length: n }, (_, i) => from + i);

  t.equal(currentPosition(tok('e6'), NOW), 42);
  t.equal(currentPosition(tok('e6'), 0), 42, 'an event token ignores the clock');
  t.same(codesFrom(tok('e6'), 42, 5), range(42, 5).map((c) => rfcHotp(K1, c, 6)));
  t.same(codesFrom(tok('e8'), currentPosition(tok('e8'), NOW), 3), range(7, 3).map((c) => rfcHotp(K2, c, 8)));
  t.same(codesFrom(tok('e10'), 0, 2), range(0, 2).map((c) => rfcHotp(K2, c, 10)));
  t.equal(currentPosition(tok('e4'), NOW), 0);
  t.same(codesFrom(tok('e4'), 0, 1), [rfcHotp(K7, 0, 6)]);
  t.same(codesFrom(tok('e6'), 0, 0), []);

  const s30 = Math.floor(NOW / 30);
  t.equal(currentPosition(tok('t5'), NOW), s30 - 2, '5-field line: the drift counts');
  t.same(codesFrom(tok('t5'), currentPosition(tok('t5'), NOW), 3), range(s30 - 2, 3).map((s) => rfcHotp(K3, s, 6)));
  t.equal(currentPosition(tok('t7'), NOW), s30, '7-field (liboath) line: no drift');
  t.same(codesFrom(tok('t7'), currentPosition(tok('t7'), NOW), 1), [rfcHotp(K4, s30, 6)]);
  t.equal(currentPosition(tok('t8'), NOW), s30 + 3, '8-field line: the drift counts');
  t.same(codesFrom(tok('t8'), currentPosition(tok('t8'), NOW), 2), range(s30 + 3, 2).map((s) => rfcHotp(K5, s, 6)));
  const s60 = Math.floor(NOW / 60);
  t.equal(currentPosition(tok('t60'), NOW), s60 + 1);
  t.same(codesFrom(tok('t60'), currentPosition(tok('t60'), NOW), 2), range(s60 + 1, 2).map((s) => rfcHotp(K6, s, 8)));
  // the step boundary
  const boundary = (s30 + 1) * 30;
  t.equal(currentPosition(tok('t5'), boundary - 1), s30 - 2);
  t.equal(currentPosition(tok('t5'), boundary), s30 - 1);
});

// ---------------------------------------------------------------------------

t.test('importPlan', async (t) => {
  const target = model([
    '# target file\n',
    `HOTP alice - ${K1} 0\n`,
    'HOTP bad - zz\n', // malformed, names bad
    `HOTP/T30 zed - ${K2} 0\n`,
  ].join(''));

  t.test('a clean source: its token lines, trimmed, in order; comments stay behind', async (t) => {
    const source = model([
      '# source comment: do not import\r\n',
      `HOTP/T30 carol - ${K3} 0\r\n`,
      '\r\n',
      `   HOTP dave ${PIN_A} ${K4} 5 0\r\n`,
      `HOTP carol - ${K5} 3 0 123456 ${at(NOW)} 10.1.1.1`,
    ].join(''));
    const plan = importPlan(target, source, 'new.users', '/etc/otp-users');
    t.same(plan.conflicts, []);
    t.equal(plan.users, 2);
    t.same(plan.lines, [
      `HOTP/T30 carol - ${K3} 0`,
      `HOTP dave ${PIN_A} ${K4} 5 0`,
      `HOTP carol - ${K5} 3 0 123456 ${at(NOW)} 10.1.1.1`,
    ]);
    const after = appendLines(target, plan.lines);
    t.ok(after.bytes.subarray(0, target.bytes.length).equals(target.bytes), 'the target stays byte for byte');
    t.notOk(after.bytes.toString('utf8').includes('source comment'), 'the source\'s comment is not imported');
    t.notOk(after.bytes.toString('utf8').includes('\r'), 'the target\'s LF endings are used');
    t.same(after.index.get('carol')?.length, 2);
    t.match(only(after, 'dave'), { pin: PIN_A, keyHex: K4, counter: 5, failures: 0 });
    t.equal(after.tokenCount, target.tokenCount + 3);
  });

  t.test('conflicts: existing logins (also malformed ones) and malformed source lines', async (t) => {
    const source = model([
      `HOTP alice - ${K6} 0\n`, // 1: alice exists (line 2)
      `HOTP/T30 alice - ${K7} 0\n`, // 2: alice again: reported once
      `HOTP bad - ${K8} 0\n`, // 3: bad has a malformed line (3)
      `HOTP erin - ${K9} 0\n`, // 4: fine
      'HOTP frank - zz\n', // 5: malformed
      '# comment\n',
    ].join(''));
    const plan = importPlan(target, source, 'new.users', '/etc/otp-users');
    t.equal(plan.conflicts.length, 3, plan.conflicts.join(' | '));
    t.match(plan.conflicts, [
      /^new\.users:5: key is not an even number of hex digits/,
      /^new\.users:1: alice is already in \/etc\/otp-users \(line 2\)$/,
      /^new\.users:3: bad is already in \/etc\/otp-users \(line 3\)$/,
    ]);
    t.equal(plan.conflicts.filter((c) => c.includes('alice')).length, 1, 'alice once');
    const text = plan.conflicts.join('\n');
    for (const k of ALL_KEYS) t.notOk(text.includes(k), 'no key in the conflicts');
    t.notOk(plan.lines.some((l) => l.includes('alice')), 'no line of a conflicting login');
  });
});

// ---------------------------------------------------------------------------

t.test('exportLine / exportProblem (usersFileFormat.ts): oath 5 or 7 fields, mod_authn_otp 6 or 9', async (t) => {
  const T = NOW - 300;
  const HASH = '$scrypt$ln=14,r=8,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g';
  const m = model([
    `HOTP f4 ${PIN_A} ${K1}\n`, // 0
    `HOTP/T30 f5 - ${K2} -2\n`, // 1
    `HOTP/E/8 f6 ${PIN_B} ${K3} 9 3\n`, // 2
    `HOTP/T30 f7 - ${K4} 17 123456 ${at(T)}\n`, // 3: liboath time token
    `HOTP f7e - ${K5} 11 654321 ${at(T)}\n`, // 4: liboath event token
    `HOTP/T60 f8 - ${K6} 3 222222 ${at(T)} 10.0.0.8\n`, // 5
    `HOTP f9 + ${K7} 21 2 333333 ${at(T)} 192.168.1.1\n`, // 6
    `HOTP hashed ${HASH} ${K8} 0\n`, // 7
    `MOTP motp 1234 ${K9.slice(0, 16)} 0\n`, // 8
    `HOTP longkey - ${'ab'.repeat(33)} 0\n`, // 9
    `HOTP/T45 t45 - ${K1} 0\n`, // 10
    `hotp lower - ${K2} 0\n`, // 11
  ].join(''));
  t.equal(m.problems.length, 0);

  const exported = (t: Test, i: number, format: 'oath' | 'mod_authn_otp'): { line: string; tok: TokenLine } => {
    const src = tokenAt(m, i);
    t.equal(exportProblem(src, format), undefined, `line ${i + 1} exports to ${format}`);
    const line = exportLine(src, format);
    const back = model(`${line}\n`);
    t.equal(back.problems.length, 0, `line ${i + 1} → ${format}: parses back`);
    const tok = tokenAt(back, 0);
    t.equal(tok.login, src.login);
    t.equal(tok.keyHex, src.keyHex);
    t.equal(tok.pin, src.pin);
    t.equal(tok.typeText, src.typeText);
    return { line, tok };
  };

  t.test('oath: 5 fields, or 7 with the last OTP and its time', async (t) => {
    const expect: [number, number, number][] = [[0, 5, 0], [1, 5, -2], [2, 5, 9], [3, 7, 17], [4, 7, 11], [5, 7, 3], [6, 7, 21]];
    for (const [i, fields, counter] of expect) {
      const { line, tok } = exported(t, i, 'oath');
      t.equal(fieldsOf(line).length, fields, `line ${i + 1}: ${fields} fields`);
      t.equal(tok.counter, counter, `line ${i + 1}: counter`);
      t.equal(tok.failures, undefined, 'no failure count');
      t.equal(tok.lastIp, undefined, 'no IP');
      if (fields === 7) {
        t.equal(tok.lastOtp, tokenAt(m, i).lastOtp);
        t.equal(tok.lastTime, T);
      }
    }
  });

  t.test('mod_authn_otp: 6 fields, or 9 with the last OTP, time and IP', async (t) => {
    const expect: [number, number, number, number][] = [
      // line, fields, counter, failures
      [0, 6, 0, 0], [1, 6, -2, 0], [2, 6, 9, 3],
      [3, 6, 0, 0], // liboath time token: field 5 was bookkeeping, the drift is 0
      [4, 6, 11, 0], // liboath event token: the counter stays
      [5, 9, 3, 0], [6, 9, 21, 2],
      [8, 6, 0, 0], [9, 6, 0, 0], [10, 6, 0, 0], [11, 6, 0, 0],
    ];
    for (const [i, fields, counter, failures] of expect) {
      const { line, tok } = exported(t, i, 'mod_authn_otp');
      t.equal(fieldsOf(line).length, fields, `line ${i + 1}: ${fields} fields`);
      t.equal(tok.counter, counter, `line ${i + 1}: counter`);
      t.equal(tok.failures, failures, `line ${i + 1}: failures`);
      if (fields === 9) {
        t.equal(tok.lastOtp, tokenAt(m, i).lastOtp);
        t.equal(tok.lastTime, T);
        t.equal(tok.lastIp, tokenAt(m, i).lastIp);
      } else t.equal(tok.lastIp, undefined);
    }
    t.equal(fieldsOf(exportLine(tokenAt(m, 3), 'oath'))[4], '17', 'oath keeps liboath\'s own bookkeeping');
    // pam_oath wrote this one: field 5 is the counter of the code it accepted.
    const used = parseUsersFile(Buffer.from(`HOTP pat - ${K1} 40 ${rfcHotp(K1, 40)} 2026-01-01T00:00:00L\n`));
    t.equal(fieldsOf(exportLine(tokenAt(used, 0), 'mod_authn_otp'))[4], '41', 'mod_authn_otp gets the next counter: the used code does not work again');
  });

  t.test('refused, with a reason, and the reason holds no secret', async (t) => {
    const refused: [number, 'oath' | 'mod_authn_otp', RegExp][] = [
      [7, 'oath', /hashed/],
      [7, 'mod_authn_otp', /hashed/],
      [8, 'oath', /token type MOTP/],
      [9, 'oath', /33 bytes/],
      [10, 'oath', /HOTP\/T45/],
      [11, 'oath', /hotp/],
    ];
    for (const [i, format, why] of refused) {
      const problem = exportProblem(tokenAt(m, i), format);
      t.ok(problem !== undefined, `line ${i + 1} refused for ${format}`);
      t.match(problem ?? '', why);
      t.notOk((problem ?? '').includes(tokenAt(m, i).keyHex), 'no key in the reason');
      t.notOk((problem ?? '').includes('$scrypt$'), 'no PIN hash in the reason');
    }
  });
});
