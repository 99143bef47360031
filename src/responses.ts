// The gateway's own answers: small HTML pages for people, never a secret in them.
import type { ServerResponse } from 'node:http';

const escapeHtml = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title: string, body: string): string {
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>${escapeHtml(title)}</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:34em;margin:4em auto;padding:0 1em;color:#222}h1{font-size:1.4em}</style>
</head><body><h1>${escapeHtml(title)}</h1>${body}</body></html>
`;
}

function send(res: ServerResponse, status: number, html: string, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': String(body.length),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
    'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    ...headers,
  });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
}

/** 401 with the Basic challenge: the browser shows its login prompt (or forgets what it had cached). */
export function challenge(res: ServerResponse, realm: string, headers: Record<string, string> = {}): void {
  send(res, 401, page('Login required',
    '<p>Log in with your user name. As password, type your <strong>PIN followed directly by the code</strong> ' +
    'shown by your token or authenticator app (no space). If you have no PIN, type the code alone.</p>' +
    '<p>If your code is refused again and again, ask your helpdesk administrator to check your token.</p>'),
  { 'WWW-Authenticate': `Basic realm="${realm}", charset="UTF-8"`, ...headers });
}

/** 429 while throttled: when to try again, nothing about the account. */
export function throttled(res: ServerResponse, seconds: number, headers: Record<string, string> = {}): void {
  const minutes = Math.ceil(seconds / 60);
  const wait = seconds < 90 ? `${seconds} seconds` : `${minutes} minutes`;
  send(res, 429, page('Too many failed logins',
    `<p>Too many logins failed from here or for this user. Please wait <strong>${wait}</strong>, then try again ` +
    'with your PIN followed directly by the current code.</p>' +
    '<p>If you did not cause this, tell your helpdesk administrator.</p>'),
  { 'Retry-After': String(seconds), ...headers });
}

/** 403 on a path the configuration closes (`routes`, auth: deny), whoever asks. */
export function forbidden(res: ServerResponse): void {
  send(res, 403, page('Forbidden', '<p>This part of the helpdesk is not available through the gateway.</p>'));
}

export function badRequest(res: ServerResponse, headers: Record<string, string> = {}): void {
  send(res, 400, page('Bad request', '<p>The gateway could not understand this request.</p>'), { Connection: 'close', ...headers });
}

/** 431: more header fields than the gateway reads (see MAX_HEADER_FIELDS in gateway.ts). */
export function headersTooLarge(res: ServerResponse): void {
  send(res, 431, page('Request header fields too large', '<p>This request carries more header fields than the gateway accepts.</p>'),
    { Connection: 'close' });
}

export function unavailable(res: ServerResponse): void {
  send(res, 503, page('Login temporarily unavailable',
    '<p>The gateway cannot check logins right now. Please try again in a minute.</p>'), { 'Retry-After': '30' });
}

export function badGateway(res: ServerResponse): void {
  send(res, 502, page('Helpdesk unreachable', '<p>The helpdesk behind this gateway did not answer. Please try again shortly.</p>'));
}

export function gatewayTimeout(res: ServerResponse): void {
  send(res, 504, page('Helpdesk too slow', '<p>The helpdesk behind this gateway did not answer in time. Please try again.</p>'));
}

export function json(res: ServerResponse, status: number, value: unknown): void {
  if (res.headersSent) return;
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': String(body.length), 'Cache-Control': 'no-store' });
  res.end(res.req?.method === 'HEAD' ? undefined : body);
}

/** Raw answers on a socket whose request Node could not parse. */
export function rawStatus(status: 400 | 408 | 413 | 431, reason: string): string {
  return `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\nContent-Length: 0\r\nCache-Control: no-store\r\n\r\n`;
}
