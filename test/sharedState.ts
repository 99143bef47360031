// The state a shared-store decision works on: Redis's record, or the users
// file's line when Redis has none or the file is ahead; a lock nobody dated
// starts now and must be written.
import t from 'tap';
import type { Policy } from '../src/decision.js';
import { effectiveState, fileIsAhead, storedOf } from '../src/sharedState.js';
import { parseLine, type TokenLine } from '../src/usersFileFormat.js';
import { rfcTotp } from './lib/harness.js';

const KEY = '3132333435363738393031323334353637383930';
const POLICY: Policy = {
  maxOffset: 4, maxLinger: 600, logoutOnIpChange: false, maxFailures: 5, lockoutSeconds: 300, maxLockoutSeconds: 3600, permanentLockAfter: 100,
};
const NOW = 1_800_000_000;

function token(line: string): TokenLine {
  const p = parseLine(line, 1);
  if (p.kind !== 'token') throw new Error('not a token line');
  return p.token;
}

t.test('an event token: the higher counter wins, whichever side has it', async (t) => {
  const tok = token(`HOTP ann 1234 ${KEY} 7`);
  t.equal(effectiveState(tok, undefined, NOW, POLICY).state.counter, 7, 'Redis has nothing: the file\'s line');
  t.equal(effectiveState(tok, { counter: 9, failures: 1 }, NOW, POLICY).state.counter, 9, 'Redis ahead: Redis');
  t.equal(effectiveState(tok, { counter: 9, failures: 1 }, NOW, POLICY).state.failures, 1);
  t.equal(effectiveState(tok, { counter: 3, failures: 2, retiredOtp: '123456' }, NOW, POLICY).state.counter, 7, 'the file ahead: the file');
  t.equal(effectiveState(tok, { counter: 3, failures: 2, retiredOtp: '123456' }, NOW, POLICY).state.retiredOtp, undefined,
    'and nothing of the older record');
  t.equal(fileIsAhead(tok, { counter: 7, failures: 0 }, 4), false, 'equal: Redis keeps its record');
});

t.test('a time token: the later used step wins', async (t) => {
  const used = rfcTotp(KEY, NOW - 300);
  const tok = token(`HOTP/T30 tom 1234 ${KEY} 0 0 ${used} 2027-01-15T08:00:00L 10.0.0.1`);
  const fileTime = tok.lastTime as number;
  t.equal(fileIsAhead(tok, { counter: 0, failures: 0 }, 4), true, 'Redis never used a step');
  t.equal(fileIsAhead(tok, { counter: 0, failures: 0, lastOtp: '000000', lastTime: fileTime + 60 }, 4), false, 'Redis used a later step');
  t.equal(fileIsAhead(tok, { counter: 0, failures: 0, lastOtp: '000000', lastTime: fileTime - 60 }, 4), true, 'the file used a later step');
  t.equal(fileIsAhead(tok, { counter: 0, failures: 0, usedStep: Math.floor(fileTime / 30) + 5 }, 4), false,
    'a step Redis remembers as used after a logout counts');
});

t.test('a count at the lock without a start: the lock starts now, and must be written', async (t) => {
  const tok = token(`HOTP carl 1234 ${KEY} 0 5`);
  const e = effectiveState(tok, undefined, NOW, POLICY);
  t.equal(e.state.lockedAt, NOW, 'locked from now');
  t.equal(e.mustWrite, true, 'written, so every gateway sees the same start');
  const dated = effectiveState(tok, { counter: 0, failures: 5, lockedAt: NOW - 10 }, NOW, POLICY);
  t.same([dated.state.lockedAt, dated.mustWrite], [NOW - 10, false], 'a dated lock stays as it is');
  t.equal(effectiveState(tok, { counter: 0, failures: 4 }, NOW, POLICY).mustWrite, false, 'below the limit: nothing to write');
});

t.test('storedOf keeps everything but the spec', async (t) => {
  const tok = token(`HOTP ann 1234 ${KEY} 7`);
  t.same(storedOf({ spec: tok, counter: 8, failures: 0, lastOtp: '111111', usedStep: 3 }), { counter: 8, failures: 0, lastOtp: '111111', usedStep: 3 });
});
