// Summarise a V8 .cpuprofile (from `node --cpu-prof`): where the busy (non-idle)
// time went, by function (self time), by origin (otpgate's dist/, each npm
// package, Node's internals, native code) and, for otpgate's own functions,
// inclusive time. Usable as a module (run.js with BENCH_PROFILE=1) and from the
// command line: node bench/profile-summary.mjs FILE.cpuprofile [TOP]
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('..', import.meta.url));

const pathOf = (frame) => frame.url.replace(/^file:\/\//, '').replace(repoRoot, '');

function location(frame) {
  const path = pathOf(frame);
  return path === '' ? '' : `${path}:${frame.lineNumber + 1}`;
}

/** Where a function comes from: 'otpgate dist/x.js', an npm package, 'node:internals', or V8/native. */
function originOf(frame) {
  const path = pathOf(frame);
  if (frame.functionName === '(garbage collector)') return '(garbage collector)';
  if (path === '') return frame.functionName.startsWith('(') ? frame.functionName : '(native: C++ builtins, syscalls)';
  if (path.startsWith('dist/')) return `otpgate ${path}`;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(path);
  if (pkg) return `npm ${pkg[1]}`;
  if (path.startsWith('node:')) return 'node: internals (http, net, streams, crypto glue)';
  return path;
}

const IDLE = new Set(['(idle)']);

/** Self time per profile node id (µs): sample i lasts until sample i+1. */
function selfTimes(profile) {
  const self = new Map();
  profile.samples.forEach((id, i) => {
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
  });
  return self;
}

/** Inclusive time per otpgate function, counting a function once per stack even if recursive. */
function otpgateInclusive(profile, self) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inclusive = new Map();
  for (const [id, us] of self) {
    const seen = new Set();
    for (let at = id; at !== undefined; at = parent.get(at)) {
      const frame = byId.get(at).callFrame;
      if (!pathOf(frame).startsWith('dist/')) continue;
      const key = `${frame.functionName || '(anonymous)'}  ${location(frame)}`;
      if (seen.has(key)) continue;
      seen.add(key);
      inclusive.set(key, (inclusive.get(key) ?? 0) + us);
    }
  }
  return inclusive;
}

export function summariseProfile(file, top = 15) {
  const profile = JSON.parse(readFileSync(file, 'utf8'));
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = selfTimes(profile);
  const functions = new Map();
  const origins = new Map();
  let total = 0;
  let idle = 0;
  for (const [id, us] of self) {
    const frame = byId.get(id).callFrame;
    total += us;
    if (IDLE.has(frame.functionName)) {
      idle += us;
      continue;
    }
    const name = frame.functionName || '(anonymous)';
    const key = `${name}  ${location(frame)}`;
    functions.set(key, (functions.get(key) ?? 0) + us);
    const origin = originOf(frame);
    origins.set(origin, (origins.get(origin) ?? 0) + us);
  }
  const busy = total - idle;
  const rank = (map, n) => [...map].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([name, us]) => ({ name, ms: us / 1000, percentOfBusy: (100 * us) / busy }));
  return {
    totalMs: total / 1000,
    busyMs: busy / 1000,
    selfTop: rank(functions, top),
    byOrigin: rank(origins, 12),
    otpgateInclusive: rank(otpgateInclusive(profile, self), top),
  };
}

/** `requests`: how many the process served while profiled, for CPU time per request. */
export function formatProfileSummary(s, requests) {
  const perRequest = requests ? `, ${((s.busyMs * 1000) / requests).toFixed(0)} µs per request (${requests} requests)` : '';
  const lines = [`  sampled ${s.totalMs.toFixed(0)} ms, busy (not idle) ${s.busyMs.toFixed(0)} ms${perRequest}; percentages are of busy time`];
  const section = (title, entries) => {
    lines.push(`  ${title}:`);
    for (const e of entries) lines.push(`    ${e.percentOfBusy.toFixed(1).padStart(5)}%  ${e.ms.toFixed(0).padStart(6)} ms  ${e.name}`);
  };
  section('self time by origin', s.byOrigin);
  section('top functions by self time', s.selfTop);
  section("otpgate's own functions, inclusive time", s.otpgateInclusive);
  return lines.join('\n');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    process.stderr.write('usage: node bench/profile-summary.mjs FILE.cpuprofile [TOP]\n');
    process.exit(2);
  }
  process.stdout.write(`${formatProfileSummary(summariseProfile(file, Number(top ?? 25)))}\n`);
}
