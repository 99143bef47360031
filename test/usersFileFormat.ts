import t from 'tap';
import {
  formatLine, layoutStoresFailures, lineState, pamOathReadable, parseLine, parseTokenType, parseUsersFile, parseUsersFileInSlices,
  withChangedLines, writtenFieldCount, type LineState, type TokenLine,
} from '../src/usersFileFormat.js';
import { parseLocalTime } from '../src/localTime.js';
import type { UsersFileModel } from '../src/usersFileFormat.js';

const lineCount = (model: UsersFileModel): number => model.starts.length - 1;
const lineBytes = (model: UsersFileModel, i: number): Buffer => model.bytes.subarray(model.starts[i], model.starts[i + 1]);

const KEY = '8a2d55707a9084982649dadc04b426a06df19ab2';

function token(line: string): TokenLine {
  const p = parseLine(line, 1);
  if (p.kind !== 'token') throw new Error(`not a token line: ${line} (${p.kind === 'invalid' ? p.reason : 'none'})`);
  return p.token;
}

t.test('token types', async (t) => {
  t.same(parseTokenType('HOTP'), { algorithm: 'HOTP', stepSeconds: 0, digits: 6 });
  t.same(parseTokenType('HOTP/E'), { algorithm: 'HOTP', stepSeconds: 0, digits: 6 });
  t.same(parseTokenType('HOTP/E/8'), { algorithm: 'HOTP', stepSeconds: 0, digits: 8 });
  t.same(parseTokenType('HOTP/T30'), { algorithm: 'HOTP', stepSeconds: 30, digits: 6 });
  t.same(parseTokenType('HOTP/T60/5'), { algorithm: 'HOTP', stepSeconds: 60, digits: 5 });
  t.same(parseTokenType('hotp/T30/10'), { algorithm: 'HOTP', stepSeconds: 30, digits: 10 }, 'algorithm is case-insensitive');
  t.same(parseTokenType('MOTP'), { algorithm: 'MOTP', stepSeconds: 10, digits: 6 });
  t.same(parseTokenType('MOTP/E'), { algorithm: 'MOTP', stepSeconds: 0, digits: 6 });
  t.same(parseTokenType('E'), { algorithm: 'HOTP', stepSeconds: 0, digits: 6 }, 'mod_authn_otp legacy E');
  t.same(parseTokenType('T'), { algorithm: 'HOTP', stepSeconds: 30, digits: 6 }, 'mod_authn_otp legacy T');
  for (const bad of ['TOTP', 'HOTP/X', 'HOTP/T', 'HOTP/T0', 'HOTP/t30', 'HOTP/T30/0', 'HOTP/T30/11', 'HOTP/E/6/1', 'HOTP/T-5', '']) {
    t.equal(parseTokenType(bad), undefined, `refuses ${JSON.stringify(bad)}`);
  }
});

t.test('every layout of users-file.md parses', async (t) => {
  const t4 = token(`HOTP wilma 5678 ${KEY}`);
  t.match(t4, { login: 'wilma', pin: '5678', counter: 0, fieldCount: 4 });
  t.equal(t4.lastOtp, undefined);
  const t5 = token(`HOTP/T30 joe - ${KEY} -2`);
  t.match(t5, { login: 'joe', pin: '-', counter: -2, fieldCount: 5 });
  const t6 = token(`HOTP fred 1111 ${KEY} 7 3`);
  t.match(t6, { counter: 7, failures: 3, fieldCount: 6 });
  const t7 = token(`HOTP/E/8 silver 4711 3132333435363738393031323334353637383930 2 072768 2006-12-07T00:00:00L`);
  t.match(t7, { counter: 2, lastOtp: '072768', lastTime: parseLocalTime('2006-12-07T00:00:00L'), fieldCount: 7, liboathLayout: true });
  t.equal(t7.lastIp, undefined);
  t.equal(t7.failures, undefined);
  const t8 = token(`HOTP bob 1 ${KEY} 21 820658 2009-06-12T17:52:32L 10.1.2.3`);
  t.match(t8, { lastOtp: '820658', lastIp: '10.1.2.3', fieldCount: 8, liboathLayout: false });
  const t9 = token(`HOTP    barney  1234  ${KEY} 21  0 820658  2009-06-12T17:52:32L 192.168.1.1`);
  t.match(t9, { counter: 21, failures: 0, lastOtp: '820658', lastIp: '192.168.1.1', fieldCount: 9 });
  const tabs = token(`HOTP\t\tann\t-\t${KEY}\t3`);
  t.match(tabs, { login: 'ann', counter: 3 });
  const indented = token(`   HOTP carl - ${KEY}`);
  t.equal(indented.login, 'carl', 'leading blanks are allowed');
});

t.test('lines that carry no user', async (t) => {
  for (const line of ['', '   ', '\t', '# comment', '   # indented comment', '#HOTP x - 00']) {
    t.same(parseLine(line, 1), { kind: 'none' }, JSON.stringify(line));
  }
});

t.test('malformed lines: a reason, and the login when there is one', async (t) => {
  const cases: [string, RegExp, string | undefined][] = [
    [`TOTP al - ${KEY}`, /invalid token type/, 'al'],
    ['HOTP', /missing user/, undefined],
    ['HOTP al', /missing PIN/, 'al'],
    ['HOTP al -', /missing key/, 'al'],
    ['HOTP al - xyz123', /hex/, 'al'],
    ['HOTP al - abc', /hex/, 'al'],
    [`HOTP al - ${KEY} 1x`, /counter/, 'al'],
    [`HOTP al - ${KEY} -1`, /counter/, 'al'],
    [`HOTP/T30 al - ${KEY} 1.5`, /time offset/, 'al'],
    [`HOTP al - ${KEY} 1 x`, /failure count/, 'al'],
    [`HOTP al - ${KEY} 1 123456 yesterday`, /timestamp/, 'al'],
    [`HOTP al - ${KEY} 1 123456 2009-06-12T17:52:32 1.2.3.4`, /timestamp/, 'al'],
    [`HOTP al - ${KEY} 1 123456 2009-02-30T17:52:32L 1.2.3.4`, /timestamp/, 'al'],
    [`HOTP al - ${KEY} 1 0 123456 2009-06-12T17:52:32L 1.2.3.4 extra`, /too many fields/, 'al'],
    [`HOTP al - ${KEY} 1 -3`, /failure count/, 'al'],
    [`HOTP al\u0001 - ${KEY}`, /control/, 'al\u0001'],
  ];
  for (const [line, reason, login] of cases) {
    const p = parseLine(line, 7);
    t.equal(p.kind, 'invalid', line);
    if (p.kind === 'invalid') {
      t.match(p.reason, reason, line);
      t.equal(p.login, login, `login of ${line}`);
    }
  }
});

t.test('pam_oath readability', async (t) => {
  t.ok(pamOathReadable(token(`HOTP a - ${KEY}`)));
  t.ok(pamOathReadable(token(`HOTP/E/8 a - ${KEY}`)));
  t.ok(pamOathReadable(token(`HOTP/T30 a - ${KEY}`)));
  t.ok(pamOathReadable(token(`HOTP/T60/7 a - ${KEY}`)));
  t.notOk(pamOathReadable(token(`HOTP/T45 a - ${KEY}`)), 'pam_oath knows T30 and T60 only');
  t.notOk(pamOathReadable(token(`HOTP/E/5 a - ${KEY}`)));
  t.notOk(pamOathReadable(token(`hotp a - ${KEY}`)), 'pam_oath is case-sensitive');
  t.notOk(pamOathReadable(token(`MOTP a - ${KEY}`)));
  t.notOk(pamOathReadable(token(`HOTP a - ${'ab'.repeat(33)}`)), 'keys over 32 bytes');
});

t.test('the layout a changed line is written in (users-file.md, normative)', async (t) => {
  const used: LineState = { counter: 5, failures: 0, lastOtp: '123456', lastTime: 1_700_000_000, lastIp: '10.0.0.1' };
  const failed: LineState = { counter: 5, failures: 2 };
  const cases: [string, number, number][] = [
    // line, fields after a login, fields after a failure only
    [`HOTP/E/8 s 1 ${KEY} 2 072768 2006-12-07T00:00:00L`, 7, 5],
    [`HOTP a 1 ${KEY}`, 8, 5],
    [`HOTP/T30 a 1 ${KEY} 0`, 8, 5],
    [`HOTP a 1 ${KEY} 1 123 2009-06-12T17:52:32L 1.2.3.4`, 8, 5],
    [`HOTP a 1 ${KEY} 1 0 123 2009-06-12T17:52:32L 1.2.3.4`, 9, 6],
    [`HOTP a 1 ${KEY} 1 3`, 9, 6],
    [`MOTP a 1 ${KEY}`, 9, 6],
    [`HOTP/T45 a 1 ${KEY} 0`, 9, 6],
    [`hotp a 1 ${KEY}`, 9, 6],
  ];
  for (const [line, afterLogin, afterFailure] of cases) {
    const tok = token(line);
    t.equal(writtenFieldCount(tok, used), afterLogin, `login on ${tok.fieldCount}-field ${tok.typeText}`);
    t.equal(writtenFieldCount(tok, failed), afterFailure, `failure on ${tok.fieldCount}-field ${tok.typeText}`);
    t.equal(layoutStoresFailures(tok), afterFailure === 6, `failures stored for ${line.slice(0, 12)}`);
    // What is written parses back to the same state, in the promised layout.
    for (const state of [used, failed]) {
      const again = token(formatLine(tok, state));
      t.equal(again.fieldCount, writtenFieldCount(tok, state));
      t.equal(again.counter, state.counter);
      t.equal(again.lastOtp, state.lastOtp);
      t.equal(again.lastTime, state.lastTime);
      if (again.fieldCount >= 8) t.equal(again.lastIp, state.lastIp);
      if (layoutStoresFailures(tok)) t.equal(again.failures ?? 0, state.failures);
    }
    // After a logout: the code stays recorded as used, without an IP, in the same layout.
    const loggedOut: LineState = { counter: tok.type.stepSeconds > 0 ? -2 : 2, failures: 3, lastOtp: '123456', lastTime: 1_700_000_000 };
    const after = token(formatLine(tok, loggedOut));
    t.equal(after.fieldCount, afterLogin, `logout keeps the ${afterLogin}-field layout of ${line.slice(0, 12)}`);
    t.equal(after.liboathLayout, tok.liboathLayout, 'field 5 keeps its meaning');
    t.equal(after.lastIp, undefined, 'no IP: it never lingers');
    t.equal(after.lastOtp, '123456');
    if (layoutStoresFailures(tok)) t.equal(after.failures, 3, 'the failure count stays');
  }
});

t.test('formatLine keeps type, login, PIN and key exactly as written', async (t) => {
  const tok = token(`hotp/T30/8 Ölaf pïn ${KEY.toUpperCase()} 0`);
  const text = formatLine(tok, { counter: -1, failures: 0, lastOtp: '12345678', lastTime: 1_700_000_000, lastIp: '::1' });
  t.match(text, /^hotp\/T30\/8 Ölaf\s+pïn\s+8A2D55/);
  t.notMatch(text, /\s$/, 'no trailing blanks');
});

const SAMPLE = Buffer.from([
  '# OTP users, maintained by hand and by mod_authn_otp\r\n',
  '\r\n',
  `HOTP    barney  1234  ${KEY} 21  0 820658  2009-06-12T17:52:32L 192.168.1.1\r\n`,
  `HOTP/T30 joe    -     ef654fccdef654fccc4a4d8acbd18db4cc2f85ce -2\n`,
  `  HOTP\twilma\t5678\ta4d8acbddef654fccc418db4cc2f85cea6339f00\n`,
  'this line is broken\n',
  `HOTP/E/8 silver 4711 3132333435363738393031323334353637383930 2 072768 2006-12-07T00:00:00L\n`,
  `HOTP/E/8 silver 9999 3132333435363738393031323334353637383930 0\n`,
  `HOTP broken 1 zz\n`,
  `HOTP/T30 last - ${KEY} 0`,
].join(''), 'utf8');

t.test('a whole file: index, problems, refused users; serialise is byte for byte', async (t) => {
  const model = parseUsersFile(SAMPLE);
  t.equal(lineCount(model), 10);
  t.equal(lineBytes(model, 1).toString(), '\r\n');
  t.same([...model.index.keys()], ['barney', 'joe', 'wilma', 'silver', 'last']);
  t.same(model.index.get('silver'), [6, 7], 'several lines per user, in file order');
  t.same(model.problems.map((p) => p.line), [6, 9]);
  t.ok(model.refused.has('broken'));
  t.ok(model.refused.has('line'), 'the second field of a broken line names its user');
  t.equal(model.tokenCount, 6);
});

t.test('changing a line rewrites only that line, keeping its terminator', async (t) => {
  const model = parseUsersFile(SAMPLE);
  const barney = model.parsed[2];
  if (barney?.kind !== 'token') throw new Error('barney');
  const next = withChangedLines(model, new Map([[2, { ...lineState(barney.token), counter: 22, lastOtp: '111111', lastTime: 1_700_000_000, lastIp: '10.0.0.9' }]]));
  const before = SAMPLE.toString('utf8').split(/(?<=\n)/);
  const after = next.bytes.toString('utf8').split(/(?<=\n)/);
  t.equal(after.length, before.length);
  for (let i = 0; i < before.length; i++) {
    if (i === 2) {
      t.match(after[i], /^HOTP\s+barney\s+1234\s+8a2d.*\s22\s+0\s+111111\s+\S+L 10\.0\.0\.9\r\n$/);
    } else t.equal(after[i], before[i], `line ${i + 1} untouched`);
  }
  const last = withChangedLines(model, new Map([[9, { counter: 1, failures: 0 }]]));
  t.notMatch(last.bytes.toString('utf8'), /\n$/, 'a last line without newline stays without');
  t.throws(() => withChangedLines(model, new Map([[5, { counter: 1, failures: 0 }]])), 'only token lines change');
});

t.test('after several changes the model equals a fresh parse of its bytes', async (t) => {
  const model = parseUsersFile(SAMPLE);
  const changes = new Map<number, LineState>([
    [2, { counter: 123456789, failures: 12, lastOtp: '999999', lastTime: 1_700_000_000, lastIp: '2001:db8::1' }],
    [4, { counter: 1, failures: 0 }],
    [9, { counter: 7, failures: 0, lastOtp: '1', lastTime: 1_700_000_000, lastIp: '1.1.1.1' }],
  ]);
  const next = withChangedLines(model, changes);
  const fresh = parseUsersFile(next.bytes);
  t.same([...next.starts], [...fresh.starts], 'line offsets follow the changed lengths');
  for (let i = 0; i < lineCount(next); i++) {
    const a = next.parsed[i];
    const b = fresh.parsed[i];
    t.equal(a?.kind, b?.kind, `line ${i + 1}`);
    if (a?.kind === 'token' && b?.kind === 'token') {
      t.same([a.token.counter, a.token.lastOtp, a.token.lastTime, a.token.lastIp, a.token.fieldCount],
        [b.token.counter, b.token.lastOtp, b.token.lastTime, b.token.lastIp, b.token.fieldCount]);
    }
    t.ok(lineBytes(next, i).equals(lineBytes(fresh, i)));
  }
  t.ok(lineBytes(next, 5).equals(lineBytes(model, 5)), 'the broken line between changes is untouched');
});

t.test('non-UTF-8 bytes: the line is refused and kept byte for byte', async (t) => {
  const bytes = Buffer.concat([
    Buffer.from(`HOTP ok - ${KEY}\n`), Buffer.from([0x48, 0x4f, 0x54, 0x50, 0x20, 0x62, 0xe9, 0x20, 0x2d, 0x20, 0x30, 0x30, 0x0a]),
    Buffer.from('# caf\xe9\n', 'latin1'),
  ]);
  const model = parseUsersFile(bytes);
  t.ok(model.bytes.equals(bytes));
  t.same(model.problems.map((p) => p.reason), ['line is not valid UTF-8'], 'a comment in latin1 is still a comment');
  t.equal(model.refused.size, 0, 'a login that is not UTF-8 names nobody who could log in');
  t.ok(model.index.has('ok'));
});

t.test('a reason never echoes a field that may hold a key (a line with a field too many)', async (t) => {
  const second = 'a1b2c3d4e5f6a7b8c9d0a1b2c3d4e5f6a7b8c9d0';
  for (const line of [`HOTP al 1234 ${KEY} ${second}`, `HOTP al 1234 ${KEY} 0 ${second}`]) {
    const p = parseLine(line, 1);
    t.equal(p.kind, 'invalid');
    if (p.kind === 'invalid') t.notMatch(p.reason, /a1b2c3/, `not in "${p.reason}"`);
  }
});

// A field of the right form (pinHash.ts's known vector); parsing checks the form only.
const HASHED = '$scrypt$ln=14,r=8,p=1$AAECAwQFBgcICQoLDA0ODw$WN+87vPtGO4o1fwEttloKNIwtqGZqnsfkSCWNJhrpMg';

t.test('a hashed PIN: kept as written; a malformed one or one on an MOTP line refuses the line, unechoed', async (t) => {
  t.match(token(`HOTP/T30 ann ${HASHED} ${KEY} 0`), { login: 'ann', pin: HASHED });
  t.equal(token(`HOTP ann $ecret ${KEY}`).pin, '$ecret', 'a plain PIN may start with $');
  const tok = token(`HOTP ann ${HASHED} ${KEY} 0 0`);
  t.equal(token(formatLine(tok, { counter: 9, failures: 2 })).pin, HASHED, 'a changed line keeps the hash');
  const malformed = [
    HASHED.slice(0, -1), `${HASHED}=`, HASHED.replace('ln=14', 'ln=30'), HASHED.replace('ln=14', 'ln=18').replace('r=8', 'r=64'),
    '$scrypt$', '$scrypt$ln=14,r=8,p=1$s3cretPIN',
  ];
  for (const field of malformed) {
    const p = parseLine(`HOTP ann ${field} ${KEY} 0`, 3);
    t.match(p, { kind: 'invalid', reason: 'malformed hashed PIN (field 3)', login: 'ann' }, field);
    if (p.kind === 'invalid') t.notOk(p.reason.includes(field), 'the field is not echoed');
  }
  t.notOk(JSON.stringify(parseLine(`HOTP ann $scrypt$ln=14,r=8,p=1$s3cretPIN ${KEY} 0`, 3)).includes('s3cret'));
  for (const type of ['MOTP', 'MOTP/E', 'motp/T10/6']) {
    t.match(parseLine(`${type} ann ${HASHED} ${KEY}`, 1),
      { kind: 'invalid', reason: 'an MOTP PIN cannot be hashed (it is part of the code)', login: 'ann' }, type);
  }
});

t.test('the model counts the token lines whose PIN is hashed', async (t) => {
  const text = [
    `HOTP a ${HASHED} ${KEY}`, `HOTP/T30 b ${HASHED} ${KEY} 0 0`, `HOTP c 1234 ${KEY}`, `HOTP d - ${KEY}`,
    `# HOTP e ${HASHED} ${KEY}`, `HOTP f ${HASHED.slice(0, -2)} ${KEY}`, `MOTP g ${HASHED} ${KEY}`, '',
  ].join('\n');
  const model = parseUsersFile(Buffer.from(text));
  t.equal(model.hashedPins, 2, 'valid token lines only: not a comment, not a refused line');
  t.equal(model.tokenCount, 4);
  t.same(model.problems.map((p) => p.line), [6, 7]);
  t.equal((await parseUsersFileInSlices(Buffer.from(text), 2)).hashedPins, 2, 'parsed in slices: the same count');
  t.equal(parseUsersFile(Buffer.from(`HOTP c 1234 ${KEY}\n`)).hashedPins, 0);
  const changed = withChangedLines(model, new Map([[0, { counter: 5, failures: 0, lastOtp: '123456', lastTime: 1_700_000_000, lastIp: '::1' }]]));
  t.equal(changed.hashedPins, 2, 'a written change keeps the count');
  t.equal(parseUsersFile(changed.bytes).hashedPins, 2, 'as a fresh parse of the written bytes says');
});

t.test('a PIN field holding another program\'s hash is refused, not taken as a plain PIN', async (t) => {
  for (const pin of ['$2y$10$abcdefghijklmnopqrstuv', '$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA', '$6$salt$hash']) {
    const p = parseLine(`HOTP a ${pin} ${KEY}`, 1);
    t.match(p, { kind: 'invalid', reason: 'unsupported PIN hash (field 3: otpgate reads $scrypt$ hashes only)' });
  }
  t.match(parseLine(`HOTP a $ecret ${KEY}`, 1), { kind: 'token' }, 'a plain PIN may still start with $');
});

