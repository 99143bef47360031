// `otpgate demo` (npm start): a demo helpdesk, the gateway in front of it on
// 127.0.0.1, a fresh users file in a temp dir, and everything needed to log in.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import QRCode from 'qrcode';
import { parseConfig, type Config } from './config.js';
import { startDemoBackend } from './demoBackend.js';
import { otpauthUri } from './enrolment.js';
import { createLogger } from './logger.js';
import { hotp, stepAt } from './otp.js';
import { CliError, start, type Running } from './serve.js';
import { pino } from 'pino';

const LOGIN = 'demo';
const PIN = '1234';
const STEP = 30;

function demoConfig(listen: string, upstreamPort: number, usersFile: string, dir: string): Config {
  const result = parseConfig(
    `listen: "${listen}"\nupstream: "http://127.0.0.1:${upstreamPort}"\nusersFile: "${usersFile}"\nrealm: "otpgate demo"\n`,
    'demo config', dir);
  if (!result.ok) throw new Error(result.errors.join('; '));
  return result.config;
}

export async function demo(preferredListen = process.env.OTPGATE_DEMO_LISTEN ?? '127.0.0.1:8080'): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'otpgate-demo-'));
  const key = randomBytes(20);
  const usersFile = join(dir, 'otp-users');
  writeFileSync(usersFile,
    '# otpgate demo users file: mod_authn_otp layout (type, user, PIN, key, offset)\n' +
    `HOTP/T30 ${LOGIN} ${PIN} ${key.toString('hex')} 0\n`, { mode: 0o600 });
  const backend = await startDemoBackend('Remote-User', '/otpgate/logout');
  const log = createLogger('info', pino.destination({ dest: 2, sync: false }));
  let running: Running;
  try {
    running = await start(demoConfig(preferredListen, backend.port, usersFile, dir), log);
  } catch (err) {
    if (!(err instanceof CliError) || !/EADDRINUSE|EACCES/.test(err.message)) throw err;
    running = await start(demoConfig('127.0.0.1:0', backend.port, usersFile, dir), log); // 8080 taken: any free port
  }
  const url = `http://127.0.0.1:${running.address.port}/`;
  const uri = otpauthUri({ type: { algorithm: 'HOTP', stepSeconds: STEP, digits: 6 }, login: LOGIN, key }, 'otpgate demo');
  const qr = await QRCode.toString(uri, { type: 'terminal', small: true });
  process.stdout.write(`
otpgate demo: a helpdesk behind the OTP gateway

  Open      ${url}
  User      ${LOGIN}
  Password  your PIN ${PIN} followed by the current code, e.g. ${PIN}123456

Scan this with an authenticator app (Google Authenticator, FreeOTP, Aegis...),
or use the codes printed below:

${qr}
  ${uri}

Users file: ${usersFile}
Press Ctrl-C to stop.

`);
  let shown = -1;
  const tick = (): void => {
    const now = Date.now() / 1000;
    const step = stepAt(now, STEP);
    if (step === shown) return;
    shown = step;
    const code = hotp(key, step, 6);
    const left = Math.ceil((step + 1) * STEP - now);
    process.stdout.write(`  current code ${code}  -> password ${PIN}${code}  (next code in ${left}s)\n`);
  };
  tick();
  const timer = setInterval(tick, 1000);
  const stop = (): void => {
    clearInterval(timer);
    process.stdout.write('\nstopping the demo\n');
    void running.stop().finally(() => {
      backend.server.close();
      backend.server.closeAllConnections();
      rmSync(dir, { recursive: true, force: true });
      log.flush();
      process.exit(0);
    });
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
