// Configuration: YAML, validated in full before anything starts; every problem
// is reported at once, each as one line naming the file and the key.
import { readFileSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import type { Route } from './routes.js';
import { parseRedisUrl, type RedisTarget } from './redisUrl.js';
import { parseTokenType } from './usersFileFormat.js';
import { UNFIT_FOR_IDENTITY, isValidHeaderName, normalizedHeaderName } from './headers.js';

const seconds = (min: number) => z.number({ error: 'expected a number of seconds' }).int('expected whole seconds').min(min);
const path = z.string({ error: 'expected a file path' }).min(1, 'expected a file path');
const urlPath = z.string().regex(/^\/[!-~]*$/, 'expected a path starting with "/" (printable ASCII, no spaces)');

const count = z.number().int('expected a whole number').min(0, 'expected 0 or more');

/** One throttle rule (see throttle.ts): `free` failures, then waits doubling from baseSeconds to maxSeconds. */
const rule = (free: number, quietSeconds: number) => z.strictObject({
  free: count.default(free),
  baseSeconds: z.number().positive().max(86400).default(1),
  maxSeconds: seconds(1).max(86400).default(900),
  quietSeconds: seconds(1).default(quietSeconds),
}).prefault({});

const throttle = z.strictObject({
  pair: rule(5, 3600),
  account: rule(5, 3600),
  ip: rule(50, 300),
  usualIpDays: z.number().min(0).max(3650).default(30),
  maxEntries: z.number().int().min(1000).max(10_000_000).default(100_000),
}).prefault({});

const headerName = z.string().refine(isValidHeaderName, 'expected an HTTP header name')
  .refine((h) => !UNFIT_FOR_IDENTITY.has(normalizedHeaderName(h)), 'this header cannot carry the identity');

// Added to every answer; '' leaves one out. HSTS only when serving TLS.
const securityHeaders = z.strictObject({
  strictTransportSecurity: z.string().default('max-age=31536000'),
  contentTypeOptions: z.enum(['nosniff', '']).default('nosniff'),
  referrerPolicy: z.string().default('same-origin'),
}).prefault({});

// Attributes added to the backend's Set-Cookie where it left them out.
const cookies = z.strictObject({
  secure: z.union([z.boolean(), z.literal('auto')]).default('auto'),
  httpOnly: z.boolean().default(false),
  sameSite: z.enum(['Strict', 'Lax', 'None']).optional(),
}).prefault({});

const identityAssertion = z.strictObject({
  header: headerName.default('X-Otpgate-Assertion'),
  algorithm: z.enum(['EdDSA', 'HS256']),
  keyFile: path,
  audience: z.string().min(1, 'expected the audience the backend checks, e.g. helpdesk'),
  issuer: z.string().min(1).default('otpgate'),
  ttlSeconds: seconds(1).max(3600).default(60),
}).optional();

// What `otpgate users add` and `set-pin` accept as a new PIN; lines already in the file are not judged.
const pinPolicy = z.strictObject({
  minLength: z.number().int('expected a whole number').min(0).max(64).default(4),
  digitsOnly: z.boolean().default(false),
}).prefault({});

// The otpauth:// URI `otpgate users add` shows the phone app.
const enrolment = z.strictObject({
  /** what the app shows above the code; default: realm */
  issuer: z.string().min(1).max(100).optional(),
  type: z.string().refine((t) => parseTokenType(t)?.algorithm === 'HOTP', 'expected an HOTP token type, e.g. HOTP/T30 or HOTP/E/8')
    .default('HOTP/T30'),
}).prefault({});

// Path rules (routes.ts): `path` a prefix, or `pattern` a regular expression on the path.
const route = z.strictObject({
  path: urlPath.optional(),
  pattern: z.string().min(1).optional(),
  auth: z.enum(['otp', 'none', 'deny'], { error: 'expected otp, none or deny' }),
  keepAuthorization: z.boolean().default(false),
});

// Where counters, lingers and failure counts live: the users file (one gateway,
// or several on one file), or Redis, shared by several gateways (redisUsers.ts).
const state = z.strictObject({
  store: z.enum(['file', 'redis'], { error: 'expected file or redis' }).default('file'),
  url: z.string().min(1).optional(),
  keyPrefix: z.string().regex(/^[!-~]{1,64}$/, 'expected 1-64 printable ASCII characters without spaces').default('otpgate:'),
  // CA, client certificate and key for rediss:// (default CAs when only rediss:// is given).
  tls: z.strictObject({ ca: path.optional(), cert: path.optional(), key: path.optional(), servername: z.string().min(1).optional() }).optional(),
  // While Redis cannot be reached: how long a session this gateway saw lingering keeps riding (0: 503 at once).
  lingerWhileDown: seconds(0).max(3600).default(60),
  // A Redis command not answered in this time fails (the login gets 503).
  commandTimeout: z.number().positive().max(60).default(2),
  // Replicas that must have a login's write before it is granted (Redis WAIT):
  // with Sentinel, 1 or more keeps a failover from losing a used code.
  waitReplicas: z.number().int('expected a whole number').min(0).max(10).default(0),
}).prefault({});

const schema = z.strictObject({
  listen: z.string().default('127.0.0.1:8080'),
  upstream: z.string({ error: 'required: the backend base URL, e.g. http://127.0.0.1:8081' }),
  usersFile: path.optional(),
  realm: z.string().regex(/^[ !#-~]{1,100}$/, 'expected 1-100 printable ASCII characters without "').default('Helpdesk'),
  maxOffset: z.number().int('expected a whole number').min(0).max(100).default(4),
  maxLinger: seconds(0).default(600),
  maxIdle: seconds(1).optional(),
  logoutOnIpChange: z.boolean().default(false),
  maxFailures: z.number().int('expected a whole number').min(0).default(5),
  lockoutSeconds: seconds(0).default(300),
  upstreamTimeout: z.number().positive().max(86400).default(60),
  identityHeader: headerName.default('Remote-User'),
  logoutPath: urlPath.default('/otpgate/logout'),
  healthPath: urlPath.default('/otpgate/health'),
  tls: z.strictObject({ cert: path, key: path }).optional(),
  trustedProxies: z.array(z.string()).default([]),
  // additions to the contract
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  allowInsecurePermissions: z.boolean().default(false),
  allowSymlinkedUsersFile: z.boolean().default(false),
  allowUnsafeUsersFileDirectory: z.boolean().default(false),
  headersTimeout: seconds(1).default(20),
  requestTimeout: seconds(0).default(300),
  keepAliveTimeout: seconds(0).default(5),
  maxLockoutSeconds: seconds(0).default(3600),
  permanentLockAfter: count.default(100),
  throttle,
  securityHeaders,
  cookies,
  identityAssertion,
  // The request line and headers together (Node's maxHeaderSize); more gets 431.
  // Prometheus metrics on their own address (unset: none), never on the public one.
  metricsListen: z.string().optional(),
  maxHeaderBytes: z.number().int('expected a whole number').min(4096).max(1024 * 1024).default(16 * 1024),
  // New PINs set by the admin CLI are stored as scrypt hashes (mod_authn_otp and pam_oath cannot read those lines).
  hashPins: z.boolean().default(false),
  pinPolicy,
  enrolment,
  routes: z.array(route).default([]),
  state,
});

type Raw = z.infer<typeof schema>;

export interface Listen {
  readonly host: string;
  readonly port: number;
}

export interface StateConfig extends Omit<Raw['state'], 'url'> {
  /** set when store is redis */
  readonly redis?: RedisTarget | undefined;
  /** the URL as given (for messages: without its password) */
  readonly url?: string | undefined;
}

export interface Config extends Omit<Raw, 'listen' | 'upstream' | 'usersFile' | 'trustedProxies' | 'metricsListen' | 'routes' | 'state'> {
  readonly routes: readonly Route[];
  readonly state: StateConfig;
  readonly listen: Listen;
  readonly metricsListen?: Listen | undefined;
  readonly upstream: URL;
  readonly usersFile: string;
  readonly trustedProxies: readonly string[];
  readonly trusted: BlockList;
  /** the file the config came from (for messages) */
  readonly source: string;
}

export type ConfigResult = { ok: true; config: Config } | { ok: false; errors: string[] };

export function parseListen(text: string): Listen | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const host = m[1] ?? m[2] ?? '';
  const port = Number(m[3]);
  if (port > 65535 || (m[1] !== undefined && isIP(host) !== 6)) return undefined;
  return { host, port };
}

function parseTrusted(entries: readonly string[], errors: string[], where: string): BlockList {
  const list = new BlockList();
  entries.forEach((entry, i) => {
    const [addr = '', prefixText] = entry.split('/');
    const family = isIP(addr);
    const max = family === 6 ? 128 : 32;
    const prefix = prefixText === undefined ? max : Number(prefixText);
    if (family === 0 || !Number.isInteger(prefix) || prefix < 0 || prefix > max || prefixText === '') {
      errors.push(`${where}: trustedProxies[${i}]: "${entry}" is not an IP address or CIDR range`);
      return;
    }
    list.addSubnet(addr, prefix, family === 6 ? 'ipv6' : 'ipv4');
  });
  return list;
}

function parseRoutes(entries: Raw['routes'], errors: string[], where: string): Route[] {
  return entries.flatMap((entry, i): Route[] => {
    const at = `${where}: routes[${i}]`;
    if ((entry.path === undefined) === (entry.pattern === undefined)) {
      errors.push(`${at}: expected either path (a prefix) or pattern (a regular expression)`);
      return [];
    }
    if (entry.keepAuthorization && entry.auth !== 'none') errors.push(`${at}.keepAuthorization: only for auth: none`);
    if (entry.path !== undefined) return [{ auth: entry.auth, path: entry.path, keepAuthorization: entry.keepAuthorization }];
    try {
      return [{ auth: entry.auth, pattern: new RegExp(entry.pattern as string, 'u'), keepAuthorization: entry.keepAuthorization }];
    } catch (err) {
      errors.push(`${at}.pattern: not a regular expression (${(err as Error).message.replace(/^Invalid regular expression: /, '')})`);
      return [];
    }
  });
}

/** A URL for people: the password replaced. */
export const redactedUrl = (url: string): string => url.replace(/^([a-z+]+:\/\/[^:@/]*:)[^@/]*@/, '$1***@');

function parseState(raw: Raw['state'], errors: string[], where: string, baseDir: string): StateConfig {
  const { url, ...rest } = raw;
  const tls = raw.tls === undefined ? undefined : {
    ...raw.tls,
    ...(raw.tls.ca !== undefined ? { ca: resolve(baseDir, raw.tls.ca) } : {}),
    ...(raw.tls.cert !== undefined ? { cert: resolve(baseDir, raw.tls.cert) } : {}),
    ...(raw.tls.key !== undefined ? { key: resolve(baseDir, raw.tls.key) } : {}),
  };
  if (raw.store === 'file') {
    if (url !== undefined) errors.push(`${where}: state.url: only with store: redis`);
    return { ...rest, tls };
  }
  if (url === undefined) {
    errors.push(`${where}: state.url: required with store: redis, e.g. redis://127.0.0.1:6379 or redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster`);
    return { ...rest, tls };
  }
  const target = parseRedisUrl(url);
  if (typeof target === 'string') {
    errors.push(`${where}: state.url: ${target}`);
    return { ...rest, tls };
  }
  if (tls !== undefined && !target.tls) errors.push(`${where}: state.tls: only with a rediss:// URL`);
  if ((tls?.cert === undefined) !== (tls?.key === undefined)) errors.push(`${where}: state.tls: cert and key go together`);
  return { ...rest, tls, redis: target, url: redactedUrl(url) };
}

/**
 * Validate a config document. `source` names it in messages; relative paths in
 * it are relative to `baseDir`. No I/O.
 */
export function parseConfig(text: string, source: string, baseDir: string): ConfigResult {
  const doc = parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (doc.errors.length > 0) {
    return {
      ok: false,
      errors: doc.errors.map((e) => {
        const line = e.linePos?.[0];
        const message = (e.message.split('\n')[0] ?? '').replace(/ at line \d+, column \d+:?$/, '');
        return `${source}${line ? `:${line.line}:${line.col}` : ''}: ${message}`;
      }),
    };
  }
  const data: unknown = doc.toJS() ?? {};
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    return { ok: false, errors: [`${source}: expected a mapping of keys to values`] };
  }
  const parsed = schema.safeParse(data);
  const errors: string[] = [];
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      if (issue.code === 'unrecognized_keys') {
        const at = issue.path.length ? `${issue.path.join('.')}.` : '';
        for (const key of issue.keys) errors.push(`${source}: ${at}${key}: unknown key`);
      } else {
        const key = issue.path.map((p, i) => (typeof p === 'number' ? `[${p}]` : `${i ? '.' : ''}${String(p)}`)).join('');
        const message = issue.message.replace(/^Invalid input: /, '');
        errors.push(`${source}: ${key || '(top level)'}: ${message}`);
      }
    }
    return { ok: false, errors };
  }
  const raw = parsed.data;
  const listen = parseListen(raw.listen);
  if (!listen) errors.push(`${source}: listen: expected host:port, e.g. 127.0.0.1:8080 or [::1]:8080`);
  const metricsListen = raw.metricsListen === undefined ? undefined : parseListen(raw.metricsListen);
  if (raw.metricsListen !== undefined && !metricsListen) errors.push(`${source}: metricsListen: expected host:port, e.g. 127.0.0.1:9464`);
  let upstream: URL | undefined;
  try {
    upstream = new URL(raw.upstream);
    if (upstream.protocol !== 'http:' && upstream.protocol !== 'https:') throw new Error('scheme');
    if (upstream.username || upstream.password || upstream.hash) throw new Error('extra');
  } catch {
    errors.push(`${source}: upstream: expected an http:// or https:// URL without credentials, e.g. http://127.0.0.1:8081`);
  }
  if (raw.usersFile === undefined) errors.push(`${source}: usersFile: required: the path of the OTP users file`);
  if (raw.logoutPath === raw.healthPath) errors.push(`${source}: logoutPath: must differ from healthPath`);
  if (raw.identityAssertion && normalizedHeaderName(raw.identityAssertion.header) === normalizedHeaderName(raw.identityHeader)) {
    errors.push(`${source}: identityAssertion.header: must differ from identityHeader`);
  }
  const trusted = parseTrusted(raw.trustedProxies, errors, source);
  const routes = parseRoutes(raw.routes, errors, source);
  const stateConfig = parseState(raw.state, errors, source, baseDir);
  if (errors.length > 0 || !listen || !upstream || raw.usersFile === undefined) return { ok: false, errors };
  const config: Config = {
    ...raw,
    listen,
    metricsListen,
    upstream,
    usersFile: resolve(baseDir, raw.usersFile),
    tls: raw.tls ? { cert: resolve(baseDir, raw.tls.cert), key: resolve(baseDir, raw.tls.key) } : undefined,
    identityAssertion: raw.identityAssertion ? { ...raw.identityAssertion, keyFile: resolve(baseDir, raw.identityAssertion.keyFile) } : undefined,
    trustedProxies: raw.trustedProxies,
    trusted,
    routes,
    state: stateConfig,
    source,
  };
  return { ok: true, config };
}

/** Read and validate a config file. */
export function loadConfig(file: string): ConfigResult {
  const full = resolve(file);
  let text: string;
  try {
    text = readFileSync(full, 'utf8');
  } catch (err) {
    return { ok: false, errors: [`${file}: cannot read config file (${(err as NodeJS.ErrnoException).code ?? 'error'})`] };
  }
  return parseConfig(text, file, dirname(full));
}
