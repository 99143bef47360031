// Crash consistency: SIGKILL the real gateway, many times, in the middle of a
// storm of logins; after each kill the users file must be complete, every
// counter that was answered 200 must be on disk, no counter may go backwards,
// and no code answered 200 may log in again (maxLinger 0: no linger to ride).
import t from 'tap';
import { Agent, request as httpRequest } from 'node:http';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseUsersFile } from '../src/usersFileFormat.js';
import { basic, request, rfcHotp, secretKey, spawnGateway, startBackend, tempDir, writeFile600 } from './lib/harness.js';

const USERS = 16;
const KILLS = 25;
const KEY = secretKey('3132333435363738393031323334353637383930');

function diskCounters(path: string, t: { equal: (a: unknown, b: unknown, m: string) => void }): number[] {
  const model = parseUsersFile(readFileSync(path));
  t.equal(model.problems.length, 0, 'the file parses');
  t.equal(model.tokenCount, USERS, 'no line lost');
  return Array.from({ length: USERS }, (_, i) => {
    const entry = model.parsed[(model.index.get(`u${i}`) ?? [])[0] ?? -1];
    if (entry?.kind !== 'token') throw new Error(`u${i} missing`);
    return entry.token.counter;
  });
}

function login(port: number, agent: Agent, user: string, code: string): Promise<number> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/', agent, headers: { Authorization: basic(user, code) } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode ?? 0));
      res.on('error', () => resolve(0));
    });
    req.on('error', () => resolve(0));
    req.end();
  });
}

t.test('SIGKILL during a write storm, again and again', async (t) => {
  const dir = tempDir(t);
  const backend = await startBackend(t);
  const usersFile = writeFile600(join(dir, 'otp-users'),
    `# crash test\n${Array.from({ length: USERS }, (_, i) => `HOTP u${i} - ${KEY} 0`).join('\n')}\n`);
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: ${usersFile}\nmaxLinger: 0\nmaxFailures: 0\nlogLevel: warn\n`);
  const confirmed: number[] = Array.from({ length: USERS }, () => -1); // highest counter answered 200
  let previous = diskCounters(usersFile, t);
  let granted = 0;
  for (let round = 0; round < KILLS; round++) {
    const gw = await spawnGateway(config);
    t.notOk(existsSync(`${usersFile}.new`), 'a temp file left by the crash is gone after startup');
    // Codes answered 200 before the crash must not log in again.
    for (let i = 0; i < USERS; i++) {
      if (confirmed[i] === -1) continue;
      const replay = await request(gw.port, { auth: [`u${i}`, rfcHotp(KEY, confirmed[i] as number)] });
      if (replay.status !== 401) t.fail(`u${i}: code for counter ${confirmed[i]} accepted again (${replay.status})`);
    }
    const agent = new Agent({ keepAlive: true, maxSockets: USERS });
    let stop = false;
    const next = previous.slice();
    const storm = Array.from({ length: USERS }, async (_, i) => {
      while (!stop) {
        const counter = next[i] as number;
        const status = await login(gw.port, agent, `u${i}`, rfcHotp(KEY, counter));
        if (status === 200) {
          confirmed[i] = Math.max(confirmed[i] as number, counter);
          granted++;
        }
        if (status === 0) return; // the gateway is gone
        next[i] = counter + 1;
      }
    });
    await new Promise((r) => setTimeout(r, 40 + Math.floor(Math.random() * 200)));
    gw.child.kill('SIGKILL');
    await gw.exited;
    stop = true;
    await Promise.all(storm);
    agent.destroy();
    const now = diskCounters(usersFile, t);
    for (let i = 0; i < USERS; i++) {
      if ((now[i] as number) < (previous[i] as number)) t.fail(`u${i}: counter went backwards ${previous[i]} -> ${now[i]}`);
      if ((now[i] as number) < (confirmed[i] as number) + 1) t.fail(`u${i}: answered 200 for ${confirmed[i]} but the disk has ${now[i]}`);
    }
    previous = now;
  }
  t.ok(granted > KILLS * USERS, `${granted} logins granted across ${KILLS} crashes`);
  t.pass(`no counter moved backwards and every 200 was on disk, after each of ${KILLS} SIGKILLs`);
});
