// JSON logs (pino). Nothing secret is ever passed to the logger; the redaction
// list is a second line of defence should a request object slip in.
import { readFileSync } from 'node:fs';
import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as
  { version: string }).version;

export function createLogger(level: LevelWithSilent, destination?: DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'otpgate' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
    redact: {
      paths: ['password', 'pin', 'code', 'key', 'authorization', 'headers.authorization', 'req.headers.authorization'],
      censor: '[redacted]',
    },
  }, destination ?? pino.destination({ dest: 1, sync: false }));
}
