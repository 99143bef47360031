// Lingering: within maxLinger seconds of its first use (and, when set, maxIdle
// seconds of its last use) the same PIN+code logs in again without consuming
// anything, so a browser that resends cached credentials on every request works.

export interface LingerPolicy {
  /** seconds from first use; 0 = no linger */
  readonly maxLinger: number;
  /** seconds of inactivity; undefined = no idle limit */
  readonly maxIdle?: number | undefined;
  /** the linger only holds for the IP that started it */
  readonly logoutOnIpChange: boolean;
}

export interface LingerRecord {
  readonly lastOtp?: string | undefined;
  /** epoch seconds of first use */
  readonly lastTime?: number | undefined;
  /** undefined: recorded by pam_oath, which logs in once and has no HTTP linger */
  readonly lastIp?: string | undefined;
  /** epoch seconds of the last request that rode this linger */
  readonly lastActive?: number | undefined;
}

/** Is the recorded last OTP still lingering for a request from `ip` at `now` (epoch seconds)? */
export function lingerActive(rec: LingerRecord, ip: string, now: number, policy: LingerPolicy): boolean {
  if (rec.lastOtp === undefined || rec.lastTime === undefined || rec.lastIp === undefined) return false;
  // A timestamp in the future is not trusted (mod_authn_otp: now >= last_auth).
  if (now < rec.lastTime || now >= rec.lastTime + policy.maxLinger) return false;
  if (policy.maxIdle !== undefined && now >= Math.max(rec.lastActive ?? rec.lastTime, rec.lastTime) + policy.maxIdle) {
    return false;
  }
  return !policy.logoutOnIpChange || rec.lastIp === ip;
}
