// Users files for the benchmark: mod_authn_otp's format, event (HOTP) tokens.
// The users who log in during the benchmark are the LAST lines of the file, so a
// gateway that scanned the file per request would be slow on the big file.
import { randomBytes, randomInt } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';

const KEY_BYTES = 20;

/**
 * Write a users file of `total` users; returns the users that will log in
 * (the last `active` lines), each { login, pin, key, keyHex }.
 */
export function writeUsersFile(path, total, active) {
  const keys = randomBytes(KEY_BYTES * total); // one call: 100,000 small calls are needlessly slow
  const lines = [];
  const activeUsers = [];
  const firstActive = total - active;
  for (let i = 0; i < total; i++) {
    const key = keys.subarray(i * KEY_BYTES, (i + 1) * KEY_BYTES);
    const isActive = i >= firstActive;
    const login = isActive ? `bench${String(i - firstActive).padStart(2, '0')}` : `user${String(i).padStart(6, '0')}`;
    const pin = String(randomInt(0, 10000)).padStart(4, '0');
    const keyHex = key.toString('hex');
    lines.push(`HOTP ${login} ${pin} ${keyHex} 0\n`);
    if (isActive) activeUsers.push({ login, pin, keyHex });
  }
  // mode 0600: otpgate refuses a users file that group or others can read.
  writeFileSync(path, lines.join(''), { mode: 0o600 });
  chmodSync(path, 0o600);
  return activeUsers;
}

/** login -> counter (field 5) as the file says now. */
export function readCounters(path) {
  const counters = new Map();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const fields = line.trim().split(/\s+/);
    if (fields.length >= 5 && !fields[0].startsWith('#')) counters.set(fields[1], Number(fields[4]));
  }
  return counters;
}
