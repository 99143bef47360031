// Header hygiene between the client and the backend. CGI, PHP and PSGI map
// `Remote-User`, `remote_user` and `REMOTE.USER` to the same variable
// (HTTP_REMOTE_USER), so headers are compared by a normalised name.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import { isIP, type BlockList } from 'node:net';

/** Lowercase, with `-`, `_` and `.` removed: the name a CGI-style backend effectively sees. */
export function normalizedHeaderName(name: string): string {
  // Every punctuation a token may hold, not only - _ and .: some CGI gateways
  // (Apache 2.2 among them) turn any of it into _, so Remote~User was REMOTE_USER there.
  return name.toLowerCase().replace(/[^a-z0-9]/g, '');
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
export const isValidHeaderName = (name: string): boolean => TOKEN.test(name);

/** RFC 9110 section 7.6.1 connection-specific headers, plus legacy ones. */
const HOP_BY_HOP = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'proxy-authorization', 'proxy-authenticate',
]);

/** Headers a backend may take as the client's address or scheme; only a trusted proxy may send them. */
const FORWARDING = new Set(['xforwardedfor', 'xforwardedproto', 'xforwardedhost', 'xforwardedport', 'forwarded', 'xrealip']);

/** Headers that can never carry the identity (config check). */
export const UNFIT_FOR_IDENTITY = new Set([
  ...[...HOP_BY_HOP].map(normalizedHeaderName), ...FORWARDING, 'host', 'authorization', 'contentlength', 'cookie', 'expect',
]);

export interface ForwardContext {
  /** the normalised name of the identity header (see normalizedHeaderName) */
  readonly identity: string;
  /** the identity header as configured, e.g. `Remote-User` */
  readonly identityHeader: string;
  /** the authenticated login; undefined on routes that carry no identity */
  readonly login?: string | undefined;
  /** address of the TCP peer */
  readonly peer: string;
  readonly peerTrusted: boolean;
  /** the scheme the client used to reach the gateway */
  readonly proto: 'http' | 'https';
  /** the normalised name of the signed-assertion header, stripped from the client's like the identity */
  readonly assertion?: string | undefined;
  /** pass the client's Authorization on (an open route to a service that checks it itself) */
  readonly keepAuthorization?: boolean;
}

const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/**
 * The headers to send to the backend: the client's Authorization, every spelling
 * of the identity header, hop-by-hop headers and those named in Connection are
 * removed; the identity header is set once; X-Forwarded-* come from the socket
 * (appended to only when the peer is a trusted proxy).
 */
export function upstreamHeaders(incoming: IncomingHttpHeaders, ctx: ForwardContext): OutgoingHttpHeaders {
  const named = connectionNamed(incoming.connection);
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(incoming)) {
    if (value === undefined) continue;
    const norm = normalizedHeaderName(name);
    if (HOP_BY_HOP.has(name) || named.has(name) || name === 'expect') continue;
    if (name === 'authorization' && ctx.keepAuthorization !== true) continue;
    if (norm === ctx.identity || norm === ctx.assertion) continue;
    if (FORWARDING.has(norm)) continue;
    out[name] = value;
  }
  // The client's framing goes with its hop-by-hop headers: the forwarder frames
  // the body anew (chunked when it has no Content-Length), so it can never reach
  // the backend raw and be read as a second, smuggled request.
  if (ctx.login !== undefined) {
    // Node writes header values as latin1: pass the login's UTF-8 bytes through unchanged.
    out[ctx.identityHeader] = PRINTABLE_ASCII.test(ctx.login) ? ctx.login : Buffer.from(ctx.login, 'utf8').toString('latin1');
  }
  const xff = ctx.peerTrusted ? first(incoming['x-forwarded-for']) : undefined;
  out['x-forwarded-for'] = xff ? `${xff}, ${ctx.peer}` : ctx.peer;
  const proto = ctx.peerTrusted ? first(incoming['x-forwarded-proto']) : undefined;
  out['x-forwarded-proto'] = proto ?? ctx.proto;
  const host = (ctx.peerTrusted ? first(incoming['x-forwarded-host']) : undefined) ?? incoming.host;
  if (host !== undefined) out['x-forwarded-host'] = host;
  return out;
}

/** Names listed in a Connection header: they describe one connection, never the next hop's. */
const NONE: ReadonlySet<string> = new Set();
function connectionNamed(value: string | string[] | undefined): ReadonlySet<string> {
  // The common values name no other header (and Keep-Alive goes anyway).
  if (value === undefined || value === 'keep-alive' || value === 'close') return NONE;
  const named = new Set<string>();
  for (const v of Array.isArray(value) ? value : [value]) {
    for (const token of v.split(',')) {
      const name = token.trim().toLowerCase();
      if (name !== '') named.add(name);
    }
  }
  return named;
}

/**
 * The backend's answer headers for the client: its Connection, Keep-Alive and
 * other hop-by-hop headers describe its connection to the gateway, not the
 * client's (Node frames the client's answer itself); a redirect to the
 * backend's own origin becomes one to the origin the client used.
 */
export function downstreamHeaders(
  incoming: IncomingHttpHeaders, upstream: URL, clientOrigin: string, cookies?: CookiePolicy,
  extra: readonly (readonly [string, string])[] = [],
): OutgoingHttpHeaders {
  const named = connectionNamed(incoming.connection);
  const out: OutgoingHttpHeaders = {};
  for (const name in incoming) {
    const value = incoming[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named.has(name)) continue;
    out[name] = name === 'location' && typeof value === 'string' ? rewriteLocation(value, upstream, clientOrigin)
      : name === 'set-cookie' && cookies !== undefined ? [value].flat().map((c) => hardenCookie(c, cookies)) : value;
  }
  // Added where the backend set none of its own (its policy for its pages wins).
  for (const [name, value] of extra) if (incoming[name.toLowerCase()] === undefined) out[name] = value;
  return out;
}

/** Attributes to add to the backend's cookies where it left them out (a helpdesk's own are often weak). */
export interface CookiePolicy {
  readonly secure: boolean;
  readonly httpOnly: boolean;
  /** added when the cookie names no SameSite of its own */
  readonly sameSite?: 'Strict' | 'Lax' | 'None' | undefined;
}

/** A Set-Cookie value with the policy's attributes added where missing; attributes it has are kept. */
export function hardenCookie(cookie: string, policy: CookiePolicy): string {
  const attributes = new Set(cookie.split(';').slice(1).map((a) => (a.split('=')[0] ?? '').trim().toLowerCase()));
  let out = cookie;
  if (policy.secure && !attributes.has('secure')) out += '; Secure';
  if (policy.httpOnly && !attributes.has('httponly')) out += '; HttpOnly';
  if (policy.sameSite !== undefined && !attributes.has('samesite')) {
    out += `; SameSite=${policy.sameSite}`;
    // Browsers drop a SameSite=None cookie that is not Secure.
    if (policy.sameSite === 'None' && !policy.secure && !attributes.has('secure')) out += '; Secure';
  }
  return out;
}

/** `::ffff:10.0.0.1` -> `10.0.0.1`, so IPv4 clients on a dual-stack socket look like IPv4. */
export function plainAddress(addr: string | undefined): string {
  if (addr === undefined) return '';
  return addr.startsWith('::ffff:') && isIP(addr.slice(7)) === 4 ? addr.slice(7) : addr;
}

export function isTrusted(list: BlockList, addr: string): boolean {
  const family = isIP(addr);
  if (family === 0) return false;
  return list.check(addr, family === 6 ? 'ipv6' : 'ipv4');
}

/**
 * The client's address: the peer's, unless the peer is a trusted proxy; then the
 * right-most X-Forwarded-For entry that is not itself a trusted proxy.
 */
export function clientAddress(peer: string, peerTrusted: boolean, xff: string | string[] | undefined, list: BlockList): string {
  if (!peerTrusted || xff === undefined) return peer;
  const hops = [xff].flat().join(',').split(',').map((h) => plainAddress(h.trim()));
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i] as string;
    if (isIP(hop) === 0) return peer; // garbage in the chain: believe nothing beyond the peer
    if (!isTrusted(list, hop)) return hop;
  }
  return hops[0] && isIP(hops[0]) ? hops[0] : peer;
}

/**
 * A backend redirect to its own origin (it does not know it sits behind a
 * gateway) is rewritten to the origin the client used.
 */
export function rewriteLocation(location: string, upstream: URL, clientOrigin: string): string {
  let target: URL;
  try {
    target = new URL(location);
  } catch {
    return location; // relative: already right
  }
  if (target.origin !== upstream.origin) return location;
  return clientOrigin + target.pathname + target.search + target.hash;
}
