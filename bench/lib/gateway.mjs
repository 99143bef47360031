// otpgate as the benchmark runs it: `node <bin/otpgate's flags> bin/otpgate serve --config FILE`, a
// child process with its own event loop, on a loopback port picked for it.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { basicAuth, hotp } from './hotp.mjs';
import { freePort, spawnTracked, stopChild, waitForHttp } from './processes.mjs';

const OTPGATE = fileURLToPath(new URL('../../bin/otpgate', import.meta.url));
const SHEBANG_FLAGS = (readFileSync(OTPGATE, 'utf8').split('\n')[0] ?? '').split(/\s+/).filter((w) => w.startsWith('--'));

/**
 * Start otpgate on `usersFile` in front of the backend. `profileDir` runs it
 * under `node --cpu-prof` (the profile is written when it exits on SIGTERM).
 * `state`: otpgate's state config (store: redis), else the default file store.
 */
export async function startGateway({ dir, name, usersFile, backendPort, logLevel, profileDir, state }) {
  const port = await freePort();
  const config = join(dir, `${name}.yaml`);
  // Written as JSON, which is YAML; only keys the brief's config documents.
  writeFileSync(config, `${JSON.stringify({
    listen: `127.0.0.1:${port}`,
    upstream: `http://127.0.0.1:${backendPort}`,
    usersFile,
    realm: 'bench',
    logLevel,
    ...(state ? { state } : {}),
  }, null, 2)}\n`);
  // The node flags of bin/otpgate's shebang line, so a profiled run keeps them.
  const nodeArgs = [...SHEBANG_FLAGS,
    ...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir, '--cpu-prof-name', `${name}.cpuprofile`] : [])];
  let logLines = 0;
  // stdout (the JSON log) is always drained: at logLevel info a full pipe would block otpgate.
  const child = spawnTracked(`otpgate (${name})`, process.execPath, [...nodeArgs, OTPGATE, 'serve', '--config', config], {
    onLine: () => { logLines++; },
  });
  const started = performance.now();
  await waitForHttp(`http://127.0.0.1:${port}/otpgate/health`, child, { timeoutMs: 120_000 });
  // With store: redis, health may answer 200 "degraded" before the link is up: measuring
  // then would time the reconnection, not the gateway. Wait until it says connected.
  if (state?.store === 'redis') await waitForStateConnected(`http://127.0.0.1:${port}/otpgate/health`, child);
  return {
    child,
    port,
    url: `http://127.0.0.1:${port}/`,
    startupMs: performance.now() - started,
    logLines: () => logLines,
    /** SIGTERM: graceful, and writes the CPU profile when profiling. */
    stop: () => stopChild(child, 'SIGTERM'),
    /** SIGKILL: no chance to finish anything it answered for but had not yet written. */
    kill: () => stopChild(child, 'SIGKILL'),
  };
}

/** Poll the health endpoint until its JSON says `state.connected: true`. */
async function waitForStateConnected(url, child, timeoutMs = 30_000) {
  const started = Date.now();
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${child.name} exited (${child.exitCode ?? child.signalCode}):\n  ${child.tail.join('\n  ')}`);
    }
    let body;
    try {
      body = await (await fetch(url)).json();
      if (body?.state?.connected === true) return;
    } catch { /* answered something else: poll again */ }
    if (Date.now() - started > timeoutMs) {
      throw new Error(`${child.name}: state store not connected within ${timeoutMs / 1000}s (health: ${JSON.stringify(body)}):\n  ${child.tail.join('\n  ')}`);
    }
    await sleep(50);
  }
}

/** Log `user` in with the code for `counter`; returns the Authorization header that now lingers. */
export async function loginOnce(gateway, user, counter) {
  const authorization = basicAuth(user.login, user.pin + hotp(Buffer.from(user.keyHex, 'hex'), counter));
  const res = await fetch(gateway.url, { headers: { authorization } });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`login of ${user.login} with counter ${counter} answered ${res.status}, expected 200`);
  return authorization;
}
