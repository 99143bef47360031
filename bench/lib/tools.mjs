// External tools: wrk (load generator) and nginx (backend), from Debian's packages.
// Installed with apt-get when missing and we are root; never anything else.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Absolute path of a command, or undefined. Also looks in /usr/sbin (nginx lives there). */
export function findCommand(name) {
  const found = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  if (found.status === 0 && found.stdout.trim() !== '') return found.stdout.trim();
  for (const dir of ['/usr/sbin', '/usr/local/sbin', '/sbin']) {
    if (existsSync(`${dir}/${name}`)) return `${dir}/${name}`;
  }
  return undefined;
}

const isRoot = () => process.getuid?.() === 0;

function aptInstall(pkg) {
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '-q', pkg], { env, encoding: 'utf8' });
  let result = install();
  if (result.status !== 0) {
    // A fresh machine may have no package lists yet.
    spawnSync('apt-get', ['update', '-q'], { env, encoding: 'utf8' });
    result = install();
  }
  return result.status === 0;
}

/**
 * The path of `command`, installing Debian package `pkg` if needed and possible.
 * Returns undefined (with a reason) when it cannot be had.
 */
export function ensureCommand(command, pkg, log) {
  const existing = findCommand(command);
  if (existing) return { path: existing };
  if (!isRoot()) return { reason: `${command} not found and not root: install it with \`sudo apt-get install ${pkg}\`` };
  log(`${command} not found: apt-get install -y ${pkg} ...`);
  if (!aptInstall(pkg)) return { reason: `apt-get install ${pkg} failed` };
  const installed = findCommand(command);
  return installed ? { path: installed } : { reason: `${pkg} installed but ${command} still not found` };
}
