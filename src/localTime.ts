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

const DAYS = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * Is this a well-formed timestamp? Cheap (no Date): the users file is checked
 * line by line at every load, and most lines carry one.
 */
export function isLocalTimeText(text: string): boolean {
  if (text.length !== 20 || !PATTERN.test(text)) return false;
  const year = Number(text.slice(0, 4));
  const month = Number(text.slice(5, 7));
  const day = Number(text.slice(8, 10));
  const leap = year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0);
  const days = month === 2 && !leap ? 28 : DAYS[month - 1] ?? 0;
  return year >= 1970 && day >= 1 && day <= days && Number(text.slice(11, 13)) <= 23 &&
    Number(text.slice(14, 16)) <= 59 && Number(text.slice(17, 19)) <= 60;
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
