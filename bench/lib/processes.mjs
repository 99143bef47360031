// Child processes and temp dirs of one benchmark run, and their cleanup: every
// child is killed and every temp dir removed on normal exit, on an error and on
// Ctrl-C, so a failed run leaves no nginx or gateway listening behind it.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const children = new Set();
const tempDirs = new Set();

export function makeTempDir(prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

/**
 * Signal a child's whole process group (each child leads its own, see
 * spawnTracked): killing only nginx's master would orphan its workers, which
 * keep the port and our pipes open.
 */
function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    try { child.kill(signal); } catch { /* already gone */ }
  }
}

/** Synchronous, so it also works from process.on('exit'). Kills only our own children, by process group id. */
export function cleanupAll() {
  for (const child of children) signalGroup(child, 'SIGKILL');
  children.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

export function installCleanupHandlers() {
  process.on('exit', cleanupAll);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(signal, () => {
      process.stderr.write(`\nbench: ${signal}, cleaning up\n`);
      cleanupAll();
      process.exit(130);
    });
  }
}

/**
 * Spawn a tracked child. Its stdout and stderr are always read (a child
 * blocked on a full pipe would stall the benchmark) and the last lines kept
 * for error messages; `onLine` sees each stdout line.
 */
export function spawnTracked(name, command, args, { onLine, ...options } = {}) {
  // detached: its own process group, so cleanup can kill it with all its descendants.
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true, ...options });
  children.add(child);
  child.name = name;
  child.tail = [];
  const keep = (line) => {
    child.tail.push(line);
    if (child.tail.length > 20) child.tail.shift();
  };
  const lines = (stream, each) => {
    let rest = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      const parts = (rest + chunk).split('\n');
      rest = parts.pop();
      for (const line of parts) each(line);
    });
  };
  lines(child.stdout, (line) => { keep(line); onLine?.(line); });
  lines(child.stderr, keep);
  child.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  child.on('error', (err) => keep(`spawn error: ${err.message}`));
  return child;
}

/** Stop a child with `signal` and wait for it; SIGKILL if it takes longer than `graceMs`. */
export async function stopChild(child, signal = 'SIGTERM', graceMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exited;
  child.kill(signal);
  const timer = setTimeout(() => signalGroup(child, 'SIGKILL'), graceMs);
  const result = await child.exited;
  clearTimeout(timer);
  return result;
}

/** A loopback port nobody listens on right now (bind to 0, read it back, release). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Poll `url` until it answers `status`, or fail with the child's last output. */
export async function waitForHttp(url, child, { status = 200, timeoutMs = 30_000 } = {}) {
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${child.name} exited (${child.exitCode ?? child.signalCode}) before it answered:\n  ${child.tail.join('\n  ')}`);
    }
    try {
      const res = await fetch(url);
      await res.arrayBuffer();
      if (res.status === status) return;
    } catch { /* not listening yet */ }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${child.name} did not answer ${url} within ${timeoutMs / 1000}s:\n  ${child.tail.join('\n  ')}`);
    }
    await sleep(50);
  }
}

/**
 * Start one of bench/'s own Node servers (yardstick, fallback backend): it
 * listens on port 0 and prints `port N`; resolves once it answers HTTP.
 */
export async function startNodeServer(name, script, args = [], nodeArgs = []) {
  let port;
  const child = spawnTracked(name, process.execPath, [...nodeArgs, script, ...args], {
    onLine: (line) => { if (line.startsWith('port ')) port = Number(line.slice(5)); },
  });
  const started = Date.now();
  while (port === undefined) {
    if (child.exitCode !== null || Date.now() - started > 10_000) {
      throw new Error(`${name} did not start:\n  ${child.tail.join('\n  ')}`);
    }
    await sleep(20);
  }
  const url = `http://127.0.0.1:${port}/`;
  await waitForHttp(url, child);
  return { child, port, url };
}

/** Run a command to completion (for short things like `nginx -v`). */
export function runQuiet(command, args) {
  const result = spawnSync(command, args, { encoding: 'utf8' });
  return { ok: result.status === 0, output: `${result.stdout ?? ''}${result.stderr ?? ''}`.trim(), error: result.error };
}
