// Secrets never leave: every test process appends the raw log text it
// captures (gateways in-process and as child processes) and the secrets it
// uses to one directory per tap run; after the last test file, tap runs
// secretsAfter.ts, which fails the run if any secret turns up in any log.
// Test files run in parallel processes, so a directory (not memory) is where
// they meet; tap's `before` script empties it at the start of each run.
import { appendFileSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Under .tap/ (tap's own, git-ignored): per checkout, so parallel checkouts do not mix. */
export const CAPTURE_DIR = fileURLToPath(new URL('../../.tap/otpgate-log-capture', import.meta.url));
export const SECRETS_FILE = 'secrets.jsonl';

/** Shorter strings turn up in logs by chance (a time, a port, a pid): register only what cannot. */
export const MIN_SECRET = 8;

function longEnough(s: string): string {
  if (s.length < MIN_SECRET) throw new Error(`secret "${s}" is shorter than ${MIN_SECRET} characters: it would match by chance`);
  return s;
}

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
function base32(bytes: Buffer): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  return bits > 0 ? out + BASE32[(value << (5 - bits)) & 31] : out;
}

/** A token key as it could leak: hex either case, base32 (authenticator apps) either case, base64. */
export function keyForms(keyHex: string): string[] {
  const key = Buffer.from(keyHex, 'hex');
  return [keyHex.toLowerCase(), keyHex.toUpperCase(), base32(key), base32(key).toLowerCase(), key.toString('base64')];
}

/**
 * A login as it could leak: the Basic credentials (base64 of `user:password`),
 * and the password itself unless it is too short or only digits (a bare code).
 */
export function loginForms(user: string, password: string): string[] {
  const forms = [Buffer.from(`${user}:${password}`, 'utf8').toString('base64')];
  if (password.length >= MIN_SECRET && /\D/.test(password)) forms.push(password);
  return forms.filter((f) => f.length >= MIN_SECRET);
}

/**
 * The secrets that occur in `text`. One pass over the text whatever the number
 * of secrets (a run registers thousands of logins): candidates are found by
 * their first MIN_SECRET characters, then compared in full.
 */
export function findLeaks(text: string, secrets: Iterable<string>): string[] {
  const byPrefix = new Map<string, string[]>();
  for (const s of secrets) {
    const prefix = longEnough(s).slice(0, MIN_SECRET);
    byPrefix.set(prefix, [...(byPrefix.get(prefix) ?? []), s]);
  }
  const found = new Set<string>();
  for (let i = 0; i + MIN_SECRET <= text.length; i++) {
    const candidates = byPrefix.get(text.slice(i, i + MIN_SECRET));
    if (candidates) for (const s of candidates) if (text.startsWith(s, i)) found.add(s);
  }
  return [...found];
}

export interface Leak {
  file: string;
  secret: string;
}

export interface ScanResult {
  logFiles: number;
  bytes: number;
  secrets: number;
  leaks: Leak[];
}

/** Scan every captured log in `dir` for every secret registered there. */
export function scanCapture(dir: string): ScanResult {
  const secrets = new Set<string>();
  const secretsFile = join(dir, SECRETS_FILE);
  if (existsSync(secretsFile)) {
    for (const line of readFileSync(secretsFile, 'utf8').split('\n')) if (line) secrets.add(JSON.parse(line) as string);
  }
  const result: ScanResult = { logFiles: 0, bytes: 0, secrets: secrets.size, leaks: [] };
  for (const name of readdirSync(dir).sort()) {
    if (name === SECRETS_FILE) continue;
    const text = readFileSync(join(dir, name), 'utf8');
    result.logFiles++;
    result.bytes += text.length;
    for (const secret of findLeaks(text, secrets)) result.leaks.push({ file: name, secret });
  }
  return result;
}

/** Start a run: an empty capture directory (tap's `before`). */
export function resetCapture(dir = CAPTURE_DIR): void {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

// Outside a tap run (no directory), a test file records nothing.
const active = (): boolean => existsSync(CAPTURE_DIR);
const registered = new Set<string>();

/** Register strings the logs must never contain (this process's copy: for checks of answers within a test). */
export function registerSecrets(values: readonly string[]): void {
  const fresh = [...new Set(values)].filter((v) => !registered.has(longEnough(v)));
  for (const v of fresh) registered.add(v);
  if (fresh.length > 0 && active()) appendFileSync(join(CAPTURE_DIR, SECRETS_FILE), fresh.map((v) => `${JSON.stringify(v)}\n`).join(''));
}

export const registeredSecrets = (): ReadonlySet<string> => registered;

let streams = 0;

/**
 * A sink for one stream of log text (a logger, a child's stdout): its own file,
 * so a secret split across two chunks is still contiguous in it.
 */
export function captureStream(label: string): (chunk: string | Buffer) => void {
  if (!active()) return () => undefined;
  const file = join(CAPTURE_DIR, `${process.pid}-${++streams}-${label.replace(/[^\w.-]+/g, '_')}.log`);
  let fd: number | undefined;
  return (chunk) => {
    fd ??= openSync(file, 'a', 0o600);
    writeSync(fd, typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk);
  };
}

/** For the wiring test: the files the streams of this process wrote. */
export function capturedFiles(): string[] {
  if (!active()) return [];
  return readdirSync(CAPTURE_DIR).filter((f) => f.startsWith(`${process.pid}-`)).map((f) => join(CAPTURE_DIR, f));
}
