// Makes docs/demo-after-login.png, the README's screenshot: runs `otpgate demo`,
// logs in with Debian's Chromium (playwright-core) using the code the demo
// prints, and takes a picture of the demo helpdesk. Run: node docs/screenshot.mjs
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = fileURLToPath(new URL('..', import.meta.url));
const demo = spawn(process.execPath, ['bin/otpgate', 'demo'], {
  cwd: root, env: { ...process.env, OTPGATE_DEMO_LISTEN: '127.0.0.1:0' }, stdio: ['ignore', 'pipe', 'ignore'],
});
let out = '';
const ready = new Promise((resolve) => {
  demo.stdout.on('data', (c) => {
    out += c.toString();
    const url = /Open\s+(http:\/\/\S+)/.exec(out)?.[1];
    const password = /password (\d+)/.exec(out)?.[1];
    if (url && password) resolve({ url, password });
  });
});
const { url, password } = await ready;
const browser = await chromium.launch({ executablePath: process.env.OTPGATE_CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox'] });
try {
  const context = await browser.newContext({ httpCredentials: { username: 'demo', password }, viewport: { width: 900, height: 640 } });
  const page = await context.newPage();
  const response = await page.goto(url);
  if (response?.status() !== 200) throw new Error(`login failed: ${response?.status()}`);
  await page.waitForLoadState('networkidle');
  await page.screenshot({ path: fileURLToPath(new URL('demo-after-login.png', import.meta.url)) });
  console.log('docs/demo-after-login.png written');
} finally {
  await browser.close();
  demo.kill('SIGINT');
}
