// The secrets scan itself: it finds a planted secret in every spelling it
// claims to cover, its after-script fails on a leak, and this run's logs
// really reach the directory it scans.
import t from 'tap';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { basic, memoryLogger, secret, spawnOtpgate, tempDir } from './lib/harness.js';
import {
  CAPTURE_DIR, SECRETS_FILE, capturedFiles, findLeaks, keyForms, loginForms, registeredSecrets, resetCapture, scanCapture,
} from './lib/secrets.js';

const AFTER = fileURLToPath(new URL('./lib/secretsAfter.ts', import.meta.url));

t.test('findLeaks: a key in hex, base32 and base64, a login as Basic credentials, a password', async (t) => {
  // RFC 4226's key: its base32 spelling is well known.
  const forms = keyForms('3132333435363738393031323334353637383930');
  t.same(forms, ['3132333435363738393031323334353637383930', '3132333435363738393031323334353637383930',
    'GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ', 'gezdgnbvgy3tqojqgezdgnbvgy3tqojq', 'MTIzNDU2Nzg5MDEyMzQ1Njc4OTA=']);
  const key = randomBytes(20).toString('hex');
  for (const form of keyForms(key)) {
    t.same(findLeaks(`{"level":30,"msg":"line x${form}y"}\n`, keyForms(key)), [form], `found inside other text: ${form}`);
  }
  const login = loginForms('alice', 'pinAl1ceQ123456');
  t.same(login, [Buffer.from('alice:pinAl1ceQ123456').toString('base64'), 'pinAl1ceQ123456']);
  t.same(findLeaks(`Authorization: ${basic('alice', 'pinAl1ceQ123456')}`, login), [login[0]]);
  t.same(findLeaks('"password":"pinAl1ceQ123456"', login), ['pinAl1ceQ123456']);
  t.same(findLeaks('{"time":1732550400123,"pid":123456,"msg":"ok"}', [...keyForms(key), ...login]), [], 'nothing when nothing leaked');
});

t.test('findLeaks: bare codes are never secrets (they collide with times and pids); short strings are refused', async (t) => {
  t.same(loginForms('bob', '123456'), [Buffer.from('bob:123456').toString('base64')], 'a bare code: only as Basic credentials');
  t.same(loginForms('u', ''), [], 'too short to tell from chance');
  t.throws(() => findLeaks('x', ['1234567']), /shorter than 8 characters/);
  t.throws(() => secret('1234'), /shorter than 8 characters/);
});

t.test('findLeaks: many secrets, one pass, overlapping prefixes', async (t) => {
  const many = Array.from({ length: 5000 }, () => randomBytes(12).toString('base64'));
  const planted = many[4321] as string;
  const text = `${'{"level":30,"msg":"nothing here"}\n'.repeat(20_000)}${planted}\n`;
  const started = performance.now();
  t.same(findLeaks(text, many), [planted]);
  t.ok(performance.now() - started < 5000, 'fast enough for a whole run');
  t.same(findLeaks('abcdefgh-1 abcdefgh-2', ['abcdefgh-2', 'abcdefgh-3']), ['abcdefgh-2'], 'same first 8 characters');
});

/** Run the after-script on a directory, as tap runs it (with this process's TypeScript loader). */
function runAfter(dir: string): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [...process.execArgv, AFTER, dir], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stderr })));
}

t.test('the after-script fails the run on a planted leak, and passes a clean capture', async (t) => {
  const dir = join(tempDir(t), 'capture');
  resetCapture(dir);
  const pin = 'planted7Pin';
  writeFileSync(join(dir, SECRETS_FILE), `${JSON.stringify(pin)}\n${JSON.stringify(basic('alice', 'x').slice(6))}\n`);
  writeFileSync(join(dir, '1-1-memoryLogger.log'), '{"level":30,"event":"auth","user":"alice"}\n');
  const clean = await runAfter(dir);
  t.equal(clean.code, 0, clean.stderr);
  t.match(clean.stderr, /1 captured logs .* 2 secrets: no leak/);
  writeFileSync(join(dir, '2-1-otpgate-serve-stdout.log'), `{"level":30,"msg":"debug: password ${pin}123456"}\n`);
  t.same(scanCapture(dir).leaks, [{ file: '2-1-otpgate-serve-stdout.log', secret: pin }]);
  const leaked = await runAfter(dir);
  t.equal(leaked.code, 1, 'exit 1: tap fails the run');
  t.match(leaked.stderr, /2-1-otpgate-serve-stdout\.log: contains the secret "planted7Pin"/);
  t.match(leaked.stderr, /1 LEAKS/);
  const missing = await runAfter(join(dir, 'none'));
  t.equal(missing.code, 1, 'no capture directory: fails rather than passing on nothing');
});

t.test('this run is captured: loggers, child processes and registered secrets reach the scanned directory', async (t) => {
  t.ok(existsSync(CAPTURE_DIR), `tap's before script made ${CAPTURE_DIR}`);
  const marker = `wiring-${randomBytes(6).toString('hex')}`;
  memoryLogger().log.info({ event: 'wiring' }, marker);
  const child = spawnOtpgate(['--version']);
  await new Promise((resolve) => child.once('close', resolve));
  const texts = capturedFiles().map((f) => readFileSync(f, 'utf8'));
  t.ok(texts.some((x) => x.includes(marker)), 'a logger line is in a captured file');
  const version = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  t.ok(capturedFiles().some((f) => f.includes('otpgate---version-stdout') && readFileSync(f, 'utf8').includes(version.version)),
    'a child\'s stdout is in a captured file');
  const registered = `wiringSecret-${randomBytes(6).toString('hex')}`;
  secret(registered);
  t.ok(registeredSecrets().has(registered));
  t.match(readFileSync(join(CAPTURE_DIR, SECRETS_FILE), 'utf8'), JSON.stringify(registered), 'registered for the scan');
});
