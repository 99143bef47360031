// store: redis: several gateways share counters, lingers, failure counts and
// throttles in Redis, while users, keys and PINs come from each gateway's copy
// of the users file (never written in this mode).
//
// A fresh login reads the user's token records (one round trip), decides with
// the pure decide() exactly as the file store does, and writes every change of
// the user's lines in one compare-and-set (redisState.ts): of two gateways
// taking the same code at once, one writes; the other reads again and then
// rides the linger the first one started, or refuses a replay. Nothing is
// granted before Redis has the change.
//
// A lingering request costs no round trip: each gateway caches the records it
// read or wrote, and drops a token's record when Redis announces a newer
// version of it (the compare-and-set script publishes every write). Credentials
// that rode once ride again while the cached record still says they linger.
//
// While Redis cannot be reached, fresh logins, logouts and refusals get 503 (an
// unknown login too: nothing tells it apart); sessions this gateway saw
// lingering ride on for state.lingerWhileDown seconds, then 503 too.
import type { Logger } from 'pino';
import { LRUCache } from 'lru-cache';
import { decide, decoyCheck, endLinger, isLocked, type Policy, type TokenState, type Verdict } from './decision.js';
import { lingerActive } from './linger.js';
import type { StateConfig } from './config.js';
import { RedisLink } from './redisLink.js';
import { channelOf, RedisTokenStore, type StoredRecord, type ThrottleEvent } from './redisState.js';
import { effectiveState, storedOf, type StoredState } from './sharedState.js';
import {
  checkPin, DECOY_PIN, hashedTokensOf, hmacPads, LINGER, lingerKeyOf, outcomeOf, tokenKey, UNAVAILABLE, unknownLogin, verifiedPinsOf,
  type FileSafety, type LoginRequest, type Outcome, type WriteObserver,
} from './usersFile.js';
import { UsersFileWatch } from './usersFileWatch.js';
import { tokenAt, type TokenLine } from './usersFileFormat.js';
import type { SharedStatus, UserStore } from './userStore.js';
import { randomBytes } from 'node:crypto';

export interface RedisUsersOptions {
  readonly path: string;
  readonly policy: Policy;
  readonly state: StateConfig;
  readonly log: Logger;
  readonly clock?: () => number;
  readonly pollMs?: number;
  readonly safety?: FileSafety;
}

/** A cached record: `state` undefined when only its newer version is known (read again). */
interface Cached {
  version: number;
  state: StoredState | undefined;
  /** the idle clock as last sent to Redis */
  sharedActive?: number | undefined;
}

/** How often one login is decided again after losing races, before it gets 503. */
const MAX_ATTEMPTS = 20;


export class RedisUsers implements UserStore {
  readonly path: string;
  private policy: Policy;
  private readonly log: Logger;
  private readonly clock: () => number;
  private readonly file: UsersFileWatch;
  private readonly link: RedisLink;
  private readonly store: RedisTokenStore;
  /** grants when they must reach replicas (state.waitReplicas): their own connection, for WAIT */
  private readonly grantStore: RedisTokenStore;
  private readonly lingerWhileDown: number;
  private readonly waitReplicas: number;
  private readonly commandTimeoutMs: number;
  private readonly records = new LRUCache<string, Cached>({ max: 500_000 });
  /** see UsersFile.lingers: credentials that rode, by login and HMAC of the password, to the token key and code */
  private readonly lingers = new LRUCache<string, { key: string; token: string; otp: string }>({ max: 100_000 });
  private readonly lingerPads = hmacPads();
  /** one decision per login at a time in this gateway: its own requests do not race each other */
  private readonly turns = new Map<string, Promise<void>>();
  /** this gateway, on the events channel */
  private readonly id = randomBytes(8).toString('hex');
  private conflicts = 0;

  observer: WriteObserver | undefined;
  onFailuresCleared: ((login: string, loginIp: string | undefined) => void) | undefined;
  onPeerThrottle: ((event: ThrottleEvent) => void) | undefined;

  /** Read the users file and start connecting (throws UsersFileError naming the file). */
  constructor(options: RedisUsersOptions) {
    this.path = options.path;
    this.policy = options.policy;
    this.log = options.log;
    this.clock = options.clock ?? ((): number => Date.now() / 1000);
    this.lingerWhileDown = options.state.lingerWhileDown;
    this.waitReplicas = options.state.waitReplicas;
    this.commandTimeoutMs = options.state.commandTimeout * 1000;
    this.file = new UsersFileWatch(options.path, options.safety, options.log, options.pollMs ?? 1000);
    try {
      this.link = new RedisLink(options.state, channelOf(options.state.keyPrefix), options.log, this.clock);
    } catch (err) {
      this.file.close(); // a TLS file that cannot be read: nothing keeps running
      throw err;
    }
    this.store = new RedisTokenStore(this.link.client, options.state.keyPrefix);
    this.grantStore = this.link.writer === undefined ? this.store : new RedisTokenStore(this.link.writer, options.state.keyPrefix);
    this.link.onEvent = (e): void => {
      if (e.kind === 'version') this.announced(e.key, e.version);
      else if (e.from !== this.id) this.onPeerThrottle?.(e.event);
    };
    this.link.onMissed = (): void => this.records.clear();
    this.link.connect();
  }

  get usable(): boolean { return this.file.problem === undefined; }
  get unusableReason(): string | undefined { return this.file.problem; }
  get userCount(): number { return this.file.model.index.size; }
  get tokenCount(): number { return this.file.model.tokenCount; }
  get malformedLines(): number { return this.file.model.problems.length; }
  get lingerCount(): number { return this.lingers.size; }

  get shared(): SharedStatus {
    const down = this.link.downFor(this.clock());
    return { up: this.link.up, downSeconds: down, lingersRide: this.link.up || down < this.lingerWhileDown, conflicts: this.conflicts };
  }

  setPolicy(policy: Policy): void { this.policy = policy; }
  setSafety(safety: FileSafety): void { this.file.setSafety(safety); }
  reload(): Promise<void> { return this.file.reload(); }
  removeStaleTemp(): Promise<void> { return Promise.resolve(); } // never writes the file

  async flush(): Promise<void> {
    while (this.turns.size > 0) await Promise.allSettled([...this.turns.values()]);
  }

  async close(): Promise<void> {
    this.file.close();
    await this.flush();
    await this.link.close();
  }

  knows(login: string): boolean {
    return this.file.model.index.has(login);
  }

  /** Does a cached record of `login` say it last logged in from `ip`? (No round trip: a hint for the throttle.) */
  lastLoggedInFrom(login: string, ip: string): boolean {
    const lines = this.file.model.index.get(login);
    return lines?.some((i) => this.records.peek(this.store.keyOf(tokenAt(this.file.model, i)))?.state?.lastIp === ip) ?? false;
  }

  shareThrottle(event: ThrottleEvent): void {
    if (!this.link.commandsUp) return;
    this.store.publishThrottle(this.id, event).catch(() => undefined);
  }

  authenticate(login: string, password: string, ip: string, logout = false, usualIp = false): Outcome | Promise<Outcome> {
    if (this.file.problem !== undefined) return UNAVAILABLE;
    const model = this.file.model;
    const lines = model.index.get(login);
    const lingerKey = lingerKeyOf(this.lingerPads, login, password);
    const known = lines !== undefined && !model.refused.has(login);
    const ride = logout || !known ? 'no' : this.rideCached(lines, lingerKey, ip, this.clock());
    if (ride === 'ride') return LINGER;
    // Unknown logins and known ones alike: 503 at once while Redis is down.
    if (!this.link.commandsUp) return UNAVAILABLE;
    if (!known) return this.unknown(login, password, ip, lines);
    const request: LoginRequest = { login, password, ip, logout, usualIp, lingerKey };
    // The record of a linger these credentials rode changed (another gateway's
    // wrong guess, a reconnect): read it again, and ride on if it still holds.
    if (ride === 'stale') return this.rideAfterRead(lines, request).then((rode) => (rode ? LINGER : this.fresh(request)));
    return this.fresh(request);
  }

  /** Check PIN hashes if any, then decide in the login's turn. */
  private fresh(request: LoginRequest): Promise<Outcome> {
    const { login, password, ip } = request;
    const model = this.file.model;
    const lines = model.index.get(login) ?? [];
    const hashed = model.hashedPins === 0 ? undefined : hashedTokensOf(model, lines);
    const verified = model.hashedPins === 0 ? Promise.resolve(undefined)
      : hashed === undefined ? checkPin(DECOY_PIN, password.slice(0, -6), ip).then(() => undefined)
        : verifiedPinsOf(hashed, password, ip);
    return verified.then((verifiedPins) => this.inTurn(login, (answer) =>
      this.decideAndWrite(verifiedPins === undefined ? request : { ...request, verifiedPins }, answer)));
  }

  ridesLinger(login: string, password: string, ip: string): boolean {
    const lines = this.file.model.index.get(login);
    return lines !== undefined && this.file.problem === undefined &&
      this.rideCached(lines, lingerKeyOf(this.lingerPads, login, password), ip, this.clock()) === 'ride';
  }

  /** Read the record a hint points to, then try the ride again. */
  private async rideAfterRead(lines: readonly number[], r: LoginRequest): Promise<boolean> {
    const hint = this.lingers.get(r.lingerKey);
    if (hint === undefined) return false;
    try {
      const [record] = await this.store.readAll([hint.key]);
      if (record !== undefined) this.remember(hint.key, record.version, record.state);
    } catch {
      return false;
    }
    return this.rideCached(this.file.model.index.get(r.login) ?? lines, r.lingerKey, r.ip, this.clock()) === 'ride';
  }

  /**
   * A login not in the file: the work of a refused known one, in turn like it
   * (concurrent guesses at a known login queue behind each other), a read
   * before the answer and a compare-and-set after it (that changes nothing).
   */
  private async unknown(login: string, password: string, ip: string, lines: readonly number[] | undefined): Promise<Outcome> {
    decoyCheck(password, this.policy);
    if (this.file.model.hashedPins > 0) await checkPin(DECOY_PIN, password.slice(0, -6), ip);
    const key = this.store.decoyKeyOf(login);
    return this.inTurn(login, async (answer) => {
      try {
        await this.store.readAll([key]);
        answer(unknownLogin(lines));
        await this.store.compareAndSetAll([{ key, version: 0 }]);
      } catch {
        answer(UNAVAILABLE);
      }
    });
  }

  /**
   * Do the same credentials ride the linger they rode or started before? 'ride':
   * the cached record says it still holds for `ip`; 'stale': its record is no
   * longer cached (a newer version was announced), read it first; 'no'.
   */
  private rideCached(lines: readonly number[] | undefined, lingerKey: string, ip: string, now: number): 'ride' | 'stale' | 'no' {
    if (lines === undefined) return 'no';
    const hint = this.lingers.get(lingerKey);
    if (hint === undefined) return 'no';
    // Down for longer than lingerWhileDown: a logout elsewhere may have gone unheard.
    if (!this.link.up && this.link.downFor(now) >= this.lingerWhileDown) return 'no';
    const model = this.file.model;
    for (const i of lines) {
      const t = tokenAt(model, i);
      // The line as it is now (its PIN too: a new PIN ends the ride, as in the file store).
      if (tokenKey(t) !== hint.token) continue;
      const cached = this.records.get(hint.key);
      const stored = cached?.state;
      if (cached === undefined || stored === undefined) return this.link.up ? 'stale' : 'no';
      const s: TokenState = { spec: t, ...stored };
      if (s.lastOtp !== hint.otp || isLocked(s, now, this.policy) || !lingerActive(s, ip, now, this.policy)) break;
      cached.state = { ...stored, lastActive: now };
      this.shareIdleClock(hint.key, cached, now);
      return 'ride';
    }
    this.lingers.delete(lingerKey);
    return 'no';
  }

  /**
   * With maxIdle, the other gateways judge idleness by Redis's clock: it moves
   * forward in steps of a tenth of maxIdle (1-30 s), not at every request. A
   * gateway whose cached clock says idle reads Redis again before refusing.
   */
  private shareIdleClock(key: string, cached: Cached, now: number): void {
    const idle = this.policy.maxIdle;
    if (idle === undefined || !this.link.commandsUp) return;
    const step = Math.min(30, Math.max(1, idle / 10));
    const last = cached.sharedActive ?? cached.state?.lastTime ?? 0;
    if (now - last < step) return;
    cached.sharedActive = now;
    this.store.touch(key, Math.floor(now)).catch(() => undefined);
  }

  /** Redis has a newer version of a token than what may be cached: forget the cached state. */
  private announced(key: string, version: number): void {
    const cached = this.records.peek(key);
    // Versions come from one sequence: any other version is newer (after a reset of Redis, a lower one too).
    if (cached === undefined || cached.version !== version) this.records.set(key, { version, state: undefined });
  }

  /** Cache what was read or written, unless a newer version was announced meanwhile. */
  private remember(key: string, version: number, state: StoredState | undefined): void {
    const cached = this.records.peek(key);
    if (cached !== undefined && cached.version > version) return;
    this.records.set(key, { version, state, sharedActive: cached?.version === version ? cached.sharedActive : undefined });
  }

  /** Run one login's decision after the ones of the same login before it in this gateway. */
  private inTurn(login: string, run: (answer: (o: Outcome) => void) => Promise<void>): Promise<Outcome> {
    const before = this.turns.get(login) ?? Promise.resolve();
    return new Promise<Outcome>((resolve) => {
      let answered = false;
      const answer = (o: Outcome): void => {
        if (!answered) {
          answered = true;
          resolve(o);
        }
      };
      const turn = before.then(() => run(answer)).catch((err: Error) => {
        this.log.error({ event: 'state_store_failed', err: err.message }, `state store: could not decide a login: ${err.message}`);
      }).finally(() => {
        answer(UNAVAILABLE);
        if (this.turns.get(login) === turn) this.turns.delete(login);
      });
      this.turns.set(login, turn);
    });
  }

  /**
   * Read, decide, write; again on a lost race. A refusal is answered once
   * decided (it depends on nothing durable, and takes as long as an unknown
   * login's); its failure count is written after. A grant or logout is
   * answered once Redis has it.
   */
  private async decideAndWrite(r: LoginRequest, answer: (o: Outcome) => void): Promise<void> {
    let answered = false;
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      const model = this.file.model;
      const lines = model.index.get(r.login);
      if (lines === undefined || model.refused.has(r.login)) {
        answer(unknownLogin(lines)); // an admin removed it meanwhile
        return;
      }
      const tokens = lines.map((i) => tokenAt(model, i));
      const keys = tokens.map((t) => this.store.keyOf(t));
      if (new Set(keys).size !== keys.length) {
        // Two lines of one token (its PINs differ): one record, written twice by one decision. Refused.
        this.duplicated(r.login);
        answer(unknownLogin(lines));
        return;
      }
      let records: StoredRecord[];
      try {
        records = await this.store.readAll(keys);
      } catch (err) {
        this.unreachable(err);
        return;
      }
      keys.forEach((key, k) => this.remember(key, records[k]?.version ?? 0, records[k]?.state));
      const now = this.clock();
      const effective = tokens.map((t, k) => effectiveState(t, records[k]?.state, now, this.policy));
      const states = effective.map((e) => e.state);
      const usual = r.usualIp || states.some((s) => s.lastIp === r.ip);
      const verdict = decide(states, {
        password: r.password, ip: r.ip, now, logout: r.logout, usualIp: usual, verifiedPins: r.verifiedPins,
      }, this.policy);
      // Refused already, a retry may not grant (the state changed meanwhile): only failures are recorded.
      const grants = verdict.granted || verdict.reason === 'logout';
      if (answered && grants) return;
      if (verdict.reason === 'linger') {
        // Nothing to write (a linger decides nothing new; a locked line cannot linger).
        this.rode(r, tokens, keys, verdict, now);
        answer(outcomeOf(verdict));
        return;
      }
      const next = new Map<number, TokenState>();
      effective.forEach((e, k) => { if (e.mustWrite) next.set(k, e.state); });
      for (const [k, s] of verdict.changes) next.set(k, s);
      if (verdict.reason === 'locked') decoyCheck(r.password, this.policy); // the work a check would have cost
      if (next.size === 0) {
        answer(outcomeOf(verdict));
        return;
      }
      if (!grants && !answered) {
        answer(outcomeOf(verdict));
        answered = true;
      }
      const writes = keys.map((key, k) => ({ key, version: records[k]?.version ?? 0, next: next.has(k) ? storedOf(next.get(k) as TokenState) : undefined }));
      // A grant that must reach replicas goes on its own connection: its WAIT holds nobody else up.
      const store = grants ? this.grantStore : this.store;
      let version: number;
      try {
        version = await store.compareAndSetAll(writes);
      } catch (err) {
        // Not known whether it was written: never granted, and never taken for a refusal's count lost.
        this.unreachable(err);
        return;
      }
      if (version === 0) {
        this.conflicts++;
        continue;
      }
      if (grants && this.waitReplicas > 0 && !(await this.replicated(tokens, writes, version, verdict))) return;
      for (const w of writes) if (w.next !== undefined) this.remember(w.key, version, w.next);
      if (verdict.granted && verdict.line !== undefined) {
        const otp = verdict.changes.get(verdict.line)?.lastOtp;
        if (otp !== undefined) this.lingers.set(r.lingerKey, { key: keys[verdict.line] as string, token: tokenKey(tokens[verdict.line] as TokenLine), otp });
      }
      answer(outcomeOf(verdict));
      return;
    }
    this.log.warn({ event: 'state_store_contention', user: r.login }, 'state store: a login lost too many races in a row; answered 503');
  }

  /** A linger decided after a read: remember the credentials, move the idle clock here. */
  private rode(r: LoginRequest, tokens: readonly TokenLine[], keys: readonly string[], verdict: Verdict, now: number): void {
    const line = verdict.line as number;
    const key = keys[line] as string;
    const s = verdict.changes.get(line);
    if (s?.lastOtp === undefined) return;
    this.lingers.set(r.lingerKey, { key, token: tokenKey(tokens[line] as TokenLine), otp: s.lastOtp });
    const cached = this.records.peek(key);
    if (cached?.state !== undefined) {
      cached.state = { ...cached.state, lastActive: now };
      this.shareIdleClock(key, cached, now);
    }
  }

  /**
   * A grant waits until enough replicas have it (state.waitReplicas): a
   * failover then cannot bring its code back. If they do not confirm in time,
   * the login gets 503 and its linger is ended at once (the code stays used):
   * the browser's retry must not ride a linger that no replica has.
   */
  private async replicated(
    tokens: readonly TokenLine[], writes: readonly { key: string; next?: StoredState | undefined }[], version: number, verdict: Verdict,
  ): Promise<boolean> {
    try {
      // Below commandTimeout: WAIT itself must answer before the client gives up on it.
      const acked = await this.grantStore.replicated(this.waitReplicas, Math.max(1, this.commandTimeoutMs - 250));
      if (acked >= this.waitReplicas) return true;
      this.log.warn({ event: 'state_store_replicas', acked, wanted: this.waitReplicas },
        `state store: ${acked} of ${this.waitReplicas} replicas have the login's write; answered 503`);
    } catch (err) {
      this.unreachable(err);
    }
    const k = verdict.line;
    const line = k === undefined ? undefined : writes[k];
    const spec = k === undefined ? undefined : tokens[k];
    if (line?.next !== undefined && spec !== undefined) {
      const ended = storedOf(endLinger({ spec, ...line.next }, this.policy.maxOffset));
      await this.store.compareAndSetAll([{ key: line.key, version, next: ended }]).catch(() => undefined);
    }
    return false;
  }

  private readonly reportedDuplicates = new Set<string>();
  private duplicated(login: string): void {
    if (this.reportedDuplicates.has(login)) return;
    this.reportedDuplicates.add(login);
    this.log.warn({ event: 'users_file_line', file: this.path, user: login },
      `${this.path}: ${login} has two lines with the same token type and key: with store: redis it cannot log in until one is removed`);
  }

  private unreachable(err: unknown): void {
    this.link.suspect();
    this.log.warn({ event: 'state_store_error', err: (err as Error).message }, `state store: ${(err as Error).message}; answered 503`);
  }
}
