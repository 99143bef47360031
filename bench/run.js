// otpgate benchmark: `npm run bench` (builds first). All rows are measured in ONE
// run, because this small shared machine is noisy and only same-run ratios mean
// anything. Rows:
//   (a) the backend (nginx) direct
//   (b) the yardstick: a minimal Node pass-through proxy without authentication
//   (b') for reference: the same proxy sending with undici, as otpgate does
//   (c) otpgate, a lingering login (the same valid Authorization on every request)
//   (d) otpgate, fresh logins: a new valid code on every request, one client per user
// each for a users file of 10 users and one of 100,000 (the users who log in are
// the last lines of the file). Then the shared-state mode, store: redis, on one
// redis-server of our own, with a users file of 1,000 users (each gateway its own copy):
//   (d) fresh logins on the file store for that file too, as the baseline of (e)
//   (e) fresh logins, store: redis, one gateway
//   (f) fresh logins, store: redis, two gateways sharing the Redis, the same
//       clients split evenly across them: what a second gateway adds
//   (g) lingering, store: redis, through one gateway and through two at once,
//       measured interleaved with the yardstick (b) again
// Without redis-server the store: redis rows are skipped (logged, and said in the report).
// Results go to stdout and bench/results/latest.json.
//
// Rows (a)-(c) are measured interleaved, in rounds (see measureInterleaved):
// the machine's throughput drifts by tens of percent within a minute.
//
// Environment: BENCH_SECONDS (measured seconds per row, default 10),
// BENCH_ROUNDS (rounds rows a-c are split into, default 5),
// BENCH_WARMUP (seconds, default 2), BENCH_BACKEND=node (use the Node fallback
// backend instead of nginx, to test that path), BENCH_REDIS=off (skip the store: redis rows, as
// without redis-server: a shorter run, and a test of that path), BENCH_PROFILE=1 (run every otpgate under
// `node --cpu-prof`: profiles in bench/results/profiles/, summaries on stderr and in latest.json;
// the profiler slows otpgate down, so the targets are not judged in such a run).
import { chmodSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBackend } from './lib/backend.mjs';
import { loginOnce, startGateway } from './lib/gateway.mjs';
import { selfTestHotp } from './lib/hotp.mjs';
import { cleanupAll, installCleanupHandlers, makeTempDir, spawnTracked, startNodeServer, stopChild } from './lib/processes.mjs';
import { ensureCommand } from './lib/tools.mjs';
import { findRedisServer, readRedisCounters, startRedisServer } from './lib/redis.mjs';
import { readCounters, writeUsersFile } from './lib/usersFile.mjs';
import { measureInterleaved, WRK_CONNECTIONS, WRK_THREADS } from './lib/wrk.mjs';
import { formatProfileSummary, summariseProfile } from './profile-summary.mjs';
import { printReport } from './lib/report.mjs';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5);
const WARM_SECONDS = Number(process.env.BENCH_WARMUP ?? 2);
const PROFILE = process.env.BENCH_PROFILE === '1';
const SMALL = 10;
const LARGE = 100_000;
// The store: redis rows' file: the mode is for sites big enough to run several
// gateways; with 1,000 users the file is not what is measured (see (c) 10 vs 100,000).
const MID = 1_000;
const FRESH_CLIENTS = 50;
const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url));
const PROFILE_DIR = join(RESULTS_DIR, 'profiles');

const log = (message) => process.stderr.write(`bench: ${message}\n`);

/** `node --cpu-prof` arguments when profiling (the profile is written when the process exits normally). */
const profileArgs = (name) => (PROFILE ? ['--cpu-prof', '--cpu-prof-dir', PROFILE_DIR, '--cpu-prof-name', `${name}.cpuprofile`] : []);

/** The yardstick proxy (b), as its own process like otpgate (profiled too, for comparison). */
function startYardstick(backendPort) {
  const script = fileURLToPath(new URL('./yardstick-proxy.mjs', import.meta.url));
  return startNodeServer('yardstick proxy', script, [String(backendPort)], profileArgs('yardstick'));
}

/** Row (b'): the yardstick on undici, for reference (not a target). */
function startUndiciYardstick(backendPort) {
  const script = fileURLToPath(new URL('./yardstick-undici.mjs', import.meta.url));
  return startNodeServer('undici yardstick proxy', script, [String(backendPort)], profileArgs('yardstick-undici'));
}

/** A users file of `total` users in its own temp dir; `copyOf` copies another one instead. */
function prepareUsersFile(total, copyOf) {
  const dir = makeTempDir(`otpgate-bench-${total}-`);
  const path = join(dir, 'otp-users');
  if (copyOf) {
    copyFileSync(copyOf.path, path);
    chmodSync(path, 0o600);
    return { total, dir, path, active: copyOf.active };
  }
  const started = performance.now();
  const active = writeUsersFile(path, total, Math.min(FRESH_CLIENTS, total));
  log(`users file of ${total} users written in ${Math.round(performance.now() - started)} ms`);
  return { total, dir, path, active };
}

/** The user whose login lingers: the very last line of the file. */
const lingerUserOf = (file) => file.active[file.active.length - 1];

/** `requests`: how many the process served (warm-up included), for CPU time per request. */
function profileSummaryOf(name, requests) {
  if (!PROFILE) return undefined;
  const summary = summariseProfile(join(PROFILE_DIR, `${name}.cpuprofile`));
  log(`profile of ${name}:\n${formatProfileSummary(summary, requests)}`);
  return { ...summary, requests, busyUsPerRequest: requests ? (summary.busyMs * 1000) / requests : undefined };
}

const gatewayOptions = (ctx, file, name, logLevel) => ({
  dir: file.dir, name, usersFile: file.path, backendPort: ctx.backend.port, logLevel,
  profileDir: PROFILE ? PROFILE_DIR : undefined,
});

/**
 * Rows (a), (b) and the lingering rows (c): one otpgate per users file, each
 * with one login done, then all targets measured interleaved by wrk.
 */
async function lingeringPhase(ctx, files) {
  const setups = [
    { file: files.small, logLevel: 'warn', name: `linger-${SMALL}` },
    { file: files.large, logLevel: 'warn', name: `linger-${LARGE}` },
    // Ops run at logLevel info: one lingering row there too (its own copy of the file).
    { file: files.largeInfo, logLevel: 'info', name: `linger-${LARGE}-info` },
  ];
  const gateways = [];
  for (const s of setups) {
    log(`starting otpgate on the ${s.file.total}-user file, logLevel ${s.logLevel} ...`);
    const gateway = await startGateway(gatewayOptions(ctx, s.file, s.name, s.logLevel));
    const authorization = await loginOnce(gateway, lingerUserOf(s.file), 0);
    gateways.push({ ...s, gateway, authorization });
  }
  const targets = [
    { key: 'a', url: `http://127.0.0.1:${ctx.backend.port}/` },
    { key: 'b', url: ctx.yardstick.url },
    { key: "b'", url: ctx.undiciYardstick.url },
    ...gateways.map((g) => ({ key: g.name, url: g.gateway.url, headers: [`Authorization: ${g.authorization}`] })),
  ];
  const results = await measureInterleaved(ctx.wrk, targets, { seconds: SECONDS, warmSeconds: WARM_SECONDS, rounds: ROUNDS, log });
  const load = `wrk -t${WRK_THREADS} -c${WRK_CONNECTIONS}`;
  const rows = [
    { id: 'a', label: `backend direct (${ctx.backend.kind})`, load, ...results.get('a') },
    { id: 'b', label: 'yardstick: minimal Node proxy, no auth', load, ...results.get('b') },
    { id: "b'", label: 'reference: the same proxy on undici', load, ...results.get("b'") },
  ];
  const profiles = {};
  for (const g of gateways) {
    const logLines = g.gateway.logLines();
    await g.gateway.stop();
    profiles[g.name] = profileSummaryOf(g.name, results.get(g.name).servedRequests);
    rows.push({
      id: 'c', label: 'otpgate, lingering login', users: g.file.total, logLevel: g.logLevel, load,
      startupMs: g.gateway.startupMs, logLines, ...results.get(g.name),
    });
  }
  return { rows, profiles };
}

/**
 * Rows (d)-(f): the Node load client in its own process, one keep-alive connection per user;
 * with several gateways (f) user i goes to gateway i mod n, so the clients split evenly.
 */
async function runFreshLoginClient(file, gateways, counters) {
  const planFile = join(file.dir, 'fresh-plan.json');
  writeFileSync(planFile, JSON.stringify({
    url: gateways[0].url, warmSeconds: WARM_SECONDS, seconds: SECONDS,
    users: file.active.map((u, i) => ({ ...u, counter: counters.get(u.login), url: gateways[i % gateways.length].url })),
  }));
  const script = fileURLToPath(new URL('./fresh-login-client.mjs', import.meta.url));
  let result;
  const child = spawnTracked('fresh-login client', process.execPath, [script, planFile], {
    onLine: (line) => { if (line.startsWith('{')) result = JSON.parse(line); },
  });
  const { code } = await child.exited;
  if (code !== 0 || !result) throw new Error(`fresh-login client failed (exit ${code}):\n  ${child.tail.join('\n  ')}`);
  return result;
}

/**
 * Nothing lost, nothing extra: each user's counter in the file must have moved by
 * exactly its number of 200 answers. Read after otpgate was SIGKILLed, so a 200
 * answered before its write reached the file would show as a counter too low.
 */
function checkCounters(perUser, before, after) {
  const mismatches = [];
  for (const u of perUser) {
    const moved = after.get(u.login) - before.get(u.login);
    if (moved !== u.ok) mismatches.push({ login: u.login, ok200: u.ok, counterMoved: moved });
  }
  return { users: perUser.length, matching: perUser.length - mismatches.length, mismatches };
}

/** Row (d) for one users file, on an otpgate of its own (so a profile shows this scenario alone). */
async function freshLoginRow(ctx, file) {
  const name = `fresh-${file.total}`;
  log(`starting otpgate on the ${file.total}-user file for fresh logins ...`);
  const gateway = await startGateway(gatewayOptions(ctx, file, name, 'warn'));
  const before = readCounters(file.path);
  log(`measuring fresh logins, ${file.active.length} clients (${WARM_SECONDS}s warm-up + ${SECONDS}s) ...`);
  const fresh = await runFreshLoginClient(file, [gateway], before);
  // Profiles are only written on a graceful stop; otherwise kill (see checkCounters).
  await (PROFILE ? gateway.stop() : gateway.kill());
  const counterCheck = checkCounters(fresh.perUser, before, readCounters(file.path));
  return {
    row: {
      id: 'd', label: `otpgate, fresh logins (${fresh.clients} clients)`, users: file.total, logLevel: 'warn',
      load: `node client, ${fresh.clients} keep-alive connections`, startupMs: gateway.startupMs,
      rps: fresh.rps, p50Ms: fresh.p50Ms, p99Ms: fresh.p99Ms, ok: fresh.measuredOk, durationS: fresh.durationS,
      statuses: fresh.statuses, errors: fresh.errors, counterCheck,
    },
    profile: profileSummaryOf(name, Object.values(fresh.statuses).reduce((n, k) => n + k, 0)),
  };
}

/** otpgate's state config for a gateway on the bench's redis-server (keyPrefix: the default, otpgate:). */
const redisState = (redis) => ({ store: 'redis', url: redis.url });

/**
 * Rows (e) and (f): fresh logins through `gatewayCount` gateways, store: redis,
 * each on its own copy of a new 1,000-user file (new keys: Redis holds nothing
 * for these users yet, so every counter starts at the file's 0). Gateways are
 * SIGKILLed after the load as in (d); the counters are read from Redis later
 * (checkRedisCounters), after redis-server itself was SIGKILLed and restarted.
 */
async function freshRedisRow(ctx, redis, id, gatewayCount) {
  const file = prepareUsersFile(MID);
  const files = [file];
  while (files.length < gatewayCount) files.push(prepareUsersFile(MID, file));
  const gateways = [];
  for (const [i, f] of files.entries()) {
    const name = `fresh-redis-${i + 1}-of-${gatewayCount}`;
    log(`starting otpgate ${i + 1}/${gatewayCount}, store: redis, on a copy of the ${MID}-user file for fresh logins ...`);
    gateways.push({ name, gateway: await startGateway({ ...gatewayOptions(ctx, f, name, 'warn'), state: redisState(redis) }) });
  }
  const before = readCounters(file.path);
  const contents = files.map((f) => readFileSync(f.path));
  log(`measuring fresh logins, store: redis, ${file.active.length} clients on ${gatewayCount} gateway(s) ` +
    `(${WARM_SECONDS}s warm-up + ${SECONDS}s) ...`);
  const fresh = await runFreshLoginClient(file, gateways.map((g) => g.gateway), before);
  await Promise.all(gateways.map((g) => (PROFILE ? g.gateway.stop() : g.gateway.kill())));
  // store: redis never writes the users file: every copy must be as it was.
  const usersFilesUntouched = files.every((f, i) => readFileSync(f.path).equals(contents[i]));
  const profiles = {};
  for (const g of gateways) {
    const requests = fresh.perUser.filter((u) => u.url === g.gateway.url).reduce((n, u) => n + u.requests, 0);
    profiles[g.name] = profileSummaryOf(g.name, requests);
  }
  return {
    row: {
      id, label: `otpgate, fresh logins, store: redis, ${['one gateway', 'two gateways'][gatewayCount - 1] ?? `${gatewayCount} gateways`} ` +
        `(${fresh.clients} clients${gatewayCount === 1 ? '' : ' split evenly'})`,
      users: file.total, logLevel: 'warn', store: 'redis', gateways: gatewayCount,
      load: `node client, ${fresh.clients} keep-alive connections`, startupMs: Math.max(...gateways.map((g) => g.gateway.startupMs)),
      rps: fresh.rps, p50Ms: fresh.p50Ms, p99Ms: fresh.p99Ms, ok: fresh.measuredOk, durationS: fresh.durationS,
      statuses: fresh.statuses, errors: fresh.errors, usersFilesUntouched,
    },
    profiles,
    check: { file, perUser: fresh.perUser, before },
  };
}

/**
 * (e), (f): each user's counter in Redis must have moved by exactly its number
 * of 200s, as (d) checks the file. Read after the gateways were SIGKILLed AND
 * redis-server was SIGKILLed and restarted from its AOF: a 200 given before
 * Redis had the change on disk would show as a counter too low. A user Redis
 * holds nothing for has the file's counter (never logged in).
 */
async function checkRedisCounters(redis, freshRows) {
  log('SIGKILL redis-server and start it again on its AOF, then read the counters ...');
  await redis.kill();
  await redis.restart();
  for (const r of freshRows) {
    const { counters, tokenKeys } = await readRedisCounters(redis.port, r.check.file.active);
    const after = new Map([...r.check.before].map(([login, c]) => [login, counters.get(login) ?? c]));
    r.row.counterCheck = { ...checkCounters(r.check.perUser, r.check.before, after), tokenKeysInRedis: tokenKeys };
  }
}

/**
 * Rows (g): one lingering login, store: redis, through one gateway, and through
 * two at once (wrk against each, the connections split, see wrkSplit), measured
 * interleaved with the yardstick (b) again so the ratios come from the same minutes.
 * The login is made on the first gateway; the second rides the same credentials
 * because the linger lives in Redis (a load balancer spreads one user's requests).
 */
async function lingeringRedisPhase(ctx, redis) {
  const file = prepareUsersFile(MID);
  const files = [file, prepareUsersFile(MID, file)];
  const gateways = [];
  for (const [i, f] of files.entries()) {
    const name = `linger-redis-${i + 1}-of-2`;
    log(`starting otpgate ${i + 1}/2, store: redis, on a copy of the ${MID}-user file for lingering ...`);
    gateways.push({ name, gateway: await startGateway({ ...gatewayOptions(ctx, f, name, 'warn'), state: redisState(redis) }) });
  }
  const authorization = await loginOnce(gateways[0].gateway, lingerUserOf(file), 0);
  // Checked once before wrk: a refusal on the second gateway would otherwise only be a count of non-200s.
  const ride = await fetch(gateways[1].gateway.url, { headers: { authorization } });
  await ride.arrayBuffer();
  if (ride.status !== 200) throw new Error(`the linger made on gateway 1 answered ${ride.status} on gateway 2, expected 200`);
  const headers = [`Authorization: ${authorization}`];
  const targets = [
    { key: 'b', url: ctx.yardstick.url },
    { key: 'g-one', url: gateways[0].gateway.url, headers },
    { key: 'g-two', urls: gateways.map((g) => g.gateway.url), headers },
  ];
  const results = await measureInterleaved(ctx.wrk, targets, { seconds: SECONDS, warmSeconds: WARM_SECONDS, rounds: ROUNDS, log });
  const profiles = {};
  for (const g of gateways) {
    await g.gateway.stop();
    // Per-request CPU not given: each gateway served parts of both targets.
    profiles[g.name] = profileSummaryOf(g.name, undefined);
  }
  const startupMs = Math.max(...gateways.map((g) => g.gateway.startupMs));
  const split = `2 x wrk -t${Math.max(1, Math.floor(WRK_THREADS / 2))} -c${Math.floor(WRK_CONNECTIONS / 2)} at once`;
  const rows = [
    { id: 'b', phase: 'g', label: 'yardstick again, interleaved with (g)', load: `wrk -t${WRK_THREADS} -c${WRK_CONNECTIONS}`, ...results.get('b') },
    {
      id: 'g', phase: 'g', label: 'otpgate, lingering login, store: redis, one gateway', users: MID, logLevel: 'warn',
      store: 'redis', gateways: 1, load: `wrk -t${WRK_THREADS} -c${WRK_CONNECTIONS}`, startupMs, ...results.get('g-one'),
    },
    {
      id: 'g', phase: 'g', label: 'otpgate, lingering login, store: redis, two gateways', users: MID, logLevel: 'warn',
      store: 'redis', gateways: 2, load: split, startupMs, ...results.get('g-two'),
    },
  ];
  return { rows, profiles };
}

/**
 * Everything store: redis: (d) on the file store for the 1,000-user file, (e),
 * (f), their counter check, (g). Skipped, with the reason, without redis-server.
 */
async function redisPhase(ctx) {
  const server = findRedisServer();
  if (!server.path) {
    log(`SKIPPING the store: redis rows (d at ${MID} users, e, f, g): ${server.reason}`);
    return { skipped: server.reason, rows: [], profiles: {} };
  }
  const redis = await startRedisServer(server.path, log);
  const freshFile = await freshLoginRow(ctx, prepareUsersFile(MID));
  const one = await freshRedisRow(ctx, redis, 'e', 1);
  const two = await freshRedisRow(ctx, redis, 'f', 2);
  await checkRedisCounters(redis, [one, two]);
  const lingering = await lingeringRedisPhase(ctx, redis);
  await redis.stop();
  return {
    redis: { version: redis.version, description: redis.description },
    rows: [freshFile.row, one.row, two.row, ...lingering.rows],
    profiles: { [`fresh-${MID}`]: freshFile.profile, ...one.profiles, ...two.profiles, ...lingering.profiles },
  };
}

async function main() {
  installCleanupHandlers();
  selfTestHotp(); // RFC 4226 vectors, before trusting it to log anyone in
  const wrk = ensureCommand('wrk', 'wrk', log);
  if (!wrk.path) {
    process.stderr.write(`bench: cannot run without wrk: ${wrk.reason}\n`);
    process.exit(2);
  }
  if (PROFILE) mkdirSync(PROFILE_DIR, { recursive: true });
  const backend = await startBackend(log);
  const yardstick = await startYardstick(backend.port);
  const undiciYardstick = await startUndiciYardstick(backend.port);
  const ctx = { wrk: wrk.path, backend, yardstick, undiciYardstick };

  const small = prepareUsersFile(SMALL);
  const large = prepareUsersFile(LARGE);
  const files = { small, large, largeInfo: prepareUsersFile(LARGE, large) };

  const lingering = await lingeringPhase(ctx, files);
  const freshSmall = await freshLoginRow(ctx, files.small);
  const freshLarge = await freshLoginRow(ctx, files.large);
  const redisRows = await redisPhase(ctx);

  await stopChild(yardstick.child);
  await stopChild(undiciYardstick.child);
  await stopChild(backend.child, 'SIGQUIT'); // nginx: graceful shutdown
  // The yardstick served (b) and, when it ran, (b) again with (g).
  const yardstickServed = [lingering.rows[1], ...redisRows.rows.filter((r) => r.id === 'b')].reduce((n, r) => n + r.servedRequests, 0);
  const yardstickProfile = profileSummaryOf('yardstick', yardstickServed);
  const [a, b, bUndici, cSmall, cLarge, cLargeInfo] = lingering.rows;
  const rows = [a, b, bUndici, cSmall, freshSmall.row, cLarge, freshLarge.row, cLargeInfo, ...redisRows.rows];
  const report = printReport({
    rows, backend, profiling: PROFILE, seconds: SECONDS, rounds: ROUNDS, warmSeconds: WARM_SECONDS,
    redis: redisRows.skipped ? { skipped: redisRows.skipped } : redisRows.redis,
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version },
  });
  const profiles = PROFILE
    ? {
      ...lingering.profiles, [`fresh-${SMALL}`]: freshSmall.profile, [`fresh-${LARGE}`]: freshLarge.profile,
      ...redisRows.profiles,
      yardstick: yardstickProfile,
      'yardstick-undici': profileSummaryOf('yardstick-undici', bUndici.servedRequests),
    }
    : undefined;
  mkdirSync(RESULTS_DIR, { recursive: true });
  writeFileSync(join(RESULTS_DIR, 'latest.json'), `${JSON.stringify({ ...report, profiles }, null, 2)}\n`);
  log('results written to bench/results/latest.json');
}

// Exit 0 whether or not the targets hold: the report says which; only a broken run fails.
main().then(
  () => { cleanupAll(); process.exit(0); },
  (err) => {
    process.stderr.write(`bench: FAILED: ${err.stack ?? err}\n`);
    cleanupAll();
    process.exit(1);
  },
);
