// The agent's day in a real browser: Debian's Chromium driven by playwright-core,
// answering the gateway's Basic-auth prompt with PIN + code.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { chromium, type Browser, type BrowserContext, type Response } from 'playwright-core';
import { rfcHotp, secret, secretKey } from './lib/harness.js';
import { startGateway, type Gw } from './lib/gateway.js';

export const CHROMIUM = process.env.OTPGATE_CHROMIUM ?? '/usr/bin/chromium';

const KEY = secretKey(randomBytes(20).toString('hex'));
const PIN = secret('br0wserPin');
const USERS = `HOTP agent ${PIN} ${KEY} 0 0\n`;
const password = (counter: number): string => `${PIN}${rfcHotp(KEY, counter)}`;
const LOGOUT = '/otpgate/logout';

/** A helpdesk page as real ones are: the user it got, 20 images, scripts and styles loaded at once, a logout link. */
function helpdesk(req: IncomingMessage, res: ServerResponse): void {
  const url = req.url ?? '/';
  const kind = /^\/(img|js|css)\/\d+\.(svg|js|css)$/.exec(url)?.[1];
  if (kind === 'img') {
    res.writeHead(200, { 'Content-Type': 'image/svg+xml' });
    res.end('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>');
    return;
  }
  if (kind === 'js') {
    res.writeHead(200, { 'Content-Type': 'text/javascript' });
    res.end('window.loaded = (window.loaded || 0) + 1;');
    return;
  }
  if (kind === 'css') {
    res.writeHead(200, { 'Content-Type': 'text/css' });
    res.end('p { margin: 0 }');
    return;
  }
  const user = String(req.headers['remote-user'] ?? '(nobody)');
  const assets = [
    ...Array.from({ length: 10 }, (_, i) => `<img src="/img/${i}.svg" alt="">`),
    ...Array.from({ length: 5 }, (_, i) => `<script src="/js/${i}.js"></script>`),
    ...Array.from({ length: 5 }, (_, i) => `<link rel="stylesheet" href="/css/${i}.css">`),
  ].join('\n');
  res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><html><head><title>Helpdesk</title></head><body>
<p id="user">${user}</p>${assets}<a id="logout" href="${LOGOUT}">Log out</a></body></html>`);
}

let browser: Browser;
t.before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});
t.teardown(() => browser.close());

/** A fresh browser profile that answers the login prompt with these credentials. */
async function agentBrowser(t: { teardown(fn: () => Promise<void>): void }, pw: string): Promise<{ context: BrowserContext }> {
  const context = await browser.newContext({ httpCredentials: { username: 'agent', password: pw } });
  t.teardown(() => context.close());
  return { context };
}

/**
 * A gateway in front of the helpdesk, and every status it answered, as the
 * server sent them (the browser answers a challenge itself, unseen by the page).
 */
async function gateway(tt: { teardown(fn: () => void | Promise<void>): void }, config: Record<string, unknown> = {}): Promise<Gw & { statuses: number[] }> {
  // A clock that stands still (the tokens count events, not time): a wait earned is exactly what the page says.
  const now = Date.now() / 1000;
  const gw = await startGateway(tt, USERS, { backend: helpdesk, config: { realm: 'Helpdesk', ...config }, clock: () => now });
  const statuses: number[] = [];
  gw.running.gateway.server.on('request', (_req: IncomingMessage, res: ServerResponse) => {
    res.once('finish', () => statuses.push(res.statusCode));
  });
  return { ...gw, statuses };
}

t.test('first visit: the prompt; PIN + code log in; the page shows the user the helpdesk got; 20 resources, one prompt', async (t) => {
  const gw = await gateway(t);
  const { context } = await agentBrowser(t, password(0));
  const page = await context.newPage();
  const response = await page.goto(`http://127.0.0.1:${gw.port}/`);
  t.equal(response?.status(), 200);
  const { statuses } = gw;
  t.equal(await page.textContent('#user'), 'agent', 'the helpdesk got the login');
  await page.waitForFunction('window.loaded === 5');
  t.equal(await page.evaluate('document.querySelectorAll("img").length'), 10);
  t.ok(await page.evaluate('[...document.images].every((i) => i.complete && i.naturalWidth > 0)'), 'every image loaded');
  t.equal(statuses.filter((s) => s === 401).length, 1, 'one challenge, answered once, for the page and its 20 resources');
  const resources = gw.backend.seen.filter((s) => s.url !== '/favicon.ico');
  t.equal(resources.length, 21, 'the page and all 20 resources reached the helpdesk');
  t.ok(gw.backend.seen.every((s) => s.headers['remote-user'] === 'agent'), 'each as the agent');
});

t.test('a wrong code: asked again, nothing reaches the helpdesk; the page behind Cancel says what to type', async (t) => {
  const gw = await gateway(t);
  const { context } = await agentBrowser(t, `${PIN}000000`);
  const page = await context.newPage();
  const response = await page.goto(`http://127.0.0.1:${gw.port}/`);
  t.equal(response?.status(), 401, 'refused: the browser asks again');
  t.match(response?.headers()['www-authenticate'] ?? '', /^Basic realm="Helpdesk"/);
  t.equal(gw.backend.seen.length, 0, 'nothing reached the helpdesk');
  const text = await page.textContent('body') ?? '';
  t.match(text, /PIN followed directly by the code/, 'what to type');
  t.match(text, /helpdesk administrator/, 'and whom to ask');
  t.ok(Buffer.byteLength(await page.content()) < 2048, 'a small page');
});

t.test('throttled: the 429 page is readable and says when to try again', async (t) => {
  const gw = await gateway(t, { throttle: { pair: { free: 2, baseSeconds: 120, maxSeconds: 900, quietSeconds: 3600 } } });
  let last: Response | null = null;
  for (let i = 0; i < 6 && last?.status() !== 429; i++) {
    const { context } = await agentBrowser(t, `${PIN}00000${i}`);
    last = await (await context.newPage()).goto(`http://127.0.0.1:${gw.port}/`);
  }
  t.equal(last?.status(), 429);
  t.equal(last?.headers()['retry-after'], '120');
  const { context } = await agentBrowser(t, password(0));
  const page = await context.newPage();
  const response = await page.goto(`http://127.0.0.1:${gw.port}/`);
  t.equal(response?.status(), 429, 'even the right code waits');
  t.match(await page.textContent('h1') ?? '', /Too many failed logins/);
  t.match(await page.textContent('body') ?? '', /Please wait 2 minutes, then try again/);
  t.equal(gw.backend.seen.length, 0);
});

t.test('logout: afterwards the same credentials no longer work and the browser is asked again; the helpdesk\'s own link does the same', async (t) => {
  const gw = await gateway(t);
  const { context } = await agentBrowser(t, password(0));
  const page = await context.newPage();
  t.equal((await page.goto(`http://127.0.0.1:${gw.port}/`))?.status(), 200);
  const out = await page.goto(`http://127.0.0.1:${gw.port}${LOGOUT}`);
  t.equal(out?.status(), 401, 'the logout path answers the challenge');
  const after = await page.goto(`http://127.0.0.1:${gw.port}/`);
  t.equal(after?.status(), 401, 'the cached PIN + code no longer log in: the prompt again');
  const seen = gw.backend.seen.length;

  const second = await agentBrowser(t, password(1));
  const desk = await second.context.newPage();
  t.equal((await desk.goto(`http://127.0.0.1:${gw.port}/`))?.status(), 200, 'the next code logs in');
  const [logoutResponse] = await Promise.all([desk.waitForResponse((r) => r.url().endsWith(LOGOUT)), desk.click('#logout')]);
  t.equal(logoutResponse.status(), 401, 'the helpdesk\'s logout link, pointed at the logout path');
  t.equal((await desk.goto(`http://127.0.0.1:${gw.port}/`))?.status(), 401, 'and then the prompt again');
  const pages = gw.backend.seen.slice(seen).filter((s) => s.url !== '/favicon.ico');
  t.equal(pages.length, 21, 'only the second login\'s page and resources reached the helpdesk');
});
