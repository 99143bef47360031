// The HTTP side: every request goes through a short pipeline of named steps,
// refuseMalformed -> ownEndpoints -> authenticate -> forward, and only a request
// that passed all of them reaches the backend.
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { parseBasicAuth } from './basicAuth.js';
import type { Config } from './config.js';
import type { Pool } from 'undici';
import { forward, upstreamPool, UpstreamTimeout, type Upstream } from './forward.js';
import { clientAddress, isTrusted, normalizedHeaderName, plainAddress, upstreamHeaders } from './headers.js';
import {
  badGateway, badRequest, forbidden, challenge, gatewayTimeout, headersTooLarge, json, rawStatus, throttled, unavailable,
} from './responses.js';
import { ambiguousPath, decodedPath, pathOf, routeFor } from './routes.js';
import { Throttle, type ThrottlePolicy } from './throttle.js';
import { assertionSigner, type Signer } from './assertion.js';
import type { Metrics } from './metrics.js';
import type { Outcome } from './usersFile.js';
import type { UserStore } from './userStore.js';
import type { ThrottleEvent } from './redisState.js';
import { VERSION } from './logger.js';

interface Live {
  readonly config: Config;
  readonly users: UserStore;
  readonly identity: string;
  readonly upstream: Upstream;
  /** securityHeaders, as set on every answer */
  readonly securityHeaders: readonly (readonly [string, string])[];
  /** the signed identity assertion, when configured: its header (normalised) and signer */
  readonly assertion?: { readonly header: string; readonly normalized: string; readonly sign: Signer } | undefined;
}

/** The configured security headers that apply (HSTS only over TLS). */
export function securityHeadersOf(config: Config): [string, string][] {
  const { strictTransportSecurity, contentTypeOptions, referrerPolicy } = config.securityHeaders;
  const out: [string, string][] = [];
  if (config.tls && strictTransportSecurity !== '') out.push(['Strict-Transport-Security', strictTransportSecurity]);
  if (contentTypeOptions !== '') out.push(['X-Content-Type-Options', contentTypeOptions]);
  if (referrerPolicy !== '') out.push(['Referrer-Policy', referrerPolicy]);
  return out;
}

/**
 * Requests the gateway refuses before looking at credentials: a version other
 * than HTTP/1.0 or 1.1, a target that is not origin-form (absolute-form, CONNECT,
 * `*`), an attempt to switch protocols (no tunnels through the gateway), a
 * transfer coding other than chunked, a missing, repeated or invalid Host, or
 * two Authorization headers.
 */
export function malformedRequest(req: IncomingMessage): boolean {
  // Node's parser also takes "HTTP/0.9" (with headers) and "HTTP/2.0" in a request
  // line; both were forwarded (as HTTP/1.1). No real client sends either.
  if (req.httpVersionMajor !== 1) return true;
  const url = req.url ?? '';
  // A fragment is not part of a request target (RFC 9112 section 3.2); a backend may drop it, a rule would not.
  if (!url.startsWith('/') || url.startsWith('//') || url.includes('#')) return true;
  if (req.headers.upgrade !== undefined || req.method === 'CONNECT') return true;
  // Node decodes only "chunked": for "gzip, chunked" it removes the chunking and
  // the gateway forwarded the still-gzipped bytes as a plain body, its coding
  // lost on the way (Node itself refuses codings after chunked, and identity).
  const te = req.headers['transfer-encoding'];
  if (te !== undefined && te.trim().toLowerCase() !== 'chunked') return true;
  // Node keeps the first of two Authorization headers and ignores the second:
  // credentials that two parsers can read differently are refused, like two Hosts.
  let hosts = 0;
  let authorizations = 0;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i] as string;
    if (name.length === 4 && name.toLowerCase() === 'host') hosts++;
    else if (name.length === 13 && name.toLowerCase() === 'authorization') authorizations++;
  }
  if (hosts !== 1 || authorizations > 1) return true;
  // RFC 9112 section 3.2: a Host with an invalid value gets 400. It used to pass
  // ("Host: u@h", "Host: evil/x", an empty one) to the backend and, as
  // X-Forwarded-Host, into the redirects the gateway rewrites.
  return !HOST.test(req.headers.host ?? '');
}

/** RFC 3986 host (reg-name or IP literal) and optional port: a Host header value. */
const HOST = /^(?:\[[0-9A-Za-z:.%]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+)(?::[0-9]*)?$/;

/**
 * Header fields a request may carry: Apache's default LimitRequestFields, which
 * the gateway replaces in front of the helpdesk. Node keeps the first 2000 fields
 * by default and silently drops the rest, so a second Host, an Upgrade or a
 * Transfer-Encoding behind 2000 padding fields went unseen by the checks here
 * (and such a request was forwarded). Node now keeps one field more than allowed,
 * and a request that has it is refused.
 */
export const MAX_HEADER_FIELDS = 100;

/** A request whose body the gateway will not read: close the connection after answering. */
const hasUnreadBody = (req: IncomingMessage): boolean =>
  !req.complete && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);

/** Failures the throttle counts: wrong PINs and codes, unknown logins, attempts on a locked account (not a browser resending a used code). */
const countsAsGuess = (o: Outcome): boolean => o.counted === true || o.reason === 'unknown_user' || o.reason === 'locked';

export function throttlePolicyOf(config: Config): ThrottlePolicy {
  const { pair, account, ip, usualIpDays, maxEntries } = config.throttle;
  return { pair, account, ip, usualIpSeconds: usualIpDays * 86400, maxEntries };
}

/** Tells attempts with the same credentials apart from others, without keeping the password. */
const credentialId = (login: string, password: string): string => hash('sha256', `${login}\0${password}`, 'base64');

export class Gateway {
  readonly server: Server | HttpsServer;
  private live: Live;
  private readonly log: Logger;
  // Keep-alive pools to the backend, one per origin (a reload may switch it).
  private readonly pools = new Map<string, Pool>();
  readonly throttle: Throttle;
  /** set when metricsListen is configured */
  metrics: Metrics | undefined;
  /** epoch seconds (injectable for tests) */
  private readonly clock: () => number;

  constructor(config: Config, users: UserStore, log: Logger, clock: () => number = () => Date.now() / 1000) {
    this.log = log;
    this.clock = clock;
    this.throttle = new Throttle(throttlePolicyOf(config));
    this.live = this.liveFor(config, users);
    const timeouts = {
      headersTimeout: config.headersTimeout * 1000,
      requestTimeout: config.requestTimeout * 1000,
      keepAliveTimeout: config.keepAliveTimeout * 1000,
      // Node checks headersTimeout and requestTimeout only every 30 s by default,
      // so a client that never finishes its head held its connection for up to
      // 30 s longer than configured (headersTimeout 1 answered 408 after ~30 s).
      // Checked every second, a timeout takes effect within a second of its value.
      connectionsCheckingInterval: 1000,
      // 16 KiB by default: enough for Basic auth and a helpdesk's cookies.
      maxHeaderSize: config.maxHeaderBytes,
    };
    const handler = (req: IncomingMessage, res: ServerResponse): void => this.handle(req, res);
    this.server = config.tls
      ? createHttpsServer({ ...timeouts, cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handler)
      : createHttpServer(timeouts, handler);
    this.server.maxHeadersCount = MAX_HEADER_FIELDS + 1;
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket));
    // Node would answer `Expect: 100-continue` at once, inviting anyone to upload
    // before being authenticated; the gateway invites only a granted request.
    this.server.on('checkContinue', handler);
    // No tunnels: an Upgrade handshake or a CONNECT never reaches the backend.
    const refuseTunnel = (_req: IncomingMessage, socket: Duplex): void => {
      socket.end(rawStatus(400, 'Bad Request'));
    };
    this.server.on('upgrade', refuseTunnel);
    this.server.on('connect', refuseTunnel);
  }

  listen(): Promise<AddressInfo> {
    const { host, port } = this.live.config.listen;
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  /** Swap in a new configuration and users file (SIGHUP); listen address and timeouts need a restart. */
  swap(config: Config, users: UserStore): void {
    // Everything that can fail first: a failed reload must change nothing.
    const tls = config.tls ? { cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) } : undefined;
    const live = this.liveFor(config, users);
    if (tls && 'setSecureContext' in this.server) this.server.setSecureContext(tls);
    this.throttle.setPolicy(throttlePolicyOf(config));
    this.live = live;
  }

  private liveFor(config: Config, users: UserStore): Live {
    users.onFailuresCleared = (login, loginIp): void => { this.throttle.forget(login, loginIp); };
    users.onPeerThrottle = (e): void => this.peerThrottle(e);
    const assertion = config.identityAssertion;
    return {
      config, users, identity: normalizedHeaderName(config.identityHeader),
      upstream: {
        url: config.upstream, pool: this.poolFor(config.upstream), timeoutMs: config.upstreamTimeout * 1000,
      },
      securityHeaders: securityHeadersOf(config),
      // Loads the key: a bad one fails the start, or the reload (keeping the running one).
      assertion: assertion
        ? { header: assertion.header, normalized: normalizedHeaderName(assertion.header), sign: assertionSigner(assertion) }
        : undefined,
    };
  }

  private poolFor(url: URL): Pool {
    let pool = this.pools.get(url.origin);
    if (pool === undefined) {
      pool = upstreamPool(url);
      this.pools.set(url.origin, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      setTimeout(() => this.server.closeAllConnections(), 2000).unref();
    });
    await Promise.all([...this.pools.values()].map((pool) => pool.destroy()));
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const live = this.live;
    const { config } = live;
    if (req.rawHeaders.length > 2 * MAX_HEADER_FIELDS) {
      headersTooLarge(this.own(res, live));
      return;
    }
    if (malformedRequest(req)) {
      badRequest(this.own(res, live));
      return;
    }
    const path = pathOf(req.url as string);
    if (path === config.healthPath) {
      this.health(this.own(res, live), live);
      return;
    }
    const peer = plainAddress(req.socket.remoteAddress);
    const peerTrusted = config.trustedProxies.length > 0 && isTrusted(config.trusted, peer);
    if (config.routes.length > 0 && path !== config.logoutPath) {
      // A path a rule and the backend could read differently never reaches either;
      // rules see it decoded, as the backend does.
      const decoded = ambiguousPath(path) ? undefined : decodedPath(path);
      if (decoded === undefined) {
        badRequest(this.own(res, live));
        return;
      }
      const route = routeFor(config.routes, decoded);
      if (route?.auth === 'deny') {
        forbidden(this.own(res, live));
        return;
      }
      if (route?.auth === 'none') {
        this.forward(req, res, live, undefined, peer, peerTrusted, route.keepAuthorization);
        return;
      }
    }
    const ip = clientAddress(peer, peerTrusted, req.headers['x-forwarded-for'], config.trusted);
    const credentials = parseBasicAuth(req.headers.authorization);
    const closeAfter: Record<string, string> = hasUnreadBody(req) ? { Connection: 'close' } : {};
    if (path === config.logoutPath) {
      if (!credentials) {
        challenge(this.own(res, live), config.realm, closeAfter);
        return;
      }
      // Throttled like a login (it checks a password too), answered the same either way.
      const { login, password } = credentials;
      const now = this.clock();
      const { known, usual } = this.attemptFacts(live.users, login, ip, now);
      const credential = credentialId(login, password);
      if (!this.throttle.idle && this.throttle.wait(login, ip, known, usual, now, true, credential) > 0) {
        challenge(this.own(res, live), config.realm, closeAfter);
        return;
      }
      const pending = live.users.authenticate(login, password, ip, true, usual);
      const end = pending instanceof Promise ? this.throttle.begin(login, ip, usual, credential) : undefined;
      this.settle(pending, (outcome) => {
        end?.();
        this.audit(login, ip, outcome, true);
        // Credentials that end nothing are a guess like a wrong password.
        if (outcome.reason !== 'logout' && !outcome.unavailable) this.failed(live, login, ip, known, usual, now);
        // A logout that could not be recorded says so: a 401 would look like a logout that worked.
        if (outcome.unavailable) unavailable(this.own(res, live));
        else challenge(this.own(res, live), config.realm, closeAfter);
      });
      return;
    }
    if (!credentials) {
      challenge(this.own(res, live), config.realm, closeAfter);
      return;
    }
    const { login, password } = credentials;
    const { users } = live;
    const now = this.clock();
    // Only once something failed, or is being checked, is there anything to look up (the common case costs nothing).
    let facts = this.throttle.idle ? undefined : this.attemptFacts(users, login, ip, now);
    const credential = facts === undefined ? undefined : credentialId(login, password);
    if (facts) {
      const wait = this.throttle.wait(login, ip, facts.known, facts.usual, now, true, credential);
      // An agent's logged-in session is no guess: its IP's count (a busy office
      // NAT) does not stop it. The account's and the pair's do, or guesses at a
      // lingering password would go unthrottled.
      if (wait > 0 && !(users.ridesLinger(login, password, ip) && this.throttle.wait(login, ip, facts.known, facts.usual, now, false) === 0)) {
        this.audit(login, ip, { granted: false, reason: 'throttled' }, false, wait);
        throttled(this.own(res, live), wait, closeAfter);
        return;
      }
    }
    const started = this.metrics ? performance.now() : 0;
    const pending = users.authenticate(login, password, ip, false, facts?.usual ?? false);
    // Answered later (a scrypt, a commit): it counts as a guess until then, or guesses sent at once would all pass.
    const end = pending instanceof Promise
      ? this.throttle.begin(login, ip, facts?.usual ?? false, credential ?? credentialId(login, password)) : undefined;
    this.settle(pending, (outcome) => {
      end?.();
      this.metrics?.authSeconds.observe((performance.now() - started) / 1000);
      this.audit(login, ip, outcome, false);
      if (outcome.reason === 'ok') {
        this.throttle.succeeded(login, ip, now);
        users.shareThrottle?.({ type: 'succeeded', login, ip });
      } else if (!outcome.granted && !outcome.unavailable && countsAsGuess(outcome)) {
        facts ??= this.attemptFacts(users, login, ip, now);
        this.failed(live, login, ip, facts.known, facts.usual, now);
      }
      if (outcome.unavailable) unavailable(this.own(res, live));
      else if (!outcome.granted) challenge(this.own(res, live), config.realm, closeAfter);
      else this.forward(req, res, live, login, peer, peerTrusted);
    });
  }

  /** A guess: counted here, and by every other gateway sharing the store. */
  private failed(live: Live, login: string, ip: string, known: boolean, usual: boolean, now: number): void {
    this.throttle.failed(login, ip, known, usual, now);
    live.users.shareThrottle?.({ type: 'failed', login, ip, known, usual });
  }

  /** What another gateway's throttle counted (store: redis), counted here too. */
  private peerThrottle(e: ThrottleEvent): void {
    const now = this.clock();
    if (e.type === 'failed') this.throttle.failed(e.login, e.ip, e.known, e.usual, now);
    else if (e.type === 'succeeded') this.throttle.succeeded(e.login, e.ip, now);
    else this.throttle.forget(e.login);
  }

  /** What the throttle needs to know of an attempt: is the login in the file, is the IP usual for it? */
  private attemptFacts(users: UserStore, login: string, ip: string, now: number): { known: boolean; usual: boolean } {
    return { known: users.knows(login), usual: this.throttle.isUsual(login, ip, now) || users.lastLoggedInFrom(login, ip) };
  }

  /** Run `then` now for a synchronous outcome, or when the promise settles. */
  private settle(outcome: Outcome | Promise<Outcome>, then: (o: Outcome) => void): void {
    if (outcome instanceof Promise) {
      outcome.then(then, (err: Error) => {
        this.log.error({ event: 'internal_error', err: err.message }, 'authentication failed unexpectedly');
        then({ granted: false, reason: 'unknown_user', unavailable: true });
      });
    } else then(outcome);
  }

  /** To the backend: as `login`, or (an open route) as nobody, every identity header removed. */
  private forward(
    req: IncomingMessage, res: ServerResponse, live: Live, login: string | undefined, peer: string, peerTrusted: boolean,
    keepAuthorization = false,
  ): void {
    if (res.destroyed) return; // the client left while its login was being recorded
    if (req.headers.expect !== undefined && /^\s*100-continue\s*$/i.test(req.headers.expect)) res.writeContinue();
    const { config } = live;
    // No identity, nothing to assert: an open route gets no assertion either.
    const assertion = login === undefined ? undefined : live.assertion;
    const headers = upstreamHeaders(req.headers, {
      identity: live.identity, identityHeader: config.identityHeader, login, peer, peerTrusted,
      proto: config.tls ? 'https' : 'http', assertion: live.assertion?.normalized, keepAuthorization,
    });
    const host = headers['x-forwarded-host'];
    const scheme = String(headers['x-forwarded-proto']);
    const clientOrigin = `${scheme}://${typeof host === 'string' ? host : ''}`;
    const { secure, httpOnly, sameSite } = config.cookies;
    const addSecure = secure === 'auto' ? scheme === 'https' : secure;
    const cookies = addSecure || httpOnly || sameSite !== undefined ? { secure: addSecure, httpOnly, sameSite } : undefined;
    const { metrics } = this;
    const send = (): void => {
      if (metrics) {
        const started = performance.now();
        res.once('finish', () => metrics.upstreamSeconds.observe((performance.now() - started) / 1000));
      }
      forward(req, res, headers, live.upstream, clientOrigin, (err) => this.upstreamFailed(err, res, live), {
        cookies, extra: live.securityHeaders,
      });
    };
    if (!assertion || login === undefined) {
      send();
      return;
    }
    assertion.sign(login, this.clock()).then((jwt) => {
      if (res.destroyed) return; // the client left while it was signed
      headers[assertion.header] = jwt;
      send();
    }, (err: Error) => {
      this.log.error({ event: 'internal_error', err: err.message }, 'could not sign the identity assertion');
      unavailable(this.own(res, live));
    });
  }

  /**
   * The gateway's own answer: with the security headers. (Proxied answers get
   * them in their writeHead: a setHeader before it would make Node merge every
   * header of the backend's answer one by one.)
   */
  private own(res: ServerResponse, live: Live): ServerResponse {
    for (const [name, value] of live.securityHeaders) res.setHeader(name, value);
    return res;
  }

  private upstreamFailed(err: Error, res: ServerResponse, live: Live): void {
    const timedOut = err instanceof UpstreamTimeout;
    this.metrics?.upstreamFailures.labels(timedOut ? 'timeout' : 'error').inc();
    this.log.warn({ event: timedOut ? 'upstream_timeout' : 'upstream_error', code: (err as NodeJS.ErrnoException).code,
      err: err.message }, timedOut ? 'backend did not answer in time' : 'backend unreachable');
    if (res.headersSent) res.destroy();
    else if (timedOut) gatewayTimeout(this.own(res, live));
    else badGateway(this.own(res, live));
  }

  /**
   * 200 while logins work; with a shared store that is down, 200 "degraded"
   * while sessions still ride (a short outage, a Sentinel failover), then 503.
   */
  private health(res: ServerResponse, live: Live): void {
    const { users } = live;
    const shared = users.shared;
    const status = !users.usable ? 'unavailable' : shared === undefined || shared.up ? 'ok' : shared.lingersRide ? 'degraded' : 'unavailable';
    const problem = !users.usable ? users.unusableReason
      : status === 'ok' ? undefined : `state store unreachable for ${Math.round(shared?.downSeconds ?? 0)} s`;
    json(res, status === 'unavailable' ? 503 : 200, {
      status,
      version: VERSION,
      users: users.userCount,
      tokens: users.tokenCount,
      malformedLines: users.malformedLines,
      ...(shared ? { state: { store: 'redis', connected: shared.up } } : {}),
      ...(problem === undefined ? {} : { problem }),
    });
  }

  private audit(login: string, ip: string, outcome: Outcome, logoutPath: boolean, retryAfter?: number): void {
    this.metrics?.logins.labels(outcome.granted ? 'granted' : 'denied', outcome.reason).inc();
    // A linger is every page resource of a logged-in agent: debug level, built only when wanted.
    if (outcome.reason === 'linger' && !this.log.isLevelEnabled('debug')) return;
    const entry = {
      event: 'auth', user: login, ip, result: outcome.granted ? 'granted' : 'denied', reason: outcome.reason,
      ...(outcome.detail ? { detail: outcome.detail } : {}),
      ...(outcome.counted ? { counted: true } : {}),
      ...(logoutPath ? { path: 'logout' } : {}),
      ...(outcome.unavailable ? { unavailable: true } : {}),
      ...(retryAfter !== undefined ? { retryAfter } : {}),
    };
    if (outcome.reason === 'linger') this.log.debug(entry, 'login lingering');
    else this.log.info(entry, `login ${entry.result}: ${outcome.reason}`);
  }

  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    if ((err.code === 'ECONNRESET' || !socket.writable) && !socket.destroyed) {
      socket.destroy();
      return;
    }
    this.log.debug({ event: 'client_error', code: err.code, ip: plainAddress((socket as Socket).remoteAddress) }, 'malformed request');
    // An answer on this connection has already started: the handler refused the
    // request before the parser hit the error further on (a second 400 followed the
    // first), or a backend answer was streaming when the request body turned out
    // malformed (a 400 status line landed inside the 200's body). Nothing more is
    // written then; Node's default clientError handling checks the same field.
    const inFlight = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage;
    if (inFlight?.headersSent) {
      if (inFlight.writableEnded) socket.end();
      else socket.destroy();
      return;
    }
    const answer = err.code === 'HPE_HEADER_OVERFLOW' ? rawStatus(431, 'Request Header Fields Too Large')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? rawStatus(408, 'Request Timeout')
        : rawStatus(400, 'Bad Request');
    socket.end(answer);
  }
}
