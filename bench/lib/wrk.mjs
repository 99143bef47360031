// Rows (a)-(c): load from wrk, a separate native process, so the load generator
// costs the proxies under test as little CPU as possible.
import { fileURLToPath } from 'node:url';
import { spawnTracked } from './processes.mjs';

const REPORT_SCRIPT = fileURLToPath(new URL('../wrk-report.lua', import.meta.url));

export const WRK_THREADS = 2;
export const WRK_CONNECTIONS = 50;

/** One wrk run; the JSON line printed by wrk-report.lua. */
async function wrkOnce(wrk, url, seconds, headers) {
  const args = [`-t${WRK_THREADS}`, `-c${WRK_CONNECTIONS}`, `-d${seconds}s`, '--latency', '-s', REPORT_SCRIPT];
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
 * targets: [{ key, url, headers }]; returns key -> result.
 */
export async function measureInterleaved(wrk, targets, { seconds, warmSeconds, rounds, log }) {
  const roundSeconds = Math.max(1, Math.round(seconds / rounds));
  const runs = new Map(targets.map((t) => [t.key, []]));
  const warmRequests = new Map(targets.map((t) => [t.key, 0]));
  if (warmSeconds > 0) {
    for (const t of targets) {
      log(`warming up ${t.key} (${warmSeconds}s) ...`);
      warmRequests.set(t.key, (await wrkOnce(wrk, t.url, warmSeconds, t.headers ?? [])).requests);
    }
  }
  for (let round = 1; round <= rounds; round++) {
    // Each round starts one target later, so no target always follows the same one
    // (e.g. always runs right after nginx's own full-speed row).
    const order = targets.map((_, i) => targets[(i + round - 1) % targets.length]);
    log(`round ${round}/${rounds}: ${order.map((t) => t.key).join(', ')} (${roundSeconds}s each) ...`);
    for (const t of order) runs.get(t.key).push(await wrkOnce(wrk, t.url, roundSeconds, t.headers ?? []));
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
