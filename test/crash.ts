// Crash consistency under concurrency. Several real gateways share one users
// file while real admin tools edit it, one after another, under the update
// protocol (flock(1) as otplock does, an fcntl lock as liboath does); the
// gateways are SIGKILLed again and again in the middle of a login storm, and the
// tools are killed too, sometimes while they hold the lock with half a temp file
// written. After every kill the file must parse, hold every line (comments, the
// admins' lines, every edit that completed and every edit ever seen on disk),
// hold every counter answered 200, and no counter may go back; no code answered
// 200 may log in again (maxLinger 0: there is no linger to ride).
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Agent, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseLine, parseUsersFile } from '../src/usersFileFormat.js';
import { basic, rfcHotp, secretKey, spawnGateway, startBackend, tempDir, writeFile600, type SpawnedGateway } from './lib/harness.js';

const GATEWAYS = 4; // on the one users file, started together and killed one by one each round
const USERS_PER_GATEWAY = 2; // each storm user logs in through one gateway only, so its counter is predictable
const USERS = GATEWAYS * USERS_PER_GATEWAY;
const ADMINS = 3; // users no one logs in as, whose PINs the admin tools change
const MIN_KILLS = 200;
const ROUNDS = Math.ceil(MIN_KILLS / GATEWAYS);
const MAX_OFFSET = 4;
const TYPE = 'HOTP/E/8'; // 8 digits: two counters share a code once in 10^8, not 10^6
const KEY = secretKey('3132333435363738393031323334353637383930');
const HEADER = '# otpgate crash test: comments and blank lines are copied byte for byte';
const COMMENT = '# comment-edits:'; // the admin tools append edit ids to this comment
const PIN_BASE = 1_000_000; // an admin's PIN is PIN_BASE + the id of the edit that set it (0: none yet)

// Each kill costs a gateway start, about 0.65 s of CPU (Node's ESM loader over
// some 120 modules), so 200 kills cost some 130 CPU-seconds: about 80 s on an
// otherwise idle 2-vCPU machine, and well past tap's default 180 s when other
// test runs share it. Every loop below is bounded; this only moves the limit.
t.setTimeout(420_000);

const code = (counter: number): string => rfcHotp(KEY, counter, 8);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const adminLine = (k: number, pinEdit: number): string => `${TYPE} admin${k} ${PIN_BASE + pinEdit} ${KEY} 0`;
const appendedLine = (id: number): string => `${TYPE} e${id} ${PIN_BASE + id} ${KEY} 0`;

/** Would the code for `counter` log in anyway, as the code of a counter in the window? Then accepting it is no replay. */
const sharesCode = (counter: number, windowStart: number): boolean =>
  Array.from({ length: MAX_OFFSET + 1 }, (_, i) => code(windowStart + i)).includes(code(counter));

function usersFileText(): string {
  return [HEADER, '', COMMENT,
    ...Array.from({ length: USERS }, (_, u) => `${TYPE} u${u} - ${KEY} 0`),
    ...Array.from({ length: ADMINS }, (_, k) => adminLine(k, 0)), ''].join('\n');
}

/** The status as soon as it arrives: a gateway that answered 200 has granted, whatever happens to the body. */
function login(port: number, agent: Agent, user: string, password: string): Promise<number> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, path: '/', agent, headers: { Authorization: basic(user, password) } }, (res) => {
      res.on('error', () => undefined);
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', () => resolve(0)); // the gateway is gone
    req.end();
  });
}

// ---- the admin tools: real processes, see test/lib/edit-users-file.sh and edit_users_file.py ----

type Tool = 'flock' | 'fcntl';
type Op = { kind: 'append' } | { kind: 'comment' } | { kind: 'pin'; admin: number };
interface Edit { id: number; tool: Tool; op: Op; state: 'running' | 'done' | 'killed' }

const SH_EDITOR = fileURLToPath(new URL('./lib/edit-users-file.sh', import.meta.url));
const PY_EDITOR = fileURLToPath(new URL('./lib/edit_users_file.py', import.meta.url));
// The interpreter itself rather than a version manager's shim script: a quarter of a second less per edit.
const PYTHON = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout?.trim() || 'python3';

/** Its own process group, so a kill takes the whole tool (the shell and the command it runs) at once. */
function spawnTool(tool: Tool, usersFile: string, args: readonly string[]): ChildProcess {
  return spawn(tool === 'flock' ? 'sh' : PYTHON, tool === 'flock' ? [SH_EDITOR, usersFile, ...args] : ['-S', PY_EDITOR, usersFile, ...args],
    { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
}

function killGroup(child: ChildProcess): void {
  try {
    process.kill(-(child.pid as number), 'SIGKILL');
  } catch { /* already gone */ }
}

/** Is any process of the group still running? Zombies hold no files and no locks (init here reaps orphans only about once a second). */
function groupRunning(pgid: number): boolean {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue;
    }
    const [state, , pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (Number(pgrp) === pgid && state !== 'Z') return true;
  }
  return false;
}

/**
 * Wait until a killed tool is entirely gone. The next tool may lock the other
 * way (flock vs fcntl do not exclude each other on Linux), so it must not start
 * while a straggler of the killed one could still rename.
 */
async function toolGone(child: ChildProcess): Promise<boolean> {
  for (let i = 0; i < 400; i++) {
    if (!groupRunning(child.pid as number)) return true;
    await sleep(5);
  }
  return false;
}

interface ToolRun { child: ChildProcess; exit: Promise<[number | null, NodeJS.Signals | null]>; stderr: () => string }

function runTool(tool: Tool, usersFile: string, args: readonly string[], live: Set<ChildProcess>): ToolRun {
  const child = spawnTool(tool, usersFile, args);
  live.add(child);
  let err = '';
  child.stderr?.on('data', (c: Buffer) => { err += c.toString('utf8'); });
  const exit = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.once('exit', (c, s) => {
    live.delete(child);
    resolve([c, s]);
  }));
  return { child, exit, stderr: () => err };
}

/** A tool that takes the lock, writes half its temp file and is killed right then. */
async function crashTool(tool: Tool, usersFile: string, live: Set<ChildProcess>): Promise<string | undefined> {
  const run = runTool(tool, usersFile, ['crash'], live);
  const holding = await new Promise<boolean>((resolve) => {
    run.child.stdout?.once('data', () => resolve(true));
    void run.exit.then(() => resolve(false));
  });
  killGroup(run.child);
  const [status] = await run.exit;
  if (!holding) return `${tool} tool exited (${status}) before it held the lock: ${run.stderr()}`;
  if (!await toolGone(run.child)) return `${tool} tool still running 2 s after SIGKILL`;
  return undefined;
}

t.test('SIGKILL gateways and admin tools during logins and edits, 200 times and more', async (t) => {
  const dir = tempDir(t);
  const backend = await startBackend(t);
  const usersFile = writeFile600(join(dir, 'otp-users'), usersFileText());
  const temp = `${usersFile}.new`;
  const config = writeFile600(join(dir, 'otpgate.yaml'), `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: ${usersFile}\n` +
    `maxOffset: ${MAX_OFFSET}\nmaxLinger: 0\nmaxFailures: 0\nlogLevel: warn\n`);
  const liveTools = new Set<ChildProcess>();
  const liveGateways = new Set<ChildProcess>();
  t.teardown(() => {
    for (const child of liveTools) killGroup(child);
    for (const child of liveGateways) child.kill('SIGKILL');
  });

  const problems: string[] = [];
  const bad = (msg: string): void => {
    problems.push(msg);
    if (problems.length <= 10) t.fail(msg);
  };

  // What the file must hold, and what it may hold.
  const confirmed = new Array<number>(USERS).fill(-1); // highest counter answered 200
  const sent = new Array<number>(USERS).fill(-1); // highest counter whose code was sent
  const counters = new Array<number>(USERS).fill(0); // as last seen on disk
  const edits = new Map<number, Edit>();
  const seenAppends = new Set<number>();
  let seenComments: number[] = [];
  const seenPins = new Array<number>(ADMINS).fill(0);
  let snapshots = 0;

  /** Read the file once and check it against everything above. */
  function check(when: string): void {
    // Synchronous from here on: no answer or exit can arrive between what is expected and the read.
    snapshots++;
    const bytes = readFileSync(usersFile);
    const fail = (msg: string): void => bad(`${when}: ${msg}`);
    const model = parseUsersFile(bytes);
    if (model.problems.length > 0) fail(`the file does not parse: ${JSON.stringify(model.problems)}`);
    const text = bytes.toString('utf8');
    if (!text.endsWith('\n')) fail(`the last line is cut: ${JSON.stringify(text.slice(-80))}`);
    let headers = 0;
    let blanks = 0;
    const comments: number[][] = [];
    const users = new Map<number, { counter: number; lastOtp: string | undefined }[]>();
    const admins = new Map<number, number[]>();
    const appends: number[] = [];
    text.slice(0, -1).split('\n').forEach((line, i) => {
      if (line === HEADER) headers++;
      else if (line === '') blanks++;
      else if (line.startsWith(COMMENT)) comments.push(line.slice(COMMENT.length).split(' ').filter(Boolean).map(Number));
      else {
        const parsed = parseLine(line, i + 1);
        const login = parsed.kind === 'token' ? parsed.token.login : '';
        const [, kind, n] = /^(u|admin|e)(\d+)$/.exec(login) ?? [];
        const known = kind === 'u' ? Number(n) < USERS : kind === 'admin' ? Number(n) < ADMINS : kind === 'e';
        if (parsed.kind !== 'token' || !known) fail(`line ${i + 1} is no line of this file: ${JSON.stringify(line)}`);
        else if (kind === 'u') {
          const list = users.get(Number(n)) ?? [];
          list.push({ counter: parsed.token.counter, lastOtp: parsed.token.lastOtp });
          users.set(Number(n), list);
        } else if (kind === 'admin') {
          const pinEdit = Number(parsed.token.pin) - PIN_BASE;
          // Only the PIN changes, and only by an admin tool: the rest of the line stays byte for byte.
          if (line !== adminLine(Number(n), pinEdit)) fail(`admin line changed beyond its PIN: ${JSON.stringify(line)}`);
          admins.set(Number(n), [...(admins.get(Number(n)) ?? []), pinEdit]);
        } else {
          if (line !== appendedLine(Number(n))) fail(`appended line changed: ${JSON.stringify(line)}`);
          appends.push(Number(n));
        }
      }
    });
    if (headers !== 1 || blanks !== 1) fail(`comment line ${headers} times, blank line ${blanks} times`);
    if (comments.length !== 1) fail(`the edited comment line is there ${comments.length} times`);
    const commentIds = comments[0] ?? [];

    for (let u = 0; u < USERS; u++) {
      const lines = users.get(u) ?? [];
      if (lines.length !== 1) {
        fail(`u${u} has ${lines.length} lines`);
        continue;
      }
      const { counter, lastOtp } = lines[0] as { counter: number; lastOtp: string | undefined };
      const before = counters[u] as number;
      if (counter < before) fail(`u${u}: counter went backwards ${before} -> ${counter}`);
      if (counter < (confirmed[u] as number) + 1) fail(`u${u}: answered 200 for counter ${confirmed[u]} but the disk has ${counter}`);
      if (counter > (sent[u] as number) + 1) fail(`u${u}: the disk has counter ${counter} but no code past ${sent[u]} was sent`);
      // The gateway writes used + 1 and the code it accepted: the two must belong together.
      if (counter > 0 && lastOtp !== code(counter - 1)) fail(`u${u}: counter ${counter} with last OTP ${lastOtp}, not the code of ${counter - 1}`);
      counters[u] = counter;
    }

    const editOf = (id: number, kind: Op['kind']): Edit | undefined => {
      const e = edits.get(id);
      return e?.op.kind === kind ? e : undefined;
    };
    const done = [...edits.values()].filter((e) => e.state === 'done');
    for (let k = 0; k < ADMINS; k++) {
      const pins = admins.get(k) ?? [];
      if (pins.length !== 1) {
        fail(`admin${k} has ${pins.length} lines`);
        continue;
      }
      const pin = pins[0] as number;
      const target = (e: Edit | undefined): boolean => e?.op.kind === 'pin' && e.op.admin === k;
      if (pin !== 0 && !target(editOf(pin, 'pin'))) fail(`admin${k} has a PIN no edit of it set (${pin})`);
      const lastDone = Math.max(0, ...done.filter(target).map((e) => e.id));
      // The tools run one after another, so a later edit's PIN is the newer one.
      if (pin < lastDone) fail(`admin${k}: PIN of edit ${pin}, but edit ${lastDone} completed (lost edit)`);
      if (pin < (seenPins[k] as number)) fail(`admin${k}: PIN of edit ${pin}, but edit ${seenPins[k]}'s was on disk before (lost edit)`);
      seenPins[k] = pin;
    }

    const present = new Set(appends);
    if (present.size !== appends.length) fail(`an appended line is there twice: ${appends.join(' ')}`);
    for (const id of appends) if (!editOf(id, 'append')) fail(`appended line e${id} that no edit wrote`);
    for (const e of done) if (e.op.kind === 'append' && !present.has(e.id)) fail(`edit ${e.id} (${e.tool}, completed) appended e${e.id}: lost`);
    for (const id of seenAppends) if (!present.has(id)) fail(`e${id} was on disk before and is lost`);
    for (const id of appends) seenAppends.add(id);

    const inComment = new Set(commentIds);
    if (commentIds.some((id, i) => i > 0 && id <= (commentIds[i - 1] as number))) fail(`comment ids out of order: ${commentIds.join(' ')}`);
    for (const id of commentIds) if (!editOf(id, 'comment')) fail(`comment id ${id} that no edit wrote`);
    for (const e of done) if (e.op.kind === 'comment' && !inComment.has(e.id)) fail(`edit ${e.id} (${e.tool}, completed) to the comment: lost`);
    for (const id of seenComments) if (!inComment.has(id)) fail(`comment id ${id} was on disk before and is lost`);
    seenComments = commentIds;
  }

  let nextEdit = 1;
  let kills = 0;
  let granted = 0;
  let replaysRefused = 0;
  let toolsKilled = 0;
  let toolsCrashedHolding = 0;
  let staleTempsCleaned = 0;
  const completedBy: Record<Tool, number> = { flock: 0, fcntl: 0 };

  /** One admin edit by a real tool, killed after `killAfterMs` if given. */
  async function edit(killAfterMs: number | undefined): Promise<void> {
    const id = nextEdit++;
    const tool: Tool = id % 2 === 0 ? 'flock' : 'fcntl';
    const which = Math.floor(id / 2) % 3; // with the tool alternating, every tool does every kind of edit
    const op: Op = which === 0 ? { kind: 'append' } : which === 1 ? { kind: 'comment' } : { kind: 'pin', admin: Math.floor(id / 6) % ADMINS };
    const args = op.kind === 'append' ? ['append', appendedLine(id)]
      : op.kind === 'comment' ? ['comment', String(id)] : ['pin', `admin${op.admin}`, String(PIN_BASE + id)];
    const e: Edit = { id, tool, op, state: 'running' };
    edits.set(id, e);
    const run = runTool(tool, usersFile, args, liveTools);
    const timer = killAfterMs === undefined ? undefined : setTimeout(() => killGroup(run.child), killAfterMs);
    const [status, signal] = await run.exit;
    clearTimeout(timer);
    if (signal === 'SIGKILL') {
      // Killed somewhere: it may or may not have renamed; if it did, the edit must stay.
      e.state = 'killed';
      toolsKilled++;
      if (!await toolGone(run.child)) bad(`edit ${id}: ${tool} tool still running 2 s after SIGKILL`);
    } else if (status === 0) {
      e.state = 'done';
      completedBy[tool]++;
    } else {
      bad(`edit ${id}: ${tool} tool failed (${status ?? signal}): ${run.stderr()}`);
      e.state = 'killed';
    }
  }

  /** The admin side of a round: tools one after another (two lock kinds that do not exclude each other must not overlap). */
  async function admin(going: () => boolean): Promise<void> {
    for (let n = 0; n < 50 && going(); n++) {
      const r = Math.random();
      if (r < 0.1) {
        const err = await crashTool(toolsCrashedHolding++ % 2 === 0 ? 'flock' : 'fcntl', usersFile, liveTools);
        if (err) bad(err);
      } else {
        await edit(r < 0.35 ? Math.random() * 40 : undefined);
      }
    }
  }

  for (let round = 0; round < ROUNDS && problems.length < 10; round++) {
    const staleBefore = existsSync(temp);
    const gateways: SpawnedGateway[] = await Promise.all(Array.from({ length: GATEWAYS }, () => spawnGateway(config)));
    for (const gw of gateways) liveGateways.add(gw.child);
    // Nobody else runs yet: a temp file now is one a crash left and startup did not remove.
    if (existsSync(temp)) bad(`round ${round}: a temp file left by a crash survived startup`);
    else if (staleBefore) staleTempsCleaned++;
    const agents = gateways.map(() => new Agent({ keepAlive: true, maxSockets: USERS }));
    const alive = gateways.map(() => true);
    // Resolved by each gateway's first answer: a gateway that has just started
    // is slow at first (more so on a busy machine), and a kill counts when it
    // lands among writes, not before the first one.
    const serving = gateways.map(() => {
      let resolve!: () => void;
      return { promise: new Promise<void>((r) => { resolve = r; }), resolve };
    });
    // Some gateways die the instant one of their 200s arrives: a grant answered
    // before its counter is durable would then be missing on disk.
    const onGrant = gateways.map((): (() => void) | undefined => undefined);
    const ask = async (k: number, user: string, password: string): Promise<number> => {
      const status = await login((gateways[k] as SpawnedGateway).port, agents[k] as Agent, user, password);
      if (status === 200) onGrant[k]?.();
      if (status !== 0) serving[k]?.resolve();
      return status;
    };
    const pick = (): number | undefined => {
      const up = alive.flatMap((a, k) => (a ? [k] : []));
      return up[Math.floor(Math.random() * up.length)];
    };

    /** A code answered 200 before, sent to a gateway: anything but 401 is a replay (or worse). */
    async function replay(u: number, counter: number, windowStart: number, k: number): Promise<void> {
      if (sharesCode(counter, windowStart)) return;
      const status = await ask(k, `u${u}`, code(counter));
      if (status === 401) replaysRefused++;
      else if (status !== 0) bad(`round ${round}: u${u}'s code for counter ${counter}, answered 200 before, got ${status} from gateway ${k}`);
    }

    let editing = true;
    const admins = admin(() => editing);
    const storm = Array.from({ length: USERS }, async (_, u) => {
      const k = u % GATEWAYS;
      // First, after the restart: the last code answered 200 before the crashes must stay used.
      if ((confirmed[u] as number) >= 0) await replay(u, confirmed[u] as number, counters[u] as number, pick() ?? k);
      for (let counter = counters[u] as number, n = 0; n < 5000; counter++, n++) {
        sent[u] = Math.max(sent[u] as number, counter);
        const status = await ask(k, `u${u}`, code(counter));
        if (status === 0) return; // its gateway is gone
        if (status !== 200) {
          bad(`round ${round}: u${u}'s next code (counter ${counter}) got ${status} from gateway ${k}`);
          return;
        }
        confirmed[u] = counter;
        granted++;
        // Sometimes at once through any gateway still up: another process must see the counter on disk.
        const other = Math.random() < 0.25 ? pick() : undefined;
        if (other !== undefined) await replay(u, counter, counter + 1, other);
      }
    });

    // Each gateway dies at its own moment, 20-150 ms after it first answered
    // (or 2 s in, if the others kept the lock all along), the others still writing.
    await Promise.all(gateways.map(async (gw, k) => {
      let fallback: NodeJS.Timeout | undefined;
      await Promise.race([serving[k]?.promise, new Promise((r) => { fallback = setTimeout(r, 2000); })]);
      clearTimeout(fallback);
      await sleep(20 + Math.random() * 130);
      const kill = (): void => {
        alive[k] = false;
        gw.child.kill('SIGKILL');
      };
      if (Math.random() < 0.3) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 300);
          onGrant[k] = (): void => {
            kill();
            clearTimeout(timer);
            resolve();
          };
        });
        onGrant[k] = undefined;
      }
      kill();
      await gw.exited;
      liveGateways.delete(gw.child);
      if (gw.child.signalCode !== 'SIGKILL') bad(`round ${round}: gateway ${k} ended by itself (${gw.child.exitCode}): ${gw.stderr()}`);
      else kills++;
      // Best effort: pino writes asynchronously, so the last lines die with the process.
      const complaints = gw.logs.filter((l) => ['warn', 'error', 'fatal'].includes(String(l.level)));
      if (complaints.length > 0) bad(`round ${round}: gateway ${k} logged ${JSON.stringify(complaints.slice(0, 3))}`);
      check(`round ${round}, after kill ${kills}`);
    }));
    editing = false;
    await Promise.all(storm);
    await admins;
    for (const agent of agents) agent.destroy();
    // Now and then the round ends with a tool dead in the middle of its write,
    // its lock file and half its temp file left: the next startup must cope.
    if (round % 3 === 2) {
      const err = await crashTool(round % 2 === 0 ? 'flock' : 'fcntl', usersFile, liveTools);
      if (err) bad(err);
      toolsCrashedHolding++;
      if (!existsSync(temp)) bad(`round ${round}: the crashed tool left no temp file`);
    }
    check(`round ${round}, end`);
  }

  const completed = completedBy.flock + completedBy.fcntl;
  t.same(problems, [], `no violation in ${snapshots} reads of the file`);
  t.ok(kills >= MIN_KILLS, `${kills} gateways SIGKILLed during logins and edits`);
  // The storm must give the checks something to check: a gateway lives some 100 ms after its first answer.
  t.ok(granted >= ROUNDS, `${granted} logins granted`);
  t.ok(replaysRefused > ROUNDS, `${replaysRefused} replays of codes answered 200 refused, after restarts and across gateways`);
  t.ok(completed >= ROUNDS && completedBy.flock > 0 && completedBy.fcntl > 0, `${completed} edits completed (flock tool ${completedBy.flock}, fcntl tool ${completedBy.fcntl}), all on disk`);
  t.ok(toolsKilled > 0 && toolsCrashedHolding > 0, `${toolsKilled} tools killed at random, ${toolsCrashedHolding} killed holding the lock with half a temp file`);
  t.ok(staleTempsCleaned > 0, `${staleTempsCleaned} temp files left by crashes removed at startup`);
  t.comment(`kills ${kills}, edits completed ${completed} of ${nextEdit - 1}, logins granted ${granted}, replays refused ${replaysRefused}`);
});

t.test('an admin tool killed while it holds the lock does not hold up logins', async (t) => {
  const dir = tempDir(t);
  const backend = await startBackend(t);
  const usersFile = writeFile600(join(dir, 'otp-users'), `${HEADER}\n${TYPE} u0 - ${KEY} 0\n`);
  const config = writeFile600(join(dir, 'otpgate.yaml'),
    `listen: 127.0.0.1:0\nupstream: ${backend.url}\nusersFile: ${usersFile}\nmaxLinger: 0\nlogLevel: warn\n`);
  const liveTools = new Set<ChildProcess>();
  const gw = await spawnGateway(config);
  const agent = new Agent({ keepAlive: true });
  t.teardown(() => {
    for (const child of liveTools) killGroup(child);
    gw.child.kill('SIGKILL');
    agent.destroy();
  });
  let counter = 0;
  for (const tool of ['flock', 'fcntl'] as const) {
    const run = runTool(tool, usersFile, ['crash'], liveTools);
    await new Promise((resolve) => run.child.stdout?.once('data', resolve));
    const pending = login(gw.port, agent, 'u0', code(counter));
    t.equal(await Promise.race([pending, sleep(300).then(() => 'waiting')]), 'waiting', `the login waits while the ${tool} tool holds the lock`);
    killGroup(run.child);
    const killed = performance.now();
    t.equal(await pending, 200, 'and goes through once the tool is dead');
    const ms = performance.now() - killed;
    t.ok(ms < 2000, `${Math.round(ms)} ms after the kill, not a lock timeout`);
    t.notOk(existsSync(`${usersFile}.new`), "the dead tool's half temp file is gone (the gateway wrote its own in its place)");
    const model = parseUsersFile(readFileSync(usersFile));
    const entry = model.parsed[1];
    t.ok(model.problems.length === 0 && entry?.kind === 'token' && entry.token.counter === counter + 1, 'the counter is on disk');
    counter++;
  }
});
