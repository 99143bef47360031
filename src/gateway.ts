// The HTTP side: every request goes through a short pipeline of named steps,
// refuseMalformed -> ownEndpoints -> authenticate -> forward, and only a request
// that passed all of them reaches the backend.
import { Agent as HttpAgent, createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { Agent as HttpsAgent, createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { readFileSync } from 'node:fs';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { createProxyServer, type ProxyServer } from 'http-proxy-3';
import type { Logger } from 'pino';
import { parseBasicAuth } from './basicAuth.js';
import type { Config } from './config.js';
import { clientAddress, isTrusted, normalizedHeaderName, plainAddress, rewriteLocation, upstreamHeaders } from './headers.js';
import { badGateway, badRequest, challenge, gatewayTimeout, json, rawStatus, unavailable } from './responses.js';
import type { Outcome, UsersFile } from './usersFile.js';
import { VERSION } from './logger.js';

class UpstreamTimeout extends Error {
  readonly code = 'OTPGATE_UPSTREAM_TIMEOUT';
}

interface Live {
  readonly config: Config;
  readonly users: UsersFile;
  readonly identity: string;
}

/** The path part of a request target (no query). */
export function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/**
 * Requests the gateway refuses before looking at credentials: a target that is
 * not origin-form (absolute-form, CONNECT, `*`), two Host headers, or an attempt
 * to switch protocols (no tunnels through the gateway).
 */
export function malformedRequest(req: IncomingMessage): boolean {
  const url = req.url ?? '';
  if (!url.startsWith('/') || url.startsWith('//')) return true;
  if (req.headers.upgrade !== undefined || req.method === 'CONNECT') return true;
  let hosts = 0;
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    if ((raw[i] as string).length === 4 && (raw[i] as string).toLowerCase() === 'host') hosts++;
  }
  return hosts !== 1;
}

/** A request whose body the gateway will not read: close the connection after answering. */
const hasUnreadBody = (req: IncomingMessage): boolean =>
  !req.complete && (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0);

export class Gateway {
  readonly server: Server | HttpsServer;
  private live: Live;
  private readonly log: Logger;
  private readonly proxy: ProxyServer;
  private readonly agent: HttpAgent;

  constructor(config: Config, users: UsersFile, log: Logger) {
    this.log = log;
    this.live = { config, users, identity: normalizedHeaderName(config.identityHeader) };
    const timeouts = {
      headersTimeout: config.headersTimeout * 1000,
      requestTimeout: config.requestTimeout * 1000,
      keepAliveTimeout: config.keepAliveTimeout * 1000,
      // One header section is enough for Basic auth and a helpdesk's cookies.
      maxHeaderSize: 16 * 1024,
    };
    const handler = (req: IncomingMessage, res: ServerResponse): void => this.handle(req, res);
    this.server = config.tls
      ? createHttpsServer({ ...timeouts, cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) }, handler)
      : createHttpServer(timeouts, handler);
    this.server.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => this.clientError(err, socket));
    // No tunnels: an Upgrade handshake or a CONNECT never reaches the backend.
    const refuseTunnel = (_req: IncomingMessage, socket: Duplex): void => {
      socket.end(rawStatus(400, 'Bad Request'));
    };
    this.server.on('upgrade', refuseTunnel);
    this.server.on('connect', refuseTunnel);
    const Agent = config.upstream.protocol === 'https:' ? HttpsAgent : HttpAgent;
    this.agent = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64, timeout: 60_000 });
    this.proxy = createProxyServer({ agent: this.agent, xfwd: false, ws: false, changeOrigin: false });
    this.proxy.on('proxyReq', (proxyReq) => {
      proxyReq.setTimeout(this.live.config.upstreamTimeout * 1000, () => proxyReq.destroy(new UpstreamTimeout('upstream timeout')));
    });
    this.proxy.on('proxyRes', (proxyRes, req, res) => {
      this.rewriteRedirect(proxyRes, req);
      this.ownConnection(proxyRes, res as ServerResponse);
      // http-proxy pipes the answer but ignores its errors: a backend dropping the
      // connection mid-answer would leave the client waiting for the rest forever.
      // (A client that left first also ends the answer: that is no upstream failure.)
      proxyRes.once('error', (err) => {
        if (!req.socket.destroyed) this.upstreamFailed(err, res as ServerResponse);
      });
    });
    // http-proxy emits 'error' when no callback handles it; an unhandled one would crash the process.
    this.proxy.on('error', (err, _req, res) => this.upstreamFailed(err, res as ServerResponse));
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
  swap(config: Config, users: UsersFile): void {
    this.live = { config, users, identity: normalizedHeaderName(config.identityHeader) };
    if (config.tls && 'setSecureContext' in this.server) {
      this.server.setSecureContext({ cert: readFileSync(config.tls.cert), key: readFileSync(config.tls.key) });
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeIdleConnections();
      setTimeout(() => this.server.closeAllConnections(), 2000).unref();
    });
    this.agent.destroy();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const live = this.live;
    const { config } = live;
    if (malformedRequest(req)) {
      badRequest(res);
      return;
    }
    const path = pathOf(req.url as string);
    if (path === config.healthPath) {
      this.health(res, live);
      return;
    }
    const peer = plainAddress(req.socket.remoteAddress);
    const peerTrusted = isTrusted(config.trusted, peer);
    const ip = clientAddress(peer, peerTrusted, req.headers['x-forwarded-for'], config.trusted);
    const credentials = parseBasicAuth(req.headers.authorization);
    const closeAfter: Record<string, string> = hasUnreadBody(req) ? { Connection: 'close' } : {};
    if (path === config.logoutPath) {
      if (!credentials) {
        challenge(res, config.realm, closeAfter);
        return;
      }
      this.settle(live.users.authenticate(credentials.login, credentials.password, ip, true), (outcome) => {
        this.audit(credentials.login, ip, outcome, true);
        challenge(res, config.realm, closeAfter);
      });
      return;
    }
    if (!credentials) {
      challenge(res, config.realm, closeAfter);
      return;
    }
    this.settle(live.users.authenticate(credentials.login, credentials.password, ip), (outcome) => {
      this.audit(credentials.login, ip, outcome, false);
      if (outcome.unavailable) unavailable(res);
      else if (!outcome.granted) challenge(res, config.realm, closeAfter);
      else this.forward(req, res, live, credentials.login, peer, peerTrusted);
    });
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

  private forward(req: IncomingMessage, res: ServerResponse, live: Live, login: string, peer: string, peerTrusted: boolean): void {
    req.headers = upstreamHeaders(req.headers, {
      identity: live.identity, identityHeader: live.config.identityHeader, login, peer, peerTrusted,
      proto: live.config.tls ? 'https' : 'http',
    }) as IncomingMessage['headers'];
    this.proxy.web(req, res, { target: live.config.upstream }, (err) => this.upstreamFailed(err, res));
  }

  private upstreamFailed(err: Error, res: ServerResponse): void {
    const timedOut = err instanceof UpstreamTimeout;
    this.log.warn({ event: timedOut ? 'upstream_timeout' : 'upstream_error', code: (err as NodeJS.ErrnoException).code,
      err: err.message }, timedOut ? 'backend did not answer in time' : 'backend unreachable');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // Headers the backend's answer already set (http-proxy copies them before the body) are not ours to send.
    for (const name of res.getHeaderNames()) res.removeHeader(name);
    if (timedOut) gatewayTimeout(res);
    else badGateway(res);
  }

  private rewriteRedirect(proxyRes: IncomingMessage, req: IncomingMessage): void {
    const location = proxyRes.headers.location;
    if (location === undefined) return;
    const host = req.headers['x-forwarded-host'] ?? req.headers.host;
    const proto = req.headers['x-forwarded-proto'] ?? (this.live.config.tls ? 'https' : 'http');
    if (typeof host !== 'string') return;
    proxyRes.headers.location = rewriteLocation(location, this.live.config.upstream, `${String(proto)}://${host}`);
  }

  /**
   * The backend's Connection and Keep-Alive describe its connection to the
   * gateway, not the client's. And forward() took the client's Connection header
   * away, so http-proxy would answer `keep-alive` even to a client that asked to
   * close (RFC 9112 section 9.6): decide from what Node made of the request.
   */
  private ownConnection(proxyRes: IncomingMessage, res: ServerResponse): void {
    const headers = proxyRes.headers;
    for (const token of String(headers.connection ?? '').split(',')) {
      const name = token.trim().toLowerCase();
      if (name !== '') delete headers[name];
    }
    delete headers['keep-alive'];
    headers.connection = res.shouldKeepAlive ? 'keep-alive' : 'close';
  }

  private health(res: ServerResponse, live: Live): void {
    const { users } = live;
    const ok = users.usable;
    json(res, ok ? 200 : 503, {
      status: ok ? 'ok' : 'unavailable',
      version: VERSION,
      users: users.userCount,
      tokens: users.tokenCount,
      malformedLines: users.malformedLines,
      ...(ok ? {} : { problem: users.unusableReason }),
    });
  }

  private audit(login: string, ip: string, outcome: Outcome, logoutPath: boolean): void {
    const entry = {
      event: 'auth', user: login, ip, result: outcome.granted ? 'granted' : 'denied', reason: outcome.reason,
      ...(outcome.detail ? { detail: outcome.detail } : {}),
      ...(logoutPath ? { path: 'logout' } : {}),
      ...(outcome.unavailable ? { unavailable: true } : {}),
    };
    if (outcome.reason === 'linger') this.log.debug(entry, 'login lingering');
    else this.log.info(entry, `login ${entry.result}: ${outcome.reason}`);
  }

  private clientError(err: NodeJS.ErrnoException, socket: Duplex): void {
    if ((err.code === 'ECONNRESET' || !socket.writable) && !socket.destroyed) {
      socket.destroy();
      return;
    }
    const answer = err.code === 'HPE_HEADER_OVERFLOW' ? rawStatus(431, 'Request Header Fields Too Large')
      : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? rawStatus(408, 'Request Timeout')
        : rawStatus(400, 'Bad Request');
    this.log.debug({ event: 'client_error', code: err.code, ip: plainAddress((socket as Socket).remoteAddress) }, 'malformed request');
    socket.end(answer);
  }
}
