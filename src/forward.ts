// The last step of the pipeline: send an authenticated request to the backend
// and stream the answer back. Small on purpose: this is the per-request cost
// of every page and image a logged-in agent loads (see README, "Why these
// libraries", for why this is not http-proxy-3).
import {
  request as httpRequest, type Agent, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse,
} from 'node:http';
import { request as httpsRequest } from 'node:https';
import { downstreamHeaders } from './headers.js';

/** The backend did not answer within upstreamTimeout. */
export class UpstreamTimeout extends Error {
  readonly code = 'OTPGATE_UPSTREAM_TIMEOUT';
}

interface Deadline {
  at: number;
  /** bytes sent and received on the backend connection so far, if it has one yet */
  readonly progress: () => number | undefined;
  /** progress when last looked at; undefined until the connection is known */
  seen: number | undefined;
  readonly ms: number;
  readonly expire: () => void;
}

/**
 * Deadlines for backend answers, checked by one timer. A timer per request
 * (socket.setTimeout) cost a fifth of the gateway's CPU time per request in
 * the benchmark; a sweep over the requests in flight costs next to nothing.
 * A deadline passes only after `ms` without a byte moving either way, so a
 * long upload or a slow download is not cut while it flows.
 */
export class Deadlines {
  private readonly pending = new Set<Deadline>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly sweepMs: number) {}

  add(ms: number, progress: () => number | undefined, expire: () => void): Deadline {
    const d: Deadline = { at: Date.now() + ms, progress, seen: undefined, ms, expire };
    this.pending.add(d);
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.sweep(), this.sweepMs);
      this.timer.unref();
    }
    return d;
  }

  delete(d: Deadline): void {
    this.pending.delete(d);
    if (this.pending.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const d of this.pending) {
      const progress = d.progress();
      // A reused connection has counted earlier requests' bytes: start from what it had.
      if (d.seen === undefined) d.seen = progress;
      else if (progress !== d.seen) {
        d.seen = progress;
        d.at = now + d.ms;
        continue;
      }
      if (d.at > now) continue;
      this.delete(d);
      d.expire();
    }
  }
}

export interface Upstream {
  readonly url: URL;
  /** url.hostname without the brackets of an IPv6 literal */
  readonly hostname: string;
  readonly agent: Agent;
  /** how long the backend may stay silent: before its answer starts, and between two chunks of it */
  readonly timeoutMs: number;
  readonly deadlines: Deadlines;
}

/** The upstream path for a request target: the upstream's base path joined with it. */
export function upstreamPath(base: URL, target: string): string {
  const prefix = base.pathname.endsWith('/') ? base.pathname.slice(0, -1) : base.pathname;
  return prefix + target;
}

const RETRYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** A request that can be sent again as it was: idempotent, and without a body. */
const retryable = (req: IncomingMessage): boolean =>
  RETRYABLE.has(req.method ?? '') && req.headers['transfer-encoding'] === undefined &&
  (req.headers['content-length'] === undefined || req.headers['content-length'] === '0');

/**
 * Forward `req` with `headers` to the upstream and pipe the answer into `res`.
 * `failed` is called at most once, for an error before the answer started
 * (the caller answers 502/504) or after (the caller closes the connection).
 * `clientOrigin` is the origin the client used, for rewriting redirects.
 */
export function forward(
  req: IncomingMessage, res: ServerResponse, headers: OutgoingHttpHeaders, upstream: Upstream,
  clientOrigin: string, failed: (err: Error) => void, retry = true,
): void {
  const { url } = upstream;
  let settled = false;
  const proxyReq = (url.protocol === 'https:' ? httpsRequest : httpRequest)({
    protocol: url.protocol, hostname: upstream.hostname, port: url.port,
    method: req.method, path: upstreamPath(url, req.url ?? '/'), headers, agent: upstream.agent,
  }, (proxyRes) => {
    proxyRes.on('error', fail);
    const status = proxyRes.statusCode ?? 0;
    // Node would throw on a status it cannot send (an HTTP/1.1 "000" from a broken backend).
    if (status < 100 || status > 999) {
      fail(new Error(`backend answered with status ${status}`));
      return;
    }
    res.writeHead(status, proxyRes.statusMessage, downstreamHeaders(proxyRes.headers, url, clientOrigin));
    proxyRes.pipe(res);
  });
  const deadline = upstream.deadlines.add(upstream.timeoutMs, () => {
    const socket = proxyReq.socket;
    return socket ? socket.bytesRead + socket.bytesWritten : undefined;
  }, () => fail(new UpstreamTimeout('upstream timeout')));
  function finish(): void {
    settled = true;
    upstream.deadlines.delete(deadline);
  }
  function fail(err: Error): void {
    if (settled) return;
    finish();
    proxyReq.destroy();
    // A client that went away is not the backend's failure.
    if (!res.destroyed && !req.socket.destroyed) failed(err);
  }
  proxyReq.on('error', (err: NodeJS.ErrnoException) => {
    // A kept-alive connection the backend closed just as we reused it: the request
    // never reached it, so an idempotent one without a body can safely go again.
    if (retry && !settled && proxyReq.reusedSocket && err.code === 'ECONNRESET' && retryable(req)) {
      finish();
      forward(req, res, headers, upstream, clientOrigin, failed, false);
      return;
    }
    fail(err);
  });
  // The answer is complete, or the client left first: then stop the backend work too.
  res.on('close', () => {
    if (settled) return;
    finish();
    if (!res.writableFinished) proxyReq.destroy();
  });
  req.on('error', ignore);
  if (retry) req.pipe(proxyReq);
  else proxyReq.end();
}

// Errors of the client's request stream end in res 'close'; without a listener they would be thrown.
const ignore = (): void => undefined;
