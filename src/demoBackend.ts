// A stand-in helpdesk for the demo: shows which user the gateway handed it,
// loads a page full of images (as real helpdesks do), and links to logout.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function icon(n: number): string {
  const hue = (n * 37) % 360;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48"><rect width="48" height="48" rx="8" fill="hsl(${hue},60%,55%)"/>` +
    `<text x="24" y="31" font-size="18" text-anchor="middle" fill="#fff" font-family="sans-serif">${n}</text></svg>`;
}

function home(req: IncomingMessage, identityHeader: string, logoutPath: string): string {
  const raw = req.headers[identityHeader.toLowerCase()];
  const user = typeof raw === 'string' ? Buffer.from(raw, 'latin1').toString('utf8') : '(nobody)';
  const shown = Object.entries(req.headers)
    .filter(([name]) => name !== 'cookie')
    .map(([name, value]) => `<tr><td>${escapeHtml(name)}</td><td>${escapeHtml(String(value))}</td></tr>`).join('');
  const icons = Array.from({ length: 12 }, (_, i) => `<img src="/img/${i + 1}.svg" alt="ticket ${i + 1}">`).join(' ');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Demo helpdesk</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}td{padding:2px 8px;border-bottom:1px solid #ddd;font-family:monospace}</style>
</head><body><h1>Demo helpdesk</h1>
<p id="user">Logged in as <strong>${escapeHtml(user)}</strong> (from the <code>${escapeHtml(identityHeader)}</code> header set by otpgate).</p>
<p>${icons}</p>
<p><a href="${escapeHtml(logoutPath)}">Log out</a></p>
<h2>Headers this backend received</h2><table>${shown}</table></body></html>`;
}

export async function startDemoBackend(identityHeader: string, logoutPath: string): Promise<{ server: Server; port: number }> {
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const m = /^\/img\/(\d{1,2})\.svg$/.exec(req.url ?? '');
    if (m) {
      res.writeHead(200, { 'Content-Type': 'image/svg+xml', 'Cache-Control': 'no-store' });
      res.end(icon(Number(m[1])));
      return;
    }
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end(home(req, identityHeader, logoutPath));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}
