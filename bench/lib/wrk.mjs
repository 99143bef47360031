// Rows (a)-(c): load from wrk, a separate native process, so the load generator
// costs the proxies under test as little CPU as possible.
import { fileURLToPath } from 'node:url';
import { spawnTracked } from './processes.mjs';

const REPORT_SCRIPT = fileURLToPath(new URL('../wrk-report.lua', import.meta.url));

export const WRK_THREADS = 2;
export const WRK_CONNECTIONS = 50;

/** One wrk run; the JSON line printed by wrk-report.lua. */
async function wrkOnce(wrk, url, seconds, headers, threads = WRK_THREADS, connections = WRK_CONNECTIONS) {
  const args = [`-t${threads}`, `-c${connections}`, `-d${seconds}s`, '--latency', '-s', REPORT_SCRIPT];
  for (const header of headers) args.push('-H', header);
  args.push(url);
  let report;
  const child = spawnTracked('wrk', wrk, args, {
    onLine: (line) => { if (line.startsWith('WRK_JSON ')) report = JSON.parse(line.slice(9)); },
  });
  const { code } = await child.exited;
  if (code !== 0 || !report) throw new Error(`wrk failed (exit ${code}):\n  ${child.tail.join('\n  ')}`);
  return report;
}

/**
 * A target of several gateways (`urls`, rows g): one wrk per URL at once, the
 * threads and connections split among them, so the load generator costs the
 * same as against one target. Requests and errors add up; the duration is the
 * longest one's (throughput is not overstated); the latency percentiles are the
 * worst of the parts' (wrk's histograms cannot be merged from here).
 */
async function wrkSplit(wrk, urls, seconds, headers) {
  const threads = Math.max(1, Math.floor(WRK_THREADS / urls.length));
  const connections = Math.max(threads, Math.floor(WRK_CONNECTIONS / urls.length));
  const parts = await Promise.all(urls.map((url) => wrkOnce(wrk, url, seconds, headers, threads, connections)));
  const sum = (field) => parts.reduce((n, p) => n + p[field], 0);
  const max = (field) => Math.max(...parts.map((p) => p[field]));
  return {
    requests: sum('requests'), durationUs: max('durationUs'), bytes: sum('bytes'), errorStatus: sum('errorStatus'),
    connectErrors: sum('connectErrors'), readErrors: sum('readErrors'), writeErrors: sum('writeErrors'), timeouts: sum('timeouts'),
    p50Us: max('p50Us'), p90Us: max('p90Us'), p99Us: max('p99Us'), meanUs: sum('meanUs') / parts.length, maxUs: max('maxUs'),
    parts: parts.map((p, i) => ({ url: urls[i], threads, connections, requests: p.requests, durationUs: p.durationUs, errorStatus: p.errorStatus })),
  };
}

/** A target's run: one wrk, or one per URL at once for a target of several (`urls`). */
const runTarget = (wrk, t, seconds) => (t.urls
  ? wrkSplit(wrk, t.urls, seconds, t.headers ?? [])
  : wrkOnce(wrk, t.url, seconds, t.headers ?? []));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/**
 * Measure several targets interleaved: a warm-up of each (JIT, connection
 * pools), then `rounds` rounds in which every target gets seconds/rounds of
 * load in turn. On a shared, noisy machine the throughput drifts by tens of
 * percent within a minute; interleaving makes the drift hit every target alike,
 * so their ratios mean something; the per-round values are kept in the same
 * round order for every target (roundRps[i] is round i). Answers with status >= 400 (wrk's
 * errors.status) do not count as throughput; they are reported.
 *
 * targets: [{ key, url, headers }] or [{ key, urls, headers }] (see wrkSplit); returns key -> result.
 */
export async function measureInterleaved(wrk, targets, { seconds, warmSeconds, rounds, log }) {
  const roundSeconds = Math.max(1, Math.round(seconds / rounds));
  const runs = new Map(targets.map((t) => [t.key, []]));
  const warmRequests = new Map(targets.map((t) => [t.key, 0]));
  if (warmSeconds > 0) {
    for (const t of targets) {
      log(`warming up ${t.key} (${warmSeconds}s) ...`);
      warmRequests.set(t.key, (await runTarget(wrk, t, warmSeconds)).requests);
    }
  }
  for (let round = 1; round <= rounds; round++) {
    // Each round starts one target later, so no target always follows the same one
    // (e.g. always runs right after nginx's own full-speed row).
    const order = targets.map((_, i) => targets[(i + round - 1) % targets.length]);
    log(`round ${round}/${rounds}: ${order.map((t) => t.key).join(', ')} (${roundSeconds}s each) ...`);
    for (const t of order) runs.get(t.key).push(await runTarget(wrk, t, roundSeconds));
  }
  const results = new Map();
  for (const [key, rs] of runs) {
    const ok = rs.reduce((n, r) => n + r.requests - r.errorStatus, 0);
    const durationS = rs.reduce((n, r) => n + r.durationUs, 0) / 1e6;
    results.set(key, {
      ok,
      durationS,
      rps: ok / durationS,
      roundRps: rs.map((r) => (r.requests - r.errorStatus) / (r.durationUs / 1e6)),
      // wrk's histograms cannot be merged from here: the median of the rounds' percentiles.
      p50Ms: median(rs.map((r) => r.p50Us)) / 1000,
      p99Ms: median(rs.map((r) => r.p99Us)) / 1000,
      errorStatus: rs.reduce((n, r) => n + r.errorStatus, 0),
      // every request the target served, warm-up included (CPU per request from a profile)
      servedRequests: warmRequests.get(key) + rs.reduce((n, r) => n + r.requests, 0),
      socketErrors: rs.reduce((n, r) => n + r.connectErrors + r.readErrors + r.writeErrors + r.timeouts, 0),
      raw: rs,
    });
  }
  return results;
}
