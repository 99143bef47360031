// The last step of the pipeline: send an authenticated request to the backend
// and stream the answer back. This is the per-request cost of every page and
// image a logged-in agent loads, so it runs on undici's dispatcher, which costs
// about two thirds of node:http's client per request here (README, "Why these
// libraries").
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { Client, Pool, type Dispatcher } from 'undici';
import { downstreamHeaders, type CookiePolicy } from './headers.js';

/** The backend did not answer within upstreamTimeout. */
export class UpstreamTimeout extends Error {
  readonly code = 'OTPGATE_UPSTREAM_TIMEOUT';
}

export interface Upstream {
  readonly url: URL;
  readonly pool: Dispatcher;
  /** how long the backend may stay silent: before its answer starts, and between two chunks of it */
  readonly timeoutMs: number;
}

/**
 * A keep-alive connection pool to one backend origin. A body being uploaded to
 * the backend does not count as its silence (undici holds the headers timeout
 * while it writes), a silent backend does.
 */
export function upstreamPool(url: URL): Pool {
  return new Pool(url.origin, { connections: 256 });
}

/** One new connection to the backend, outside the pool. */
const upstreamConnection = (url: URL): Client => new Client(url.origin);

/** The upstream path for a request target: the upstream's base path joined with it. */
export function upstreamPath(base: URL, target: string): string {
  const prefix = base.pathname.endsWith('/') ? base.pathname.slice(0, -1) : base.pathname;
  return prefix + target;
}

const RETRYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);

/** The request carries a body (Node has already refused ambiguous framing). */
const hasBody = (req: IncomingMessage): boolean =>
  req.headers['transfer-encoding'] !== undefined ||
  (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');

const TIMEOUTS = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);
// The backend closed a kept-alive connection just as it was reused: the request never reached it.
const STALE_CONNECTION = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

/**
 * Forward `req` with `headers` to the upstream and stream the answer into `res`.
 * `failed` is called at most once, for an error before the answer started
 * (the caller answers 502/504) or after (the caller closes the connection).
 * `clientOrigin` is the origin the client used, for rewriting redirects.
 * A body without Content-Length goes on chunked (undici frames it), never raw.
 * `answer`: cookie attributes to add, and headers the answer gets unless the backend set them.
 */
export function forward(
  req: IncomingMessage, res: ServerResponse, headers: OutgoingHttpHeaders, upstream: Upstream,
  clientOrigin: string, failed: (err: Error) => void,
  answer: { readonly cookies?: CookiePolicy | undefined; readonly extra?: readonly (readonly [string, string])[] } = {},
): void {
  // The client left before the request could go (e.g. while its assertion was signed).
  if (res.destroyed) return;
  const body = hasBody(req);
  const options: Dispatcher.DispatchOptions = {
    path: upstreamPath(upstream.url, req.url ?? '/'),
    method: req.method ?? 'GET',
    headers: headers as Dispatcher.DispatchOptions['headers'],
    body: body ? req : null,
    headersTimeout: upstream.timeoutMs,
    bodyTimeout: upstream.timeoutMs,
  };
  let current: Dispatcher.DispatchController | undefined;
  // answered, failed, or the client left: nothing more to do
  let finished = false;
  const resume = (): void => current?.resume();

  function send(dispatcher: Dispatcher, mayRetry: boolean): void {
    let started = false;
    dispatcher.dispatch(options, {
      onRequestStart(c) {
        current = c;
        if (finished) c.abort(new Error('client left'));
      },
      onResponseStart(_c, statusCode, responseHeaders, statusMessage) {
        if (statusCode < 200) return; // 1xx: Node answers the client's Expect itself
        started = true;
        res.writeHead(statusCode, statusMessage, downstreamHeaders(responseHeaders, upstream.url, clientOrigin, answer.cookies, answer.extra));
      },
      onResponseData(c, chunk) {
        if (res.write(chunk)) return;
        // A destroyed answer never drains: a paused request would hold its backend connection for good.
        if (res.destroyed) c.abort(new Error('client left'));
        else {
          c.pause();
          res.once('drain', resume);
        }
      },
      onResponseEnd() {
        finished = true;
        res.end();
      },
      onResponseError(_c, err: Error & { code?: string }) {
        if (finished) return;
        // A kept-alive connection the backend closed just as it was reused: the
        // request never reached it, so an idempotent one without a body goes
        // again, once, on a connection of its own.
        if (mayRetry && !started && STALE_CONNECTION.has(err.code ?? '')) {
          const fresh = upstreamConnection(upstream.url);
          send(fresh, false);
          void fresh.close(); // after that one request
          return;
        }
        finished = true;
        failed(err.code !== undefined && TIMEOUTS.has(err.code) ? new UpstreamTimeout('upstream timeout') : err);
      },
    });
  }

  // The client left first (a client that went away is not the backend's failure): stop the backend work too.
  res.on('close', () => {
    if (finished) return;
    finished = true;
    if (current && !current.aborted) current.abort(new Error('client left'));
  });
  req.on('error', ignore);
  send(upstream.pool, !body && RETRYABLE.has(req.method ?? ''));
}

// Errors of the client's request stream end in res 'close'; without a listener they would be thrown.
const ignore = (): void => undefined;
