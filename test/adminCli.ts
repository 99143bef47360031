// `otpgate users ...` and `otpgate otp` as real child processes on real files,
// also while a real gateway serves logins on the same file.
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chownSync, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseUsersFile, type TokenLine } from '../src/usersFileFormat.js';
import { formatLocalTime } from '../src/localTime.js';
import {
  BIN, otherOwner, request, rfcHotp, rfcTotp, secret, secretKey, spawnGateway, spawnOtpgate, startBackend, tempDir, writeFile600,
} from './lib/harness.js';
import { Redis } from 'ioredis';
import { startGateway, type Gw } from './lib/gateway.js';
import { startRedis, type RedisServer } from './lib/redis.js';

type Tap = { teardown(fn: () => void | Promise<void>): void };
interface Run { code: number | null; stdout: string; stderr: string }

/**
 * Run the CLI. `answer`: called with stdout so far; what it returns (once) is
 * written to stdin, which is then closed (how a script answers a prompt given `-`).
 */
function cli(args: string[], options: { input?: string; answer?: (stdout: string) => string | undefined } = {}): Promise<Run> {
  const piped = options.input !== undefined || options.answer !== undefined;
  // What prints keys or codes on purpose: the enrolment URI, show --uri, codes, an export to standard output.
  const showsSecrets = args[0] === 'otp' || args[1] === 'add' || args.includes('--uri') ||
    (args[1] === 'export' && !args.includes('-o'));
  const child = spawnOtpgate(args, {}, piped ? 'pipe' : 'ignore', showsSecrets);
  let stdout = '';
  let stderr = '';
  let answered = false;
  child.stdout?.on('data', (c: Buffer) => {
    stdout += c.toString();
    if (options.answer && !answered) {
      const reply = options.answer(stdout);
      if (reply !== undefined) {
        answered = true;
        child.stdin?.end(`${reply}\n`);
      }
    }
  });
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
  if (options.input !== undefined) {
    if (options.answer) child.stdin?.write(options.input);
    else child.stdin?.end(options.input);
  }
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

/** RFC 4648 base32, written here so the test does not trust src/ to read its own URI. */
function base32Hex(text: string): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const ch of text.replace(/=+$/, '')) bits += alphabet.indexOf(ch).toString(2).padStart(5, '0');
  const bytes: number[] = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  return Buffer.from(bytes).toString('hex');
}

const keyOfUri = (stdout: string): string | undefined => {
  const m = /otpauth:\/\/[^\s]*[?&]secret=([A-Z2-7]+)/.exec(stdout);
  return m ? base32Hex(m[1] as string) : undefined;
};

const tokens = (file: string): TokenLine[] =>
  parseUsersFile(readFileSync(file)).parsed.flatMap((p) => (p.kind === 'token' ? [p.token] : []));
const tokenOf = (file: string, login: string): TokenLine | undefined => tokens(file).find((x) => x.login === login);

const PIN = secret('aDm1nPin');
const KEY = secretKey(randomBytes(20).toString('hex'));
const noStackTrace = (text: string): boolean => !/\n\s+at |Error:/.test(text);

function usersFile(t: Tap, text = `# users\nHOTP bob ${PIN} ${KEY} 0\n`): string {
  return writeFile600(join(tempDir(t), 'otp-users'), text);
}

t.test('--help on every command; usage errors exit 2', async (t) => {
  const help = await cli(['users', '--help']);
  t.equal(help.code, 0);
  for (const c of ['add', 'list', 'show', 'remove', 'set-pin', 'unlock', 'logout', 'resync', 'import', 'export', 'lock']) {
    t.match(help.stdout, new RegExp(`\\n  ${c} `), `users --help lists ${c}`);
    const sub = await cli(['users', c, '--help']);
    t.equal(sub.code, 0, `users ${c} --help`);
    t.match(sub.stdout, /--file <path>/);
  }
  t.match((await cli(['users', 'add', '--help'])).stdout, /mod_authn_otp and pam_oath\s+cannot/, '--help says who cannot read a hashed PIN');
  t.equal((await cli(['otp', '--help'])).code, 0);
  const file = usersFile(t);
  for (const args of [['users', 'add'], ['users', 'export', '-f', file], ['users', 'frob'], ['users', 'list', '--nope'],
    ['otp', 'bob', '-f', file, '--count', 'x'], ['users', 'resync', 'bob', '1']]) {
    const r = await cli(args);
    t.equal(r.code, 2, `${args.join(' ')}: exit 2`);
    t.ok(noStackTrace(r.stderr));
  }
});

t.test('add: a TOTP user enrolled by a script answering the code prompt logs in through a real gateway', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), `HOTP bob ${PIN} ${KEY} 0\n`);
  const before = statSync(file);
  const pin = secret('n3wUserPin');
  let key: string | undefined;
  let first = '';
  const r = await cli(['users', 'add', 'alice', '-f', file, '--pin', '-', '--code', '-', '--issuer', 'Acme Helpdesk'], {
    input: `${pin}\n`,
    answer: (stdout) => {
      key = keyOfUri(stdout);
      if (key === undefined) return undefined;
      first = rfcTotp(key, Date.now() / 1000);
      return first;
    },
  });
  t.equal(r.code, 0, r.stderr);
  t.ok(key !== undefined && key.length === 40, 'a 20-byte key in the URI');
  t.match(r.stdout, /^otpauth:\/\/totp\/Acme%20Helpdesk:alice\?secret=[A-Z2-7]{32}&issuer=Acme%20Helpdesk/m);
  t.match(r.stdout, /alice: added to .*otp-users:2 \(HOTP\/T30, 6 digits, PIN, first code verified\)/);
  t.notOk(r.stdout.includes(pin) || r.stderr.includes(pin), 'the PIN is never echoed');
  const line = readFileSync(file, 'utf8').split('\n')[1] ?? '';
  t.match(line, new RegExp(`^HOTP/T30 alice +${pin} +${key} -?\\d+ +0 +\\d{6} +\\S+L -$`),
    'mod_authn_otp layout with a failure count; the first code recorded as used, with no IP to linger from');
  t.equal(statSync(file).mode & 0o777, before.mode & 0o777, 'mode kept');

  const backend = await startBackend(t);
  const config = writeFile600(join(dir, 'otpgate.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\n`);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  t.equal((await request(gw.port, { auth: ['alice', `${pin}${first}`] })).status, 401, 'the code that confirmed the enrolment is spent');
  // The app's next one logs in.
  const login = await request(gw.port, { auth: ['alice', `${pin}${rfcTotp(key as string, Date.now() / 1000 + 30)}`] });
  t.equal(login.status, 200, 'the enrolled user logs in with a code computed by the RFC algorithm');
  t.equal(backend.seen.at(-1)?.headers['remote-user'], 'alice');
});

t.test('add: an event token; the code that confirmed the enrolment is used up', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), '');
  let key = '';
  const r = await cli(['users', 'add', 'carol', '-f', file, '--no-pin', '--type', 'HOTP/E', '--digits', '8', '--code', '-'], {
    answer: (stdout) => {
      key = keyOfUri(stdout) ?? '';
      return key ? rfcHotp(key, 2, 8) : undefined; // the app was pressed twice before
    },
  });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /otpauth:\/\/hotp\/Helpdesk:carol\?.*counter=0/);
  t.equal(tokenOf(file, 'carol')?.typeText, 'HOTP/E/8');
  t.equal(tokenOf(file, 'carol')?.counter, 3, 'next counter after the confirming code');
  t.equal(tokenOf(file, 'carol')?.pin, '-');
  const backend = await startBackend(t);
  const config = writeFile600(join(dir, 'otpgate.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\n`);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  t.equal((await request(gw.port, { auth: ['carol', rfcHotp(key, 2, 8)] })).status, 401, 'the enrolment code does not log in');
  t.equal((await request(gw.port, { auth: ['carol', rfcHotp(key, 3, 8)] })).status, 200, 'the next one does');
});

t.test('add --hash-pins: the PIN is stored as scrypt and the gateway checks it', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), '');
  const pin = secret('h4shedPin');
  const key = secretKey(randomBytes(20).toString('hex'));
  const r = await cli(['users', 'add', 'hank', '-f', file, '--pin', '-', '--hash-pins', '--type', 'HOTP/E', '--key', key, '--code', rfcHotp(key, 0), '--no-qr'],
    { input: `${pin}\n` });
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /hank: added to .* \(HOTP\/E, 6 digits, PIN hashed, first code verified\)/);
  t.match(tokenOf(file, 'hank')?.pin ?? '', /^\$scrypt\$/);
  t.notOk(readFileSync(file, 'utf8').includes(pin), 'the PIN is not in the file');
  const backend = await startBackend(t);
  const config = writeFile600(join(dir, 'otpgate.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\n`);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  t.equal((await request(gw.port, { auth: ['hank', `${pin}x${rfcHotp(key, 1)}`] })).status, 401, 'a wrong PIN is refused');
  t.equal((await request(gw.port, { auth: ['hank', `${pin}${rfcHotp(key, 1)}`] })).status, 200, 'the right one logs in');
  const exported = await cli(['users', 'export', '-f', file, '--format', 'mod_authn_otp']);
  t.equal(exported.code, 1, 'mod_authn_otp could not check it: not exported');
});

t.test('add: refusals change nothing and say why in one line', async (t) => {
  const file = usersFile(t);
  const original = readFileSync(file);
  const cases: [string[], number, RegExp, string?][] = [
    [['users', 'add', 'bob', '-f', file, '--no-pin', '--no-verify'], 1, /^bob: already in .*otp-users \(line 2\); nothing was changed\n$/],
    [['users', 'add', 'a:b', '-f', file, '--no-pin', '--no-verify'], 2, /^"a:b": a login cannot contain ":"/],
    [['users', 'add', '#x', '-f', file, '--no-pin', '--no-verify'], 2, /cannot start with "#"/],
    [['users', 'add', 'dan', '-f', file], 2, /^no terminal to ask for the PIN; pass --pin PIN, --pin - \(read from standard input\) or --no-pin\n$/],
    [['users', 'add', 'dan', '-f', file, '--pin', 'x1'], 2, /^dan: a PIN needs at least 4 characters \(pinPolicy\.minLength\)\n$/],
    [['users', 'add', 'dan', '-f', file, '--no-pin'], 2, /^no terminal to ask for the first code; pass --code CODE/],
    [['users', 'add', 'dan', '-f', file, '--no-pin', '--code', '000000', '--key', KEY], 1, /^dan: that code does not belong to the new key/],
    [['users', 'add', 'dan', '-f', file, '--no-pin', '--type', 'MOTP'], 2, /^--type: expected an HOTP type/],
    [['users', 'add', 'dan', '-f', file, '--no-pin', '--key', 'abc'], 2, /^--key: expected 1 to 256 bytes in hex/],
  ];
  for (const [args, code, message] of cases) {
    const r = await cli(args);
    t.equal(r.code, code, `${args.slice(2).join(' ')}: exit ${code}`);
    t.match(r.stderr, message);
    t.ok(r.stderr.split('\n').length <= 2 && noStackTrace(r.stderr), 'one line');
    t.same(readFileSync(file), original, 'file unchanged');
  }
  const wrongCode = rfcTotp(KEY, Date.now() / 1000 + 3600);
  const png = `${file}.png`;
  const r = await cli(['users', 'add', 'dan', '-f', file, '--no-pin', '--key', KEY, '--code', wrongCode, '--qr-png', png]);
  t.equal(r.code, 1, 'a code an hour away is not the new token\'s');
  t.same(readFileSync(file), original);
  t.notOk(existsSync(png), 'the QR code of a key nobody will use is removed');
});

t.test('add with a config: its PIN policy, issuer and token type; --qr-png', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), '');
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    'upstream: http://127.0.0.1:9\nusersFile: otp-users\nrealm: Support\npinPolicy:\n  minLength: 6\n  digitsOnly: true\nenrolment:\n  type: HOTP/T60\n');
  const letters = await cli(['users', 'add', 'erin', '-c', config, '--pin', 'abcdefgh', '--no-verify']);
  t.equal(letters.code, 2);
  t.match(letters.stderr, /erin: a PIN may only have digits \(pinPolicy\.digitsOnly\)/);
  t.notOk(letters.stderr.includes('abcdefgh'));
  const png = join(dir, 'erin.png');
  const ok = await cli(['users', 'add', 'erin', '-c', config, '--pin', '123456', '--no-verify', '--qr', '--qr-png', png]);
  t.equal(ok.code, 0, ok.stderr);
  t.match(ok.stdout, /otpauth:\/\/totp\/Support:erin\?.*period=60/);
  t.match(ok.stdout, /[▀▄█]/, 'a QR code in the terminal');
  t.same(readFileSync(png).subarray(0, 8), Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), 'a PNG');
  t.equal(statSync(png).mode & 0o777, 0o600, 'the PNG holds the key: mode 0600');
  t.equal(tokenOf(file, 'erin')?.typeText, 'HOTP/T60');
  const again = await cli(['users', 'add', 'fay', '-c', config, '--pin', '123456', '--no-verify', '--qr-png', png]);
  t.equal(again.code, 1, 'never over an existing file');
  t.match(again.stderr, /erin\.png: cannot write the QR code \(EEXIST\)/);
});

t.test('list, show: what the file says, never keys or PINs; malformed lines named', async (t) => {
  const last = formatLocalTime(Math.floor(Date.now() / 1000) - 60);
  const file = usersFile(t, [
    `HOTP/T30 alice ${PIN} ${KEY} 0 5`,
    `HOTP bob - ${KEY} 12 0 123456 ${last} 10.0.0.7`,
    'HOTP broken x zz',
    '',
  ].join('\n'));
  const list = await cli(['users', 'list', '-f', file]);
  t.equal(list.code, 0);
  t.match(list.stdout, /^LOGIN +LINE +TYPE +COUNTER +FAILURES +PIN +LAST LOGIN +FROM +STATE$/m);
  t.match(list.stdout, /^alice +1 +HOTP\/T30 +0 +5 +plain +- +- +locked$/m);
  t.match(list.stdout, /^bob +2 +HOTP +12 +0 +none +\S+ +10\.0\.0\.7 +lingering$/m);
  t.match(list.stderr, /otp-users:3: key is not an even number of hex digits/);
  const json = await cli(['users', 'list', '-f', file, '--json']);
  const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
  t.same(rows.map((r) => [r.login, r.locked, r.lingering, r.failures]), [['alice', true, false, 5], ['bob', false, true, 0]]);
  for (const r of [list, json]) t.notOk(r.stdout.includes(KEY) || r.stdout.includes(PIN), 'no key, no PIN');
  const show = await cli(['users', 'show', 'bob', '-f', file]);
  t.match(show.stdout, /^login +bob$/m);
  t.match(show.stdout, /^from +10\.0\.0\.7$/m);
  t.notOk(show.stdout.includes(KEY));
  const noUser = await cli(['users', 'show', 'zed', '-f', file]);
  t.equal(noUser.code, 1);
  t.match(noUser.stderr, /^zed: no such user in .*otp-users\n$/);
  const broken = await cli(['users', 'show', 'broken', '-f', file]);
  t.equal(broken.code, 1);
  t.match(broken.stderr, /otp-users:3: key is not an even number of hex digits \(fix or remove the line first\)/);
});

t.test('show --uri asks before revealing the key; --yes reveals it', async (t) => {
  const key = randomBytes(20).toString('hex'); // revealed on purpose: not a registered secret
  const file = usersFile(t, `HOTP/T30 gus ${PIN} ${key} 0\n`);
  const noTty = await cli(['users', 'show', 'gus', '-f', file, '--uri']);
  t.equal(noTty.code, 2);
  t.match(noTty.stderr, /no terminal to confirm showing the key; pass --yes/);
  t.notOk(noTty.stdout.includes('otpauth'), 'nothing revealed');
  const yes = await cli(['users', 'show', 'gus', '-f', file, '--uri', '--yes']);
  t.equal(yes.code, 0);
  t.equal(keyOfUri(yes.stdout), key, 'the URI holds the key');
});

t.test('remove, set-pin, unlock, logout, resync', async (t) => {
  const last = formatLocalTime(Math.floor(Date.now() / 1000) - 30);
  const file = usersFile(t, [
    '# keep me',
    `HOTP alice ${PIN} ${KEY} 4 5 111111 ${last} 10.0.0.1`,
    `HOTP/T30 bob ${PIN} ${KEY} 0 7`,
    `HOTP bob ${PIN} ${KEY} 0`,
    'HOTP carl x zz',
    `HOTP dora ${PIN} ${KEY} 0`,
    '',
  ].join('\n'));
  const logout = await cli(['users', 'logout', 'alice', '-f', file]);
  t.equal(logout.code, 0, logout.stderr);
  t.match(logout.stdout, /alice: logged out/);
  t.equal(tokenOf(file, 'alice')?.lastIp, undefined, 'the linger\'s IP is gone');
  t.equal(tokenOf(file, 'alice')?.lastOtp, undefined, 'an event token forgets its last code');
  t.equal((await cli(['users', 'logout', 'alice', '-f', file])).stdout, 'alice: no linger recorded in the file\n');

  const unlock = await cli(['users', 'unlock', 'bob', '-f', file]);
  t.equal(unlock.code, 0);
  t.equal(tokens(file).filter((x) => x.login === 'bob')[0]?.failures, 0);
  t.match(unlock.stderr, /otp-users:4: this layout \(pam_oath's\) has no failure count/, 'says what the file cannot hold');

  const pamOnly = await cli(['users', 'unlock', 'dora', '-f', file]);
  t.equal(pamOnly.code, 1, 'a user whose lines keep no failure count: nothing to unlock in the file');
  t.match(pamOnly.stderr, /dora: no line of it keeps a failure count in the file; nothing was changed/);
  const newPin = secret('ch4ngedPin');
  const setPin = await cli(['users', 'set-pin', 'bob', '-f', file, '--pin', '-'], { input: `${newPin}\n` });
  t.equal(setPin.code, 0, setPin.stderr);
  t.same(tokens(file).filter((x) => x.login === 'bob').map((x) => x.pin), [newPin, newPin], 'every line of the user');
  const hashed = await cli(['users', 'set-pin', 'dora', '-f', file, '--pin', '-', '--hash-pins'], { input: `${newPin}\n` });
  t.equal(hashed.code, 0, hashed.stderr);
  t.match(tokenOf(file, 'dora')?.pin ?? '', /^\$scrypt\$ln=14,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
  t.match(hashed.stdout, /dora: PIN set \(hashed\) on 1 line/);

  const resync = await cli(['users', 'resync', 'alice', '-f', file, rfcHotp(KEY, 700), rfcHotp(KEY, 701)]);
  t.equal(resync.code, 0, resync.stderr);
  t.match(resync.stdout, /alice: resynchronised line 2: next counter 702, failures cleared/);
  t.equal(tokenOf(file, 'alice')?.counter, 702);
  t.equal(tokenOf(file, 'alice')?.failures, 0);
  const behind = await cli(['users', 'resync', 'alice', '-f', file, rfcHotp(KEY, 10), rfcHotp(KEY, 11)]);
  t.equal(behind.code, 1, 'a counter never goes back');
  t.match(behind.stderr, /alice: the two codes were not found one after the other/);

  const removed = await cli(['users', 'remove', 'carl', '-f', file]);
  t.equal(removed.code, 0);
  t.match(removed.stdout, /carl: removed \(line 5\)/);
  const text = readFileSync(file, 'utf8');
  t.ok(text.startsWith('# keep me\n'), 'other lines byte for byte');
  t.notOk(text.includes('carl'));
  for (const c of ['remove', 'unlock', 'logout', 'set-pin']) {
    const r = await cli(['users', c, 'nobody', '-f', file, '--no-pin'].filter((a) => c === 'set-pin' || a !== '--no-pin'));
    t.equal(r.code, 1, `${c} of an unknown login: exit 1`);
    t.match(r.stderr, /^nobody: no such user in /);
  }
  t.notOk(existsSync(`${file}.new`) || existsSync(`${file}.lock`), 'nothing left behind');
});

t.test('otp: codes as otptool prints them', async (t) => {
  const file = usersFile(t, `HOTP bob ${PIN} ${KEY} 40\nHOTP/T30 tina - ${KEY} -1\n`);
  const event = await cli(['otp', 'bob', '-f', file, '--count', '3']);
  t.equal(event.stdout, `${rfcHotp(KEY, 40)}\n${rfcHotp(KEY, 41)}\n${rfcHotp(KEY, 42)}\n`, 'from the stored counter');
  t.equal((await cli(['otp', 'bob', '-f', file, '--counter', '7'])).stdout, `${rfcHotp(KEY, 7)}\n`);
  const at = 1_800_000_000;
  t.equal((await cli(['otp', 'tina', '-f', file, '--at', String(at)])).stdout, `${rfcTotp(KEY, at - 30)}\n`, 'with the stored drift');
  t.equal((await cli(['otp', 'tina', '-f', file, '--at', new Date(at * 1000).toISOString()])).stdout, `${rfcTotp(KEY, at - 30)}\n`);
  t.same(readFileSync(file, 'utf8'), `HOTP bob ${PIN} ${KEY} 40\nHOTP/T30 tina - ${KEY} -1\n`, 'changes nothing');
  const bad = await cli(['otp', 'tina', '-f', file, '--at', 'yesterday-ish']);
  t.equal(bad.code, 2);
});

t.test('import and export: oath-toolkit and mod_authn_otp files, conflicts change nothing', async (t) => {
  const dir = tempDir(t);
  const file = usersFile(t);
  const oath = writeFile600(join(dir, 'users.oath'), `# pam_oath\nHOTP/T30 ivy ${PIN} ${KEY}\nHOTP jon - ${KEY} 3 445566 2026-01-02T03:04:05L\n`);
  const dry = await cli(['users', 'import', oath, '-f', file, '--dry-run']);
  t.equal(dry.code, 0);
  t.match(dry.stdout, /would import 2 lines for 2 users/);
  t.equal(tokens(file).length, 1, 'a dry run changes nothing');
  const imported = await cli(['users', 'import', oath, '-f', file]);
  t.equal(imported.code, 0, imported.stderr);
  t.same(tokens(file).map((x) => x.login), ['bob', 'ivy', 'jon']);
  t.ok(readFileSync(file, 'utf8').endsWith(`HOTP/T30 ivy ${PIN} ${KEY}\nHOTP jon - ${KEY} 3 445566 2026-01-02T03:04:05L\n`), 'lines as written');
  const before = readFileSync(file);
  const clash = writeFile600(join(dir, 'more'), `HOTP kim - ${KEY}\nHOTP ivy - ${KEY}\nHOTP lou zz\n`);
  const conflict = await cli(['users', 'import', clash, '-f', file]);
  t.equal(conflict.code, 1);
  t.match(conflict.stderr, /more:2: ivy is already in .*otp-users \(line 3\)/);
  t.match(conflict.stderr, /more:3: missing key field/);
  t.match(conflict.stderr, /2 conflicts; nothing was imported/);
  t.same(readFileSync(file), before, 'nothing imported, not even kim');

  const exported = await cli(['users', 'export', '-f', file, '--format', 'mod_authn_otp']);
  t.equal(exported.code, 0, exported.stderr);
  t.same(parseUsersFile(Buffer.from(exported.stdout)).parsed.flatMap((p) => (p.kind === 'token' ? [[p.token.login, p.token.fieldCount]] : [])),
    [['bob', 6], ['ivy', 6], ['jon', 6]]);
  const out = join(dir, 'export.oath');
  const toOath = await cli(['users', 'export', '-f', file, '--format', 'oath', '-o', out]);
  t.equal(toOath.code, 0, toOath.stderr);
  t.equal(statSync(out).mode & 0o777, 0o600);
  t.match(readFileSync(out, 'utf8'), new RegExp(`^HOTP +jon +- +${KEY} 3 +445566 +2026-01-02T03:04:05L$`, 'm'), 'oath layout keeps the last OTP');
  writeFileSync(file, `HOTP/T30 max $scrypt$ln=14,r=8,p=1$${'A'.repeat(22)}$${'B'.repeat(43)} ${KEY}\n`, { mode: 0o600 });
  const refused = await cli(['users', 'export', '-f', file, '--format', 'oath']);
  t.equal(refused.code, 1);
  t.match(refused.stderr, /otp-users:1: max: its PIN is hashed/);
  t.equal(refused.stdout, '', 'nothing exported');
});

t.test('lock: runs a command holding the lock; others wait for it or time out', async (t) => {
  const file = usersFile(t);
  const started = `${file}.started`;
  const sh = `touch "${started}"; sleep 4; echo "HOTP ned - 00112233 0" >> "$OTPGATE_USERS_FILE"; exit 3`;
  const holder = cli(['users', 'lock', '-f', file, '--', 'sh', '-c', sh]);
  for (let i = 0; i < 500 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(existsSync(`${file}.lock`), 'held while the command runs');
  const impatient = await cli(['users', 'remove', 'bob', '-f', file, '--lock-timeout', '1']);
  t.equal(impatient.code, 1);
  t.match(impatient.stderr, /otp-users\.lock: still locked by another program after 1s; nothing was changed/);
  const patient = cli(['users', 'remove', 'ned', '-f', file]);
  const held = await holder;
  t.equal(held.code, 3, 'the command\'s exit status');
  const removed = await patient;
  t.equal(removed.code, 0, `waited for the lock, then saw the edit made under it: ${removed.stderr}`);
  t.same(tokens(file).map((x) => x.login), ['bob']);
  const missing = await cli(['users', 'lock', '-f', file, '--', 'no-such-program-here']);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /no-such-program-here: cannot run \(ENOENT\)/);
});

t.test('lock as root: the lock file and an editor\'s new file belong to the users file\'s owner', async (t) => {
  const owner = otherOwner();
  const file = usersFile(t);
  chownSync(file, owner.uid, owner.gid);
  const started = `${file}.started`;
  // What an editor that writes a new file and renames it does: the new inode is the runner's, mode 644.
  const sh = `touch "${started}"; sleep 1; cp "$OTPGATE_USERS_FILE" "$OTPGATE_USERS_FILE.tmp" && chmod 644 "$OTPGATE_USERS_FILE.tmp" && mv "$OTPGATE_USERS_FILE.tmp" "$OTPGATE_USERS_FILE"`;
  const holder = cli(['users', 'lock', '-f', file, '--', 'sh', '-c', sh]);
  for (let i = 0; i < 500 && !existsSync(started); i++) await new Promise((r) => setTimeout(r, 20));
  const lock = statSync(`${file}.lock`);
  t.same([lock.uid, lock.gid], [owner.uid, owner.gid], `lock file owned like the users file (${owner.what})`);
  const r = await holder;
  t.equal(r.code, 0, r.stderr);
  const after = statSync(file);
  t.same([after.uid, after.gid, after.mode & 0o777], [owner.uid, owner.gid, 0o600], 'owner and mode given back');
  t.match(r.stderr, /mode 600 restored/);
});

t.test('lock: a users file swapped for a link meanwhile is not followed when owner and mode are given back', async (t) => {
  const owner = otherOwner();
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), `HOTP bob ${PIN} ${KEY} 0\n`);
  chownSync(file, owner.uid, owner.gid);
  const victim = writeFile600(join(dir, 'victim'), 'not the users file\n');
  const before = statSync(victim);
  const r = await cli(['users', 'lock', '-f', file, '--', 'sh', '-c', `ln -s "${victim}" "${file}.x" && mv -T "${file}.x" "${file}"`]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /otp-users: is now a symbolic link; owner and mode not touched/);
  const after = statSync(victim);
  t.same([after.uid, after.gid, after.mode], [before.uid, before.gid, before.mode], 'the link\'s target is untouched');
});

t.test('a refused users file: one line naming it', async (t) => {
  const file = usersFile(t);
  writeFileSync(file, readFileSync(file), { mode: 0o644 });
  const { chmodSync } = await import('node:fs');
  chmodSync(file, 0o644);
  const r = await cli(['users', 'list', '-f', file]);
  t.equal(r.code, 2);
  t.match(r.stderr, /otp-users: readable or writable by group or others \(mode 644\)/);
  const missing = await cli(['users', 'list', '-f', `${file}.nope`]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /otp-users\.nope: cannot read users file \(no such file\)/);
});

t.test('unlock reaches a running gateway: the lock in the file and the throttle\'s waits end', async (t) => {
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), `HOTP bob ${PIN} ${KEY} 0 0\n`);
  const backend = await startBackend(t);
  const slow = '{ free: 3, baseSeconds: 600, maxSeconds: 900, quietSeconds: 3600 }';
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\nmaxFailures: 3\nthrottle:\n  pair: ${slow}\n  account: ${slow}\n`);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) statuses.push((await request(gw.port, { auth: ['bob', `${PIN}00000${i}`] })).status);
  t.same(statuses, [401, 401, 401, 401, 429], 'wrong codes, then a long wait');
  t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 0)}`] })).status, 429, 'even with the right code');
  // Refusals are answered at once; their counts reach the file with the next write.
  for (let i = 0; i < 50 && (tokenOf(file, 'bob')?.failures ?? 0) < 3; i++) await new Promise((res) => setTimeout(res, 100));
  t.equal(tokenOf(file, 'bob')?.failures, 3, 'and the file says locked (a locked account\'s attempt is not counted)');
  const r = await cli(['users', 'unlock', 'bob', '-f', file]);
  t.equal(r.code, 0, r.stderr);
  let status = 0;
  for (let i = 0; i < 50 && status !== 200; i++) {
    await new Promise((res) => setTimeout(res, 100));
    status = (await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 0)}`] })).status;
  }
  t.equal(status, 200, 'the gateway saw the unlock within seconds and let bob in');
});

t.test('two adds of one login racing: exactly one wins', async (t) => {
  const file = usersFile(t);
  const runs = await Promise.all([1, 2, 3].map(() => cli(['users', 'add', 'race', '-f', file, '--no-pin', '--no-verify'])));
  t.same(runs.map((r) => r.code).sort(), [0, 1, 1]);
  t.equal(tokens(file).filter((x) => x.login === 'race').length, 1);
});

t.test('no lost update: admin edits while a real gateway records logins on the same file', async (t) => {
  const dir = tempDir(t);
  const agents = Array.from({ length: 6 }, (_, i) => `agent${i}`);
  const file = writeFile600(join(dir, 'otp-users'), agents.map((a) => `HOTP ${a} ${PIN} ${KEY} 0 0\n`).join(''));
  const backend = await startBackend(t);
  const config = writeFile600(join(dir, 'otpgate.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: otp-users\nmaxLinger: 0\n`);
  const gw = await spawnGateway(config);
  t.teardown(() => { gw.child.kill('SIGKILL'); });
  const LOGINS = 12;
  const logins = Promise.all(agents.map(async (a) => {
    let ok = 0;
    for (let c = 0; c < LOGINS; c++) if ((await request(gw.port, { auth: [a, `${PIN}${rfcHotp(KEY, c)}`] })).status === 200) ok++;
    return ok;
  }));
  const admin = (async () => {
    const codes: (number | null)[] = [];
    for (let i = 0; i < 8; i++) {
      codes.push((await cli(['users', 'add', `new${i}`, '-f', file, '--no-pin', '--no-verify'])).code);
      codes.push((await cli(['users', 'unlock', agents[i % agents.length] as string, '-f', file])).code);
    }
    return codes;
  })();
  const [ok, codes] = await Promise.all([logins, admin]);
  t.same(ok, agents.map(() => LOGINS), 'every login granted');
  t.same(codes, codes.map(() => 0), 'every admin command succeeded');
  const after = tokens(file);
  t.same(agents.map((a) => after.find((x) => x.login === a)?.counter), agents.map(() => LOGINS), 'every counter the gateway wrote is there');
  t.same(after.filter((x) => x.login.startsWith('new')).map((x) => x.login), Array.from({ length: 8 }, (_, i) => `new${i}`), 'every added user is there');
  t.same(parseUsersFile(readFileSync(file)).problems, []);
});

t.test('at a terminal: the PIN is asked twice without echo, then the code', async (t) => {
  const file = writeFile600(join(tempDir(t), 'otp-users'), '');
  const pin = secret('tTyPin4242');
  // A pseudo-terminal from Python's pty module: the CLI sees a real TTY.
  const driver = `
import os, pty, re, sys, time, hmac, hashlib, struct, base64
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], 'users', 'add', 'tess', '-f', sys.argv[2], '--no-qr', '--type', 'HOTP/E'])
seen = b''
def until(pattern):
    global seen
    deadline = time.time() + 15
    while not re.search(pattern, seen) and time.time() < deadline:
        try: seen += os.read(fd, 4096)
        except OSError: break
    return re.search(pattern, seen)
until(rb'New PIN for tess: '); time.sleep(0.2)
# An arrow key in the middle (ignored), and the second answer typed ahead in the same write.
pin = sys.argv[3].encode()
os.write(fd, pin[:3] + b'\\x1b[A' + pin[3:] + b'\\r' + pin + b'\\r')
m = until(rb'secret=([A-Z2-7]+)')
until(rb'Code shown by the app: ')
if not m:
    sys.stdout.write(seen.decode()); sys.exit(3)
sec = m.group(1).decode()
key = base64.b32decode(sec + '=' * (-len(sec) % 8))
h = hmac.new(key, struct.pack('>Q', 0), hashlib.sha1).digest(); o = h[-1] & 15
os.write(fd, ('%06d' % ((struct.unpack('>I', h[o:o+4])[0] & 0x7fffffff) % 1000000)).encode() + b'\\r')
until(rb'added to')
_, status = os.waitpid(pid, 0)
sys.stdout.write(seen.decode())
sys.exit(os.waitstatus_to_exitcode(status))
`;
  const child = spawn('env', ['-u', 'NODE_OPTIONS', 'python3', '-c', driver, BIN, file, pin]);
  let seen = '';
  child.stdout.on('data', (c: Buffer) => { seen += c.toString(); });
  child.stderr.on('data', (c: Buffer) => { seen += c.toString(); });
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  t.equal(code, 0, seen);
  t.match(seen, /tess: added to .* \(HOTP\/E, 6 digits, PIN, first code verified\)/);
  t.match(seen, /app: \d{6}\s/, 'the code is echoed');
  t.notMatch(seen, /app: (\d{6})\s+\1/, 'once: by the CLI, not also by the terminal');
  t.notOk(seen.includes(pin), 'the PIN was not echoed');
  t.equal(tokenOf(file, 'tess')?.pin, pin);
  t.equal(tokenOf(file, 'tess')?.counter, 1);
});

// store: redis: the commands work on the state the gateways share in a real
// redis-server; the users file (one copy per gateway) is never written by them.

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Shared {
  redis: RedisServer;
  gw: Gw;
  /** the CLI's copy of the users file */
  file: string;
  config: string;
  dir: string;
}

/**
 * A real redis-server, a real gateway in store: redis on its own copy of
 * `users`, and the CLI's config (same policy) on another copy.
 */
async function sharedSetup(t: Tap, users: string, policy: Record<string, unknown> = {}): Promise<Shared> {
  const redis = await startRedis(t);
  const gw = await startGateway(t, users, { config: { logLevel: 'info', ...policy, state: { store: 'redis', url: redis.url } } });
  for (let i = 0; i < 400 && !(gw.running.users.shared?.up ?? false); i++) await sleep(10);
  if (!(gw.running.users.shared?.up ?? false)) throw new Error('the gateway never connected to redis');
  const dir = tempDir(t);
  const file = writeFile600(join(dir, 'otp-users'), users);
  const yaml = Object.entries(policy).map(([k, v]) => `${k}: ${JSON.stringify(v)}\n`).join('');
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    `upstream: http://127.0.0.1:9\nusersFile: otp-users\n${yaml}state:\n  store: redis\n  url: ${redis.url}\n`);
  return { redis, gw, file, config, dir };
}

/** Retry `fn` (bounded, ~2 s) until it returns `want`; what it returned last. */
async function eventually<T>(fn: () => Promise<T>, want: T): Promise<T> {
  let got = await fn();
  for (let i = 0; i < 40 && got !== want; i++) {
    await sleep(50);
    got = await fn();
  }
  return got;
}

const tokenKeys = async (url: string): Promise<string[]> => {
  const client = new Redis(url, { lazyConnect: true });
  try {
    await client.connect();
    return (await client.keys('otpgate:token:*')).sort();
  } finally {
    client.disconnect();
  }
};

const KEY2 = secretKey(randomBytes(20).toString('hex'));
const KEY3 = secretKey(randomBytes(20).toString('hex'));

t.test('store: redis: list, show, otp and export show the counters Redis has; no users file is written', async (t) => {
  // carl's line is in pam_oath's layout: no failure count in the file, but one in Redis.
  const users = `HOTP bob ${PIN} ${KEY} 0 0\nHOTP carl ${PIN} ${KEY2} 0\nHOTP/T30 tim - ${KEY3} 0 0\n`;
  const { gw, file, config, dir } = await sharedSetup(t, users);
  for (let c = 0; c < 3; c++) t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, c)}`] })).status, 200, `bob: code ${c}`);
  t.equal((await request(gw.port, { auth: ['carl', `${PIN}${rfcHotp(KEY2, 50)}`] })).status, 401, 'carl: a wrong code');

  const json = await cli(['users', 'list', '-c', config, '--json']);
  t.equal(json.code, 0, json.stderr);
  t.equal(json.stderr, '');
  const rows = JSON.parse(json.stdout) as Record<string, unknown>[];
  t.same(rows.map((r) => [r.login, r.counter, r.failures, r.lastIp, r.lingering, r.locked]), [
    ['bob', 3, 0, '127.0.0.1', true, false],
    ['carl', 0, 1, null, false, false],
    ['tim', 0, 0, null, false, false],
  ], 'the counter, last IP and linger from Redis; a failure count for every layout');
  t.type(rows[0]?.lastLogin, 'string');
  const table = await cli(['users', 'list', '-c', config]);
  t.match(table.stdout, /^bob +1 +HOTP +3 +0 +plain +\S+ +127\.0\.0\.1 +lingering$/m);
  const show = await cli(['users', 'show', 'bob', '-c', config]);
  t.equal(show.code, 0, show.stderr);
  t.match(show.stdout, /^counter +3$/m);
  t.match(show.stdout, /^from +127\.0\.0\.1$/m);
  t.match(show.stdout, /^state +lingering$/m);
  for (const r of [json, table, show]) t.notOk(r.stdout.includes(KEY) || r.stdout.includes(PIN), 'no key, no PIN');
  const otp = await cli(['otp', 'bob', '-c', config, '--count', '2']);
  t.equal(otp.stdout, `${rfcHotp(KEY, 3)}\n${rfcHotp(KEY, 4)}\n`, 'otp: from the counter Redis has');
  // -f with a redis config: the config's state store, this file.
  const other = await cli(['users', 'show', 'bob', '-c', config, '-f', file, '--json']);
  t.equal((JSON.parse(other.stdout) as Record<string, unknown>[])[0]?.counter, 3);

  const exported = join(dir, 'back-to-file');
  const r = await cli(['users', 'export', '--format', 'mod_authn_otp', '-c', config, '-o', exported]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stderr, /back-to-file: 3 lines written/);
  const back = tokens(exported);
  t.same(back.map((x) => [x.login, x.counter, x.failures, x.fieldCount]), [['bob', 3, 0, 9], ['carl', 0, 1, 6], ['tim', 0, 0, 6]],
    'Redis\'s counters and failure counts in mod_authn_otp\'s layout');
  t.equal(back[0]?.lastOtp, rfcHotp(KEY, 2));
  t.equal(back[0]?.lastIp, '127.0.0.1');
  t.same(readFileSync(file, 'utf8'), users, 'the CLI\'s users file is unchanged, byte for byte');
  t.same(readFileSync(gw.usersPath, 'utf8'), users, 'the gateway\'s too');

  // The way back: a gateway on the exported file (store: file) goes on from Redis's counter.
  const backend = await startBackend(t);
  const fileConfig = writeFile600(join(dir, 'file.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: back-to-file\n`);
  const fileGw = await spawnGateway(fileConfig);
  t.teardown(() => { fileGw.child.kill('SIGKILL'); });
  t.equal((await request(fileGw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 1)}`] })).status, 401, 'a code used under Redis stays used');
  t.equal((await request(fileGw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 3)}`] })).status, 200, 'the next one logs in');
});

t.test('store: redis: unlock clears the count in Redis and the gateways\' throttles forget the account', async (t) => {
  const slow = { free: 3, baseSeconds: 600, maxSeconds: 900, quietSeconds: 3600 };
  const { gw, file, config } = await sharedSetup(t, `HOTP bob ${PIN} ${KEY} 0 0\n`, { maxFailures: 3, throttle: { pair: slow, account: slow } });
  const good = `${PIN}${rfcHotp(KEY, 0)}`;
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) statuses.push((await request(gw.port, { auth: ['bob', `${PIN}00000${i}`] })).status);
  t.equal(statuses.at(-1), 429, `wrong codes, then a long wait (${statuses.join(', ')})`);
  t.not((await request(gw.port, { auth: ['bob', good] })).status, 200, 'even the right code is refused');
  // The refusals' counts reach Redis just after they are answered.
  const locked = async (): Promise<unknown> => (JSON.parse((await cli(['users', 'list', '-c', config, '--json'])).stdout) as Record<string, unknown>[])[0]?.locked;
  t.equal(await eventually(locked, true), true, 'list says locked');
  const r = await cli(['users', 'unlock', 'bob', '-c', config]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'bob: failure count cleared\n');
  t.equal(r.stderr, '', 'no note: Redis keeps a count for every layout');
  t.equal(await locked(), false);
  t.equal(await eventually(async () => (await request(gw.port, { auth: ['bob', good] })).status, 200), 200,
    'the gateway lets bob in again: no lock in Redis, no wait in its throttle');
  t.equal(tokenOf(file, 'bob')?.failures, 0, 'the users file was not needed');
});

t.test('store: redis: logout ends the linger on the gateway; set-pin does too', async (t) => {
  const { gw, config } = await sharedSetup(t, `HOTP bob ${PIN} ${KEY} 0 0\n`);
  const pw = `${PIN}${rfcHotp(KEY, 0)}`;
  t.equal((await request(gw.port, { auth: ['bob', pw] })).status, 200, 'fresh login');
  t.equal((await request(gw.port, { auth: ['bob', pw] })).status, 200, 'the linger rides (and is cached by the gateway)');
  const r = await cli(['users', 'logout', 'bob', '-c', config]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'bob: logged out\n');
  t.equal(await eventually(async () => (await request(gw.port, { auth: ['bob', pw] })).status, 401), 401,
    'the same credentials no longer ride');
  t.equal((await cli(['users', 'logout', 'bob', '-c', config])).stdout, 'bob: no linger recorded\n');
  t.equal((await request(gw.port, { auth: ['bob', pw] })).status, 401, 'the code stays used');

  const pw1 = `${PIN}${rfcHotp(KEY, 1)}`;
  t.equal((await request(gw.port, { auth: ['bob', pw1] })).status, 200, 'the next code logs in');
  const pin = secret('n3wSharedPin');
  const setPin = await cli(['users', 'set-pin', 'bob', '-c', config, '--pin', '-'], { input: `${pin}\n` });
  t.equal(setPin.code, 0, setPin.stderr);
  t.match(setPin.stdout, /^bob: PIN set on 1 line\n$/);
  t.match(setPin.stderr, /copy the users file to every gateway/);
  t.equal(await eventually(async () => (await request(gw.port, { auth: ['bob', pw1] })).status, 401), 401,
    'the linger with the old PIN ends, even on a gateway whose copy has the old PIN still');
});

t.test('store: redis: resync searches from where Redis is and writes there', async (t) => {
  const { gw, file, config } = await sharedSetup(t, `HOTP bob ${PIN} ${KEY} 0 0\nHOTP/T30 tim - ${KEY2} 0 0\n`);
  for (let c = 0; c < 3; c++) t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, c)}`] })).status, 200);
  const behind = await cli(['users', 'resync', 'bob', '-c', config, rfcHotp(KEY, 1), rfcHotp(KEY, 2)]);
  t.equal(behind.code, 1, 'codes used under Redis are behind its counter (the file\'s says 0)');
  t.match(behind.stderr, /^bob: the two codes were not found one after the other .*nothing was changed\n$/);
  const r = await cli(['users', 'resync', 'bob', '-c', config, rfcHotp(KEY, 700), rfcHotp(KEY, 701)]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'bob: resynchronised line 1: next counter 702, failures cleared\n');
  t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 701)}`] })).status, 401, 'the codes given are used');
  t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 702)}`] })).status, 200, 'the gateway goes on after them');
  t.equal(tokenOf(file, 'bob')?.counter, 0, 'the users file is not written');

  const step = Math.floor(Date.now() / 1000 / 30);
  const time = await cli(['users', 'resync', 'tim', '-c', config, rfcHotp(KEY2, step + 20), rfcHotp(KEY2, step + 21)]);
  t.equal(time.code, 0, time.stderr);
  t.match(time.stdout, /^tim: resynchronised line 2: offset 2[01] steps, failures cleared\n$/);
  t.equal((await request(gw.port, { auth: ['tim', rfcHotp(KEY2, step + 21)] })).status, 401, 'the second code is used');
  t.equal((await request(gw.port, { auth: ['tim', rfcHotp(KEY2, step + 22)] })).status, 200, 'a clock 10 minutes ahead logs in');
  const again = await cli(['users', 'resync', 'tim', '-c', config, rfcHotp(KEY2, step + 20), rfcHotp(KEY2, step + 21)]);
  t.equal(again.code, 1, 'used codes never resync again');
});

t.test('store: redis: remove edits the file, ends the user\'s lingers and keeps its records (no fallback to an older copy)', async (t) => {
  const { redis, gw, file, config } = await sharedSetup(t, `HOTP bob ${PIN} ${KEY} 0 0\nHOTP ann ${PIN} ${KEY2} 0 0\n`);
  t.equal((await request(gw.port, { auth: ['bob', `${PIN}${rfcHotp(KEY, 0)}`] })).status, 200);
  t.equal((await request(gw.port, { auth: ['ann', `${PIN}${rfcHotp(KEY2, 0)}`] })).status, 200);
  const before = await tokenKeys(redis.url);
  t.equal(before.length, 2, 'a record per token line');
  const r = await cli(['users', 'remove', 'bob', '-c', config]);
  t.equal(r.code, 0, r.stderr);
  t.equal(r.stdout, 'bob: removed (line 1)\n');
  t.match(r.stderr, /copy the users file to every other gateway now/);
  t.same(tokens(file).map((x) => x.login), ['ann']);
  t.same(await tokenKeys(redis.url), before, 'the records stay');
  const client = new Redis(redis.url).on('error', () => undefined);
  t.teardown(() => { client.disconnect(); });
  const ips = await Promise.all(before.map((k) => client.hget(k, 'i')));
  t.same(ips.filter((ip) => ip !== null), ['127.0.0.1'], 'bob\'s linger ended (no IP), ann\'s goes on');
  const list = JSON.parse((await cli(['users', 'list', '-c', config, '--json'])).stdout) as Record<string, unknown>[];
  t.same(list.map((x) => [x.login, x.counter]), [['ann', 1]]);
  const add = await cli(['users', 'add', 'dan', '-c', config, '--no-pin', '--no-verify', '--no-qr']);
  t.equal(add.code, 0, add.stderr);
  t.match(add.stderr, /copy the users file to every gateway \(each reads its own copy\)/);
});

t.test('store: redis unreachable: one line naming the store, nothing changed', async (t) => {
  const { redis, file, config, dir } = await sharedSetup(t, `HOTP bob ${PIN} ${KEY} 0 0\n`);
  await redis.kill();
  const original = readFileSync(file);
  const out = join(dir, 'export');
  for (const args of [['list'], ['show', 'bob'], ['unlock', 'bob'], ['logout', 'bob'], ['resync', 'bob', '123456', '234567'],
    ['remove', 'bob'], ['set-pin', 'bob', '--no-pin'], ['export', '--format', 'oath', '-o', out]]) {
    const r = await cli(['users', ...args, '-c', config]);
    t.equal(r.code, 1, `${args[0]}: exit 1`);
    t.match(r.stderr, new RegExp(`^state store redis://127\\.0\\.0\\.1:${redis.port} unreachable \\(ECONNREFUSED\\); nothing was changed\\n$`),
      `${args[0]}: one line naming the store`);
    t.equal(r.stdout, '');
    t.same(readFileSync(file), original, 'the users file is unchanged');
  }
  t.notOk(existsSync(out), 'no export written');
  const withPassword = writeFile600(join(dir, 'secret.yaml'),
    `upstream: http://127.0.0.1:9\nusersFile: otp-users\nstate:\n  store: redis\n  url: redis://:${secret('redisPassw0rd')}@127.0.0.1:${redis.port}\n`);
  const r = await cli(['users', 'list', '-c', withPassword]);
  t.equal(r.code, 1);
  t.match(r.stderr, /^state store redis:\/\/:\*\*\*@127\.0\.0\.1:\d+ unreachable/, 'the password is never printed');
});
