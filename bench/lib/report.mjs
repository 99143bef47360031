// The printed report: one table, the targets and whether they hold, the
// counter check of the fresh-login rows, the store: redis figures (two
// gateways against one), and reference figures for scale.

// Apache + mod_authn_otp on this kind of machine (given with the brief).
export const REFERENCE = {
  freshPerSecond: { value: 313, note: 'fresh logins/s, 10-user file, without fsync' },
  lingeringPerSecond: { value: 76, note: 'lingering requests/s, 1,000 users ahead in the file' },
};

const TARGETS = {
  lingerVsYardstick: 0.8, // (c) >= 0.8 x (b)
  lingerScaling: 0.1, // (c) at 100,000 users within 10% of (c) at 10 users
  freshPerSecond: 1000, // (d) on the 100,000-user file
};

const num = (x, digits = 0) => (x === null || x === undefined || Number.isNaN(x) ? '-'
  : x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }));

/** Rows with fresh logins from the Node client (their answers are counted by status). */
const isFresh = (r) => r.id === 'd' || r.id === 'e' || r.id === 'f';

/** The yardstick (b) a row is compared with: the one measured interleaved with it (rows g), else the first. */
const yardstickOf = (rows, r) => rows.find((x) => x.id === 'b' && x.phase === r.phase) ?? rows.find((x) => x.id === 'b' && !x.phase);

/**
 * x(a), x(b) of each row. Rows of a later phase (g) have their own (b); no (a)
 * was measured with them, so they get no x(a) rather than one across minutes.
 */
function addRatios(rows) {
  const a = rows.find((r) => r.id === 'a');
  for (const r of rows) {
    r.ratioA = r.phase ? undefined : r.rps / a.rps;
    r.ratioB = r.rps / yardstickOf(rows, r).rps;
  }
}

function rowName(r) {
  const level = r.logLevel === 'info' ? ', logLevel info' : '';
  return `(${r.id}) ${r.label}${level}`;
}

function printTable(rows) {
  const header = ['row', 'users', 'req/s', 'p50 ms', 'p99 ms', 'x(a)', 'x(b)', 'not 200'];
  const lines = rows.map((r) => [
    rowName(r), r.users === undefined ? '-' : num(r.users), num(r.rps), num(r.p50Ms, 2), num(r.p99Ms, 2),
    num(r.ratioA, 2), num(r.ratioB, 2), num(notOk(r)),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const format = (cells) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  console.log(format(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const l of lines) console.log(format(l));
}

/** Answers other than 200 and socket errors of a row (all should be 0). */
function notOk(r) {
  if (isFresh(r)) {
    const statuses = Object.entries(r.statuses).filter(([s]) => s !== '200').reduce((n, [, c]) => n + c, 0);
    return statuses + Object.values(r.errors).reduce((n, c) => n + c, 0);
  }
  return r.errorStatus + r.socketErrors;
}

/** Per-round ratios x/y of two interleaved rows: how much of a ratio is noise. */
function roundSpread(x, y) {
  if (!x.roundRps || !y.roundRps) return '';
  const ratios = x.roundRps.map((v, i) => v / y.roundRps[i]).sort((p, q) => p - q);
  return ` (per round, sorted: ${ratios.map((r) => num(r, 2)).join(', ')})`;
}

function judgeTargets(rows) {
  const find = (id, users, logLevel = 'warn') => rows.find((r) => r.id === id && r.users === users && r.logLevel === logLevel);
  const b = rows.find((r) => r.id === 'b');
  const sizes = [...new Set(rows.filter((r) => r.users !== undefined).map((r) => r.users))].sort((x, y) => x - y);
  const small = sizes[0];
  const large = sizes[sizes.length - 1];
  const targets = [];
  for (const c of rows.filter((r) => r.id === 'c')) {
    targets.push({
      name: `lingering >= ${TARGETS.lingerVsYardstick}x yardstick (b), ${num(c.users)} users${c.logLevel === 'info' ? ', logLevel info' : ''}`,
      value: `${num(c.rps / b.rps, 2)}x${roundSpread(c, b)}`, holds: c.rps >= TARGETS.lingerVsYardstick * b.rps,
    });
  }
  const cSmall = find('c', small);
  const cLarge = find('c', large);
  const scaling = cLarge.rps / cSmall.rps;
  targets.push({
    name: `lingering at ${num(large)} users within ${TARGETS.lingerScaling * 100}% of ${num(small)} users`,
    value: `${num(scaling, 2)}x${roundSpread(cLarge, cSmall)}`, holds: scaling >= 1 - TARGETS.lingerScaling,
  });
  const dLarge = find('d', large);
  targets.push({
    name: `fresh logins on the ${num(large)}-user file >= ${num(TARGETS.freshPerSecond)}/s`,
    value: `${num(dLarge.rps)}/s`, holds: dLarge.rps >= TARGETS.freshPerSecond,
  });
  return targets;
}

function printCounterChecks(rows) {
  for (const r of rows.filter(isFresh)) {
    const c = r.counterCheck;
    const total = r.counterCheck && Object.values(r.statuses).reduce((n, k) => n + k, 0);
    const where = r.store === 'redis' ? `in Redis (${r.id}, ${['one gateway', 'two gateways'][r.gateways - 1] ?? `${r.gateways} gateways`})` : 'in the file';
    console.log(`  ${num(r.users)} users: ${c.matching}/${c.users} users' counters ${where} moved by exactly their number of 200s` +
      ` ${c.mismatches.length === 0 ? 'OK' : 'MISMATCH'} (${num(total)} answers incl. warm-up; statuses ${JSON.stringify(r.statuses)}` +
      `${Object.keys(r.errors).length ? `; errors ${JSON.stringify(r.errors)}` : ''})`);
    for (const m of c.mismatches.slice(0, 10)) console.log(`    ${m.login}: ${m.ok200} x 200 but counter moved ${m.counterMoved}`);
  }
}

const countersExact = (r) => r.counterCheck.mismatches.length === 0 && r.usersFilesUntouched !== false;

/**
 * The store: redis figures the README quotes: fresh logins through two gateways
 * against one (f/e) and against the file store (d, same file size), lingering
 * through two gateways against the yardstick measured with it. Undefined figures
 * (a skipped run) stay out.
 */
function redisSummary(rows, redis, machine) {
  if (!redis) return undefined;
  if (redis.skipped) {
    console.log(`store: redis rows SKIPPED: ${redis.skipped}`);
    console.log('');
    return { skipped: redis.skipped };
  }
  const e = rows.find((r) => r.id === 'e');
  const f = rows.find((r) => r.id === 'f');
  const d = rows.find((r) => r.id === 'd' && r.users === e.users);
  const bG = rows.find((r) => r.id === 'b' && r.phase === 'g');
  const gOne = rows.find((r) => r.id === 'g' && r.gateways === 1);
  const gTwo = rows.find((r) => r.id === 'g' && r.gateways === 2);
  const exact = countersExact(e) && countersExact(f);
  const untouched = e.usersFilesUntouched && f.usersFilesUntouched;
  const summary = {
    server: redis.description,
    users: e.users,
    freshFileStoreRps: d?.rps,
    freshOneGatewayRps: e.rps,
    freshTwoGatewaysRps: f.rps,
    freshTwoVsOne: f.rps / e.rps,
    freshOneGatewayVsFileStore: d ? e.rps / d.rps : undefined,
    lingerOneGatewayRps: gOne.rps,
    lingerTwoGatewaysRps: gTwo.rps,
    lingerYardstickRps: bG.rps,
    lingerTwoGatewaysVsYardstick: gTwo.rps / bG.rps,
    lingerOneGatewayVsYardstick: gOne.rps / bG.rps,
    lingerTwoVsOne: gTwo.rps / gOne.rps,
    countersExact: exact,
    usersFilesUntouched: untouched,
  };
  console.log(`store: redis (${redis.description}; a ${num(e.users)}-user file, each gateway its own copy; ` +
    `${machine.cpus} CPUs shared by the gateways, redis-server, nginx and the load generator):`);
  console.log(`  fresh logins/s: ${d ? `(d) file store ${num(d.rps)}; ` : ''}(e) one gateway ${num(e.rps)}; (f) two gateways ${num(f.rps)}`);
  console.log(`  two gateways vs one, fresh logins (f/e): ${num(summary.freshTwoVsOne, 2)}x` +
    `${d ? `; one redis gateway vs the file store (e/d): ${num(summary.freshOneGatewayVsFileStore, 2)}x` : ''}`);
  console.log(`  lingering req/s (g): two gateways ${num(gTwo.rps)} = ${num(summary.lingerTwoGatewaysVsYardstick, 2)}x the yardstick` +
    `${roundSpread(gTwo, bG)}; one gateway ${num(gOne.rps)} = ${num(summary.lingerOneGatewayVsYardstick, 2)}x${roundSpread(gOne, bG)}`);
  console.log(`  two gateways vs one, lingering: ${num(summary.lingerTwoVsOne, 2)}x${roundSpread(gTwo, gOne)}`);
  console.log(`  counters exact (e, f; Redis read after the gateways and then redis-server were SIGKILLed, ` +
    `redis-server restarted from its AOF): ${exact ? 'yes' : 'NO'}`);
  console.log(`  users files untouched by the store: redis gateways: ${untouched ? 'yes' : 'NO'}`);
  console.log('');
  return summary;
}

export function printReport({ rows, backend, profiling, seconds, rounds, warmSeconds, machine, redis }) {
  addRatios(rows);
  const targets = judgeTargets(rows);
  const bUndici = rows.find((r) => r.id === "b'");
  console.log('');
  console.log(`otpgate benchmark — ${new Date().toISOString()}, ${machine.cpus} CPUs (${machine.cpuModel}), Node ${machine.node}`);
  console.log(`backend: ${backend.description}`);
  console.log(`rows a-c: wrk -t2 -c50 (keep-alive), ${warmSeconds}s warm-up each, then ${seconds}s each measured interleaved in ` +
    `${rounds} rounds (p50/p99: median over rounds)`);
  console.log(`rows d: Node client in its own process, one keep-alive connection per user, a new code per request; ` +
    `${warmSeconds}s warm-up + ${seconds}s; only 200s count; the 10-user file has only 10 users, so 10 clients there`);
  if (redis && !redis.skipped) {
    console.log(`rows e, f: as d, store: redis; f: the same clients split evenly over two gateways. rows g: as c, store: redis, ` +
      'one gateway, and two at once (wrk against each, threads and connections split; p50/p99 the worse of the two), ' +
      'interleaved with the yardstick (b) again; their x(b) is against that (b)');
  }
  if (backend.kind !== 'nginx') console.log('NOTE: nginx was not available, the backend is a Node server: (a) is not nginx.');
  if (profiling) console.log('NOTE: BENCH_PROFILE=1: otpgate ran under --cpu-prof, slower than normal; targets are not meaningful.');
  console.log('');
  printTable(rows);
  console.log('');
  console.log(`(d${rows.some((r) => r.id === 'e') ? ', e, f' : ''}) counter check (otpgate ${profiling ? 'stopped (SIGTERM, profiling)' : 'SIGKILLed'} ` +
    'after the load, then the users file read; for e, f Redis, after redis-server was SIGKILLed too and restarted):');
  printCounterChecks(rows);
  console.log('');
  const startups = rows.filter((r) => r.startupMs !== undefined && !(r.id === 'g' && r.gateways === 1))
    .map((r) => `${num(r.startupMs)} ms (${num(r.users)} users, ${isFresh(r) ? 'fresh' : `lingering, ${r.logLevel}`}` +
      `${r.store === 'redis' ? `, store: redis, slowest of ${r.gateways}` : ''})`);
  console.log(`otpgate start to first health 200: ${startups.join('; ')}`);
  console.log('');
  const redisFigures = redisSummary(rows, redis, machine);
  console.log('targets:');
  for (const t of targets) console.log(`  ${t.holds ? 'HOLDS ' : 'FAILS '} ${t.name}: ${t.value}`);
  if (bUndici) {
    const ratios = rows.filter((r) => r.id === 'c').map((c) => `${num(c.rps / bUndici.rps, 2)}x (${num(c.users)} users, ${c.logLevel})`);
    console.log(`  (not a target) lingering vs the same proxy on undici (b'): ${ratios.join('; ')}`);
  }
  console.log('');
  console.log('for scale, Apache + mod_authn_otp on this kind of machine:');
  console.log(`  ${REFERENCE.freshPerSecond.value} ${REFERENCE.freshPerSecond.note}`);
  console.log(`  ${REFERENCE.lingeringPerSecond.value} ${REFERENCE.lingeringPerSecond.note}`);
  console.log('');
  const countersOk = rows.filter(isFresh).every(countersExact);
  return {
    date: new Date().toISOString(), machine, backend: { kind: backend.kind, description: backend.description },
    seconds, rounds, warmSeconds, profiling, rows, targets, reference: REFERENCE, countersOk, redis: redisFigures,
    allTargetsHold: targets.every((t) => t.holds) && countersOk,
  };
}
