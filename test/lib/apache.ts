// Debian's real Apache 2.4 with mod_cgi as the helpdesk behind the gateway: its
// own config in a temp dir, a loopback port, and test/fixtures/helpdesk.cgi at
// Znuny's paths (/otrs/index.pl for agents, /otrs/customer.pl for customers).
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { accepts, freePort, tempDir } from './harness.js';

export const APACHE = '/usr/sbin/apache2';
const MODULES = '/usr/lib/apache2/modules';
const CGI = fileURLToPath(new URL('../fixtures/helpdesk.cgi', import.meta.url));

export interface Apache {
  readonly port: number;
  readonly url: string;
  errorLog(): string;
}

export async function startApache(t: { teardown(fn: () => void | Promise<void>): void }): Promise<Apache> {
  const dir = tempDir(t, 'otpgate-apache-');
  // Its children run as nobody (Apache drops root): they must reach the script.
  chmodSync(dir, 0o755);
  const cgi = join(dir, 'cgi');
  mkdirSync(cgi, { mode: 0o755 });
  for (const name of ['index.pl', 'customer.pl']) {
    copyFileSync(CGI, join(cgi, name));
    chmodSync(join(cgi, name), 0o755);
  }
  const port = await freePort();
  const conf = join(dir, 'apache2.conf');
  writeFileSync(conf, [
    `ServerRoot ${dir}`,
    `DefaultRuntimeDir ${dir}`,
    `PidFile ${dir}/apache2.pid`,
    `ErrorLog ${dir}/error.log`,
    'LogLevel warn',
    `Listen 127.0.0.1:${port}`,
    'ServerName 127.0.0.1',
    'User nobody',
    'Group nogroup',
    `LoadModule mpm_prefork_module ${MODULES}/mod_mpm_prefork.so`,
    `LoadModule authz_core_module ${MODULES}/mod_authz_core.so`,
    `LoadModule alias_module ${MODULES}/mod_alias.so`,
    `LoadModule cgi_module ${MODULES}/mod_cgi.so`,
    'StartServers 2',
    `DocumentRoot ${dir}`,
    `ScriptAlias /otrs/ ${cgi}/`,
    `<Directory ${cgi}>`,
    '  Options +ExecCGI',
    '  Require all granted',
    '</Directory>',
    '',
  ].join('\n'));
  // Its own process group: at shutdown prefork signals the whole group it is in, the test runner too.
  const child = spawn(APACHE, ['-f', conf, '-DFOREGROUND'], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  t.teardown(async () => {
    child.kill('SIGTERM');
    await exited;
  });
  const errorLog = (): string => {
    try {
      return readFileSync(join(dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  };
  for (let i = 0; i < 200 && !(await accepts(port)); i++) {
    if (child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  if (!(await accepts(port))) throw new Error(`apache2 did not start: ${stderr} ${errorLog()}`);
  return { port, url: `http://127.0.0.1:${port}`, errorLog };
}
