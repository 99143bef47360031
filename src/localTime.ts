// The users file's timestamps: local time, second precision, a literal `L`
// suffix (strftime "%Y-%m-%dT%H:%M:%SL"), as both mod_authn_otp and liboath write them.

const PATTERN = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})L$/;

const pad = (n: number, width = 2): string => String(n).padStart(width, '0');

/** Seconds since the epoch -> `YYYY-MM-DDTHH:MM:SSL` in the process's local time zone. */
export function formatLocalTime(epochSeconds: number): string {
  const d = new Date(Math.floor(epochSeconds) * 1000);
  return `${pad(d.getFullYear(), 4)}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}L`;
}

/** `YYYY-MM-DDTHH:MM:SSL` (local time) -> seconds since the epoch, or undefined if malformed. */
export function parseLocalTime(text: string): number | undefined {
  const m = PATTERN.exec(text);
  if (!m) return undefined;
  const [year, month, day, hour, minute, second] = m.slice(1).map(Number) as
    [number, number, number, number, number, number];
  if (year < 1970 || month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60) return undefined;
  const d = new Date(year, month - 1, day, hour, minute, second);
  // Reject dates that roll over (Feb 30th); like mktime, accept DST-gap times as shifted.
  if (d.getDate() !== day || d.getMonth() !== month - 1) return undefined;
  const ms = d.getTime();
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : undefined;
}
