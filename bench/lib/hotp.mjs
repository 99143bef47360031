// RFC 4226 HOTP, written here on purpose (not imported from otpgate or otplib)
// so the benchmark checks the gateway against an independent implementation.
import { createHmac } from 'node:crypto';

/** HOTP(key, counter): HMAC-SHA1, dynamic truncation, mod 10^digits, zero padded. */
export function hotp(key, counter, digits = 6) {
  const message = Buffer.alloc(8);
  message.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac('sha1', key).update(message).digest();
  const offset = mac[mac.length - 1] & 0x0f;
  const binary = ((mac[offset] & 0x7f) << 24) | (mac[offset + 1] << 16) | (mac[offset + 2] << 8) | mac[offset + 3];
  return String(binary % 10 ** digits).padStart(digits, '0');
}

/** RFC 4226 Appendix D: throws if this implementation disagrees with the RFC. */
export function selfTestHotp() {
  const key = Buffer.from('12345678901234567890', 'ascii');
  const expected = ['755224', '287082', '359152'];
  expected.forEach((code, counter) => {
    const got = hotp(key, counter);
    if (got !== code) throw new Error(`HOTP self-test failed: counter ${counter} gave ${got}, RFC 4226 says ${code}`);
  });
}

/** The value of an Authorization header for Basic auth. */
export function basicAuth(login, password) {
  return `Basic ${Buffer.from(`${login}:${password}`, 'utf8').toString('base64')}`;
}
