// The brute-force throttle, pure: waits per pair, account and IP, the usual-IP
// rule against lockout-DoS, forgetting, bounded memory, and the guess bound
// SECURITY.md states, simulated at full attack speed with an injected clock.
import t from 'tap';
import { decide, type Policy, type TokenState } from '../src/decision.js';
import { Throttle, waitAfter, type ThrottlePolicy, type ThrottleRule } from '../src/throttle.js';

// The defaults of config.ts.
const rule = (free: number, quietSeconds: number): ThrottleRule => ({ free, baseSeconds: 1, maxSeconds: 900, quietSeconds });
const policy: ThrottlePolicy = {
  pair: rule(5, 3600), account: rule(5, 3600), ip: rule(50, 300), usualIpSeconds: 30 * 86400, maxEntries: 1000,
};
const T0 = 1_800_000_000;

t.test('a free allowance, then waits doubling up to the cap', async (t) => {
  const r = rule(5, 3600);
  t.same([1, 5, 6, 7, 8, 15, 16, 40, 5000].map((n) => waitAfter(r, n)), [0, 0, 1, 2, 4, 512, 900, 900, 900]);
});

t.test('one IP guessing one account: free failures, then 429-worthy waits that end by themselves', async (t) => {
  const th = new Throttle(policy);
  for (let i = 0; i < 5; i++) {
    t.equal(th.wait('alice', '192.0.2.1', true, false, T0), 0, `failure ${i + 1} is free`);
    th.failed('alice', '192.0.2.1', true, false, T0);
  }
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0), 0, 'five failures: no wait yet');
  th.failed('alice', '192.0.2.1', true, false, T0);
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0), 1, 'the sixth earns a second');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0 + 1), 0, 'which passes');
  th.failed('alice', '192.0.2.1', true, false, T0 + 1);
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0 + 1), 2, 'the seventh two');
  t.equal(th.wait('bob', '192.0.2.1', true, false, T0 + 1), 0, 'another account from the same IP is not held up');
  t.equal(th.wait('alice', '192.0.2.9', true, false, T0 + 1), 2, 'the account is, from any other IP');
  t.equal(th.wait('alice', '192.0.2.9', true, true, T0 + 1), 0, 'but not from one it usually logs in from');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0 + 1 + 3600), 0, 'an hour without failures: forgotten');
});

t.test('a success clears the account and the pair, and makes the IP usual', async (t) => {
  const th = new Throttle(policy);
  for (let i = 0; i < 8; i++) th.failed('alice', '192.0.2.1', true, false, T0);
  t.ok(th.wait('alice', '192.0.2.1', true, false, T0) > 0);
  t.notOk(th.isUsual('alice', '198.51.100.7', T0));
  th.succeeded('alice', '198.51.100.7', T0 + 1);
  t.ok(th.wait('alice', '192.0.2.1', true, false, T0 + 2) > 0, 'the guessing pair keeps its own count');
  t.equal(th.wait('alice', '192.0.2.2', true, false, T0 + 2), 0, 'the account count is gone');
  t.ok(th.isUsual('alice', '198.51.100.7', T0 + 2));
  t.notOk(th.isUsual('alice', '198.51.100.7', T0 + 1 + 30 * 86400), 'usual for usualIpDays, then no longer');
  t.notOk(th.isUsual('bob', '198.51.100.7', T0 + 2), 'usual for that account only');
});

t.test('forget: an admin\'s unlock clears the account and its pairs, nobody else\'s', async (t) => {
  const th = new Throttle(policy);
  for (let i = 0; i < 12; i++) {
    th.failed('alice', '192.0.2.1', true, false, T0);
    th.failed('alice', '192.0.2.2', true, false, T0);
    th.failed('al', '192.0.2.1', false, false, T0); // a prefix of the name: not alice's
    th.failed('bob', '192.0.2.3', true, false, T0);
  }
  t.ok(th.wait('alice', '192.0.2.1', true, false, T0) > 0);
  th.forget('alice');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0), 0, 'the pair and the account start over');
  t.equal(th.wait('alice', '192.0.2.2', true, false, T0), 0, 'every IP paired with it too');
  t.ok(th.wait('al', '192.0.2.1', false, false, T0, false) > 0, 'another name that starts alike keeps its count');
  t.ok(th.wait('bob', '192.0.2.3', true, false, T0) > 0, 'other accounts keep theirs');
  for (let i = 0; i < 12; i++) {
    th.failed('alice', '192.0.2.1', true, false, T0);
    th.failed('alice', '198.51.100.9', true, false, T0);
  }
  th.forget('alice', '192.0.2.1'); // a login from there, through another gateway
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0), 0, 'the pair that logged in starts over');
  t.ok(th.wait('alice', '198.51.100.9', true, false, T0) > 0, 'a guesser elsewhere keeps its count');
});

t.test('attempts still being checked count: guesses sent at once do not all pass', async (t) => {
  const th = new Throttle(policy);
  t.ok(th.idle);
  const ends = Array.from({ length: 6 }, (_, k) => {
    t.equal(th.wait('alice', '192.0.2.1', true, false, T0, true, `guess${k}`), 0, `guess ${k + 1} in flight with ${k} others: checked`);
    return th.begin('alice', '192.0.2.1', false, `guess${k}`);
  });
  t.notOk(th.idle, 'something is being checked');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0, true, 'guess6'), 1, 'a seventh waits while six are checked');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0, true, 'guess0'), 0, 'the same credentials again (a browser\'s parallel requests) do not');
  t.equal(th.wait('bob', '192.0.2.9', true, false, T0, true, 'x'), 0, 'nobody else waits');
  for (const end of ends) end();
  ends[0]?.(); // a second end changes nothing
  t.ok(th.idle, 'all answered, nothing failed: idle again');
  t.equal(th.wait('alice', '192.0.2.1', true, false, T0, true, 'guess6'), 0);
  const same = [th.begin('carl', '192.0.2.1', false, 'pw'), th.begin('carl', '192.0.2.1', false, 'pw')];
  same[0]?.();
  t.notOk(th.idle, 'one of two identical requests still in flight');
  same[1]?.();
  t.ok(th.idle);
});

t.test('an office behind one NAT address: the IP waits only after many failures', async (t) => {
  const th = new Throttle(policy);
  // 49 failures spread over 49 agents, each one typo.
  for (let i = 0; i < 49; i++) th.failed(`agent${i}`, '203.0.113.5', true, false, T0 + i);
  t.equal(th.wait('agent60', '203.0.113.5', true, false, T0 + 50), 0, '49 failures: everyone still logs in');
  th.failed('agent49', '203.0.113.5', true, false, T0 + 50);
  th.failed('agent50', '203.0.113.5', true, false, T0 + 50);
  t.equal(th.wait('agent60', '203.0.113.5', true, false, T0 + 50), 1, 'from the 51st the whole IP waits');
  t.equal(th.wait('agent60', '203.0.113.5', true, false, T0 + 50, false), 0, 'the IP count can be left out (a lingering session)');
  t.equal(th.wait('agent60', '203.0.113.5', true, false, T0 + 50 + 300), 0, 'five quiet minutes: forgotten');
});

t.test('memory is bounded: a flood of names and IPs never evicts an account of the users file', async (t) => {
  const th = new Throttle({ ...policy, maxEntries: 1000 });
  for (let i = 0; i < 6; i++) th.failed('alice', '192.0.2.1', true, false, T0);
  t.equal(th.wait('alice', '192.0.2.77', true, false, T0), 1);
  for (let i = 0; i < 20_000; i++) th.failed(`nobody${i}`, `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, false, false, T0);
  t.ok(th.size <= 1000 + 1, `entries stay bounded (${th.size})`);
  t.equal(th.wait('alice', '192.0.2.77', true, false, T0), 1, 'the known account still waits');
});

t.test('a smaller maxEntries on reload keeps the most recent entries', async (t) => {
  const th = new Throttle({ ...policy, maxEntries: 5000 });
  for (let i = 0; i < 3000; i++) th.failed(`n${i}`, `10.0.${i >> 8}.${i & 255}`, false, false, T0);
  th.setPolicy({ ...policy, maxEntries: 1000 });
  t.ok(th.size <= 1000, `bounded by the new size (${th.size})`);
  // The newest pair had one failure: five more make six, and a wait, only if the first was kept.
  for (let i = 0; i < 5; i++) th.failed('n2999', '10.0.11.183', false, false, T0);
  t.equal(th.wait('n2999', '10.0.11.183', false, false, T0), 1, 'the newest count survived');
});

/**
 * An attacker who tries again the moment the throttle lets it, for `hours`:
 * how many guesses get checked. `ips`: 1, or a fresh IP for every guess.
 */
function guessesAtFullSpeed(hours: number, fromManyIps: boolean): number {
  const th = new Throttle({ ...policy, maxEntries: 1_000_000 });
  let now = T0;
  let guesses = 0;
  const end = T0 + hours * 3600;
  for (let n = 0; now < end; n++) {
    const ip = fromManyIps ? `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}` : '192.0.2.66';
    const wait = th.wait('alice', ip, true, false, now);
    if (wait > 0) {
      now += wait;
      continue;
    }
    guesses++;
    th.failed('alice', ip, true, false, now);
  }
  return guesses;
}

t.test('guesses per account at full attack speed are bounded (the figures SECURITY.md states)', async (t) => {
  const oneIpFirstHour = guessesAtFullSpeed(1, false);
  const manyIpsFirstHour = guessesAtFullSpeed(1, true);
  const manyIpsDay = guessesAtFullSpeed(24, true);
  t.equal(oneIpFirstHour, 18, 'one IP: 18 guesses in the first hour');
  t.equal(manyIpsFirstHour, 18, 'a botnet, a new IP per guess: the same 18 (the account counts them all)');
  t.equal(manyIpsDay, 110, '110 in the first day: after the first hour, 4 an hour');
});

t.test('with the users file\'s lock on top (defaults), fewer still: 7 in the first hour, 31 in a day', async (t) => {
  const lockPolicy: Policy = {
    maxOffset: 4, maxLinger: 600, logoutOnIpChange: false,
    maxFailures: 5, lockoutSeconds: 300, maxLockoutSeconds: 3600, permanentLockAfter: 100,
  };
  const th = new Throttle({ ...policy, maxEntries: 1_000_000 });
  let line: TokenState = {
    spec: { type: { algorithm: 'HOTP', stepSeconds: 0, digits: 6 }, pin: '-', key: new Uint8Array(20), liboathLayout: false },
    counter: 0, failures: 0,
  };
  let now = T0;
  let checked = 0;
  const after: Record<string, number> = {};
  for (let n = 0; now < T0 + 86400; n++) {
    const ip = `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`;
    const wait = th.wait('alice', ip, true, false, now);
    if (wait > 0) {
      now += wait;
      continue;
    }
    const verdict = decide([line], { password: '123456', ip, now }, lockPolicy);
    if (verdict.reason !== 'locked') checked++;
    line = verdict.changes.get(0) ?? line;
    th.failed('alice', ip, true, false, now);
    if (now < T0 + 3600) after.hour = checked;
    now += 0.01;
  }
  t.equal(after.hour, 7, '7 guesses checked in the first hour');
  t.equal(checked, 31, '31 in the first day');
});
