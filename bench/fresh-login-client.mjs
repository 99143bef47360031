// Row (d): fresh logins. One virtual client per user, each on its own keep-alive
// connection, sending the NEXT valid code (sequential counters) on every request,
// so every request is a real login that otpgate must write to disk before it answers.
// Runs as its own process so it does not share otpgate's (or run.js's) event loop.
//
// Input: a JSON file { url, warmSeconds, seconds, users: [{ login, pin, keyHex, counter, url? }] };
// a user's own url (rows f: clients split across gateways) overrides the plan's.
// Output: one JSON line on stdout (see report()).
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { basicAuth, hotp } from './lib/hotp.mjs';

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const REQUEST_TIMEOUT_MS = 30_000;

/** One GET with this Authorization; resolves to { status } or { error }. */
function send(url, agent, authorization) {
  return new Promise((resolve) => {
    const req = request(url, { agent, headers: { authorization } }, (res) => {
      res.resume(); // read the body so the connection can be reused
      res.on('end', () => resolve({ status: res.statusCode }));
      res.on('error', (err) => resolve({ error: err.code ?? err.message }));
    });
    req.setTimeout(REQUEST_TIMEOUT_MS, () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ error: err.code ?? err.message }));
    req.end();
  });
}

const started = performance.now();
const measureFrom = started + plan.warmSeconds * 1000;
const stopAt = measureFrom + plan.seconds * 1000;
const latenciesMs = [];
const statuses = {};
const errors = {};
let measuredOk = 0;

/**
 * A user logging in over and over. After a 200 the next counter's code is used;
 * after anything else the same code is retried (the gateway did not accept it,
 * so it must not have consumed it: the counter check after the run tells).
 */
async function client(user) {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const key = Buffer.from(user.keyHex, 'hex');
  const url = user.url ?? plan.url;
  let counter = user.counter;
  let ok = 0;
  let requests = 0;
  while (performance.now() < stopAt) {
    const authorization = basicAuth(user.login, user.pin + hotp(key, counter));
    const t0 = performance.now();
    const result = await send(url, agent, authorization);
    const t1 = performance.now();
    requests++;
    const measured = t1 >= measureFrom && t1 <= stopAt;
    if (result.status !== undefined) statuses[result.status] = (statuses[result.status] ?? 0) + 1;
    else errors[result.error] = (errors[result.error] ?? 0) + 1;
    if (result.status === 200) {
      ok++;
      counter++;
      if (measured) {
        measuredOk++;
        latenciesMs.push(t1 - t0);
      }
    } else {
      await new Promise((r) => setTimeout(r, 10)); // no hot loop against a refusing gateway
    }
  }
  agent.destroy();
  return { login: user.login, url, startCounter: user.counter, ok, requests, nextCounter: counter };
}

function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const perUser = await Promise.all(plan.users.map(client));
const windowS = (Math.min(performance.now(), stopAt) - measureFrom) / 1000;
latenciesMs.sort((a, b) => a - b);
process.stdout.write(`${JSON.stringify({
  clients: plan.users.length,
  measuredOk,
  durationS: windowS,
  rps: measuredOk / windowS,
  p50Ms: percentile(latenciesMs, 50),
  p99Ms: percentile(latenciesMs, 99),
  statuses,
  errors,
  perUser,
})}\n`);
