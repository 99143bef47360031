// Shared test tools: temp dirs, real servers on 127.0.0.1 port 0, a plain HTTP
// client, and an OTP implementation written independently of src/ (RFC 4226
// straight from node:crypto), so tests check the gateway against the RFC.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { connect as netConnect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { captureStream, keyForms, loginForms, registerSecrets } from './secrets.js';

export const tempDir = (t: { teardown(fn: () => void): void }, prefix = 'otpgate-test-'): string => {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
};

export function writeFile600(path: string, text: string | Buffer): string {
  writeFileSync(path, text, { mode: 0o600 });
  return path;
}

/**
 * An owner for a file that differs from the test process's when it may chown
 * (root, as in CI); otherwise its own, which `what` says.
 */
export function otherOwner(): { uid: number; gid: number; what: string } {
  if (process.getuid?.() === 0) return { uid: 4242, gid: 4243, what: 'uid 4242, gid 4243: not the writer\'s' };
  return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0, what: 'the writer\'s own: not root, cannot chown' };
}

/** RFC 4226, independently of src/otp.ts. */
export function rfcHotp(keyHex: string, counter: number, digits = 6): string {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const h = createHmac('sha1', Buffer.from(keyHex, 'hex')).update(msg).digest();
  const o = (h[h.length - 1] as number) & 0xf;
  const v = (((h[o] as number) & 0x7f) << 24) | ((h[o + 1] as number) << 16) | ((h[o + 2] as number) << 8) | (h[o + 3] as number);
  return digits >= 10 ? String(v).padStart(10, '0') : String(v % 10 ** digits).padStart(digits, '0');
}

export const rfcTotp = (keyHex: string, epochSeconds: number, step = 30, digits = 6): string =>
  rfcHotp(keyHex, Math.floor(epochSeconds / step), digits);

/** A value no log may contain (a PIN, a password): at least 8 characters, so it cannot turn up by chance. */
export function secret<T extends string>(value: T): T {
  registerSecrets([value]);
  return value;
}

/** A token key (hex) no log may contain, in any of its spellings. */
export function secretKey(keyHex: string): string {
  registerSecrets(keyForms(keyHex));
  return keyHex;
}

/** An Authorization value; no log may contain it, or its password. */
export function basic(login: string, password: string): string {
  registerSecrets(loginForms(login, password));
  return `Basic ${Buffer.from(`${login}:${password}`, 'utf8').toString('base64')}`;
}

/** A logger that keeps every line, for assertions on audit events. */
export function memoryLogger(level: pino.LevelWithSilent = 'debug'): { log: Logger; lines: Record<string, unknown>[]; text: () => string } {
  const lines: Record<string, unknown>[] = [];
  const raw: string[] = [];
  const capture = captureStream('memoryLogger');
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb): void {
      capture(chunk);
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line) {
          raw.push(line);
          lines.push(JSON.parse(line) as Record<string, unknown>);
        }
      }
      cb();
    },
  });
  return { log: pino({ level }, sink), lines, text: () => raw.join('\n') };
}

export interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
}

/** A backend that records what reached it; the default handler answers 200 with a JSON echo. */
export async function startBackend(
  t: { teardown(fn: () => void | Promise<void>): void },
  handler?: (req: IncomingMessage, res: ServerResponse, body: Buffer) => void,
): Promise<{ server: Server; port: number; url: string; seen: Seen[] }> {
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, rawHeaders: req.rawHeaders, body });
      if (handler) {
        handler(req, res, body);
        return;
      }
      const out = JSON.stringify({ method: req.method, url: req.url, headers: req.headers, bodyLength: body.length });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(out);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  const port = (server.address() as AddressInfo).port;
  return { server, port, url: `http://127.0.0.1:${port}`, seen };
}

export interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
  text: string;
}

export interface RequestOptions {
  method?: string;
  path?: string;
  headers?: Record<string, string | string[]>;
  body?: Buffer | string;
  auth?: [string, string];
  host?: string;
}

/** One request on its own connection. */
export function request(port: number, opts: RequestOptions = {}): Promise<Reply> {
  const headers: Record<string, string | string[]> = { ...(opts.headers ?? {}) };
  if (opts.auth) headers.Authorization = basic(opts.auth[0], opts.auth[1]);
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: opts.host ?? '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', headers, agent: false,
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

export interface SpawnedGateway {
  child: ChildProcess;
  port: number;
  /** every JSON line the gateway logged so far */
  logs: Record<string, unknown>[];
  stderr: () => string;
  exited: Promise<number | null>;
}

export const BIN = fileURLToPath(new URL('../../bin/otpgate', import.meta.url));

/**
 * Run the real `otpgate` executable as a child process. The test runner injects
 * its coverage hooks into children through NODE_OPTIONS; `env -u` keeps them
 * out, so the child is exactly what an operator runs. Its output is captured
 * for the secrets scan.
 */
export function spawnOtpgate(
  args: readonly string[], extraEnv: Record<string, string> = {}, stdin: 'ignore' | 'pipe' = 'ignore', stdoutShowsSecrets = false,
): ChildProcess {
  const child = spawn('env', ['-u', 'NODE_OPTIONS', process.execPath, BIN, ...args], {
    stdio: [stdin, 'pipe', 'pipe'], env: { ...process.env, ...extraEnv },
  });
  // Listeners added by the caller right after this still see every chunk: none arrives before the next tick.
  // A command whose output is a key or a code by purpose (otpgate otp, an enrolment URI) is not a log.
  if (!stdoutShowsSecrets) child.stdout?.on('data', captureStream(`otpgate-${args[0] ?? ''}-stdout`));
  child.stderr?.on('data', captureStream(`otpgate-${args[0] ?? ''}-stderr`));
  return child;
}

/** Run `otpgate serve` as a real child process; resolves once it logged its start line. */
export function spawnGateway(configFile: string, extraEnv: Record<string, string> = {}): Promise<SpawnedGateway> {
  const child = spawnOtpgate(['serve', '--config', configFile], extraEnv);
  const logs: Record<string, unknown>[] = [];
  let err = '';
  let partial = '';
  child.stderr?.on('data', (c: Buffer) => { err += c.toString('utf8'); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    child.stdout?.on('data', (c: Buffer) => {
      partial += c.toString('utf8');
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (!line) continue;
        const entry = JSON.parse(line) as Record<string, unknown>;
        logs.push(entry);
        if (entry.event === 'start') {
          resolve({ child, port: Number(String(entry.listen).split(':').pop()), logs, stderr: () => err, exited });
        }
      }
    });
    void exited.then((code) => reject(new Error(`gateway exited (${code}) before starting: ${err}`)));
    setTimeout(() => reject(new Error(`gateway did not start within 15 s: ${err}`)), 15_000).unref();
  });
}

/** A loopback port nothing listens on right now (for servers that cannot listen on port 0 and tell). */
export const freePort = (): Promise<number> => new Promise((resolve, reject) => {
  const server = createNetServer();
  server.once('error', reject);
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address() as AddressInfo;
    server.close(() => resolve(port));
  });
});

/** Does something accept connections on this loopback port? */
export const accepts = (port: number): Promise<boolean> => new Promise((resolve) => {
  const socket = netConnect(port, '127.0.0.1');
  socket.once('connect', () => { socket.destroy(); resolve(true); });
  socket.once('error', () => resolve(false));
});
