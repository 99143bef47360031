// Brute-force throttling: failed logins earn a growing wait, per client IP, per
// account and per IP-account pair, before the gateway looks at credentials
// again. Pure: the caller passes the clock; the state is a bounded in-memory
// cache, so a flood of distinct IPs or names costs a fixed amount of memory.
import { LRUCache } from 'lru-cache';

/** One kind of key: a free allowance of failures, then waits doubling from baseSeconds up to maxSeconds. */
export interface ThrottleRule {
  readonly free: number;
  readonly baseSeconds: number;
  readonly maxSeconds: number;
  /** failures are forgotten after this long without one */
  readonly quietSeconds: number;
}

export interface ThrottlePolicy {
  /** one client IP guessing at one account */
  readonly pair: ThrottleRule;
  /** one account, from IPs it has not logged in from (a distributed attack) */
  readonly account: ThrottleRule;
  /** one client IP, all accounts: generous, an office of agents may share it */
  readonly ip: ThrottleRule;
  /** how long an IP stays usual for an account after a login from it; 0 = no IP is usual */
  readonly usualIpSeconds: number;
  /** entries per cache (failures; usual IPs) */
  readonly maxEntries: number;
}

interface Failures {
  count: number;
  /** epoch seconds of the last failure */
  last: number;
  /** epoch seconds until which the key waits */
  until: number;
}

/** The wait after the n-th consecutive failure (1-based). */
export function waitAfter(rule: ThrottleRule, n: number): number {
  if (n <= rule.free) return 0;
  // 2^(n-free-1) overflows to Infinity for huge n, which min() caps.
  return Math.min(rule.maxSeconds, rule.baseSeconds * 2 ** (n - rule.free - 1));
}

// \0 cannot occur in a login from Basic auth (the parser refuses control bytes) nor in an IP.
const pairKey = (login: string, ip: string): string => `p\0${login}\0${ip}`;
const accountKey = (login: string): string => `a\0${login}`;
const ipKey = (ip: string): string => `i\0${ip}`;

export class Throttle {
  private policy: ThrottlePolicy;
  /** pairs, IPs and names not in the users file: a bounded cache, the oldest go first */
  private failures: LRUCache<string, Failures>;
  /**
   * accounts in the users file: never evicted, so no flood of other keys can
   * wipe an account's count (their number is bounded by the file)
   */
  private readonly accounts = new Map<string, Failures>();
  private usual: LRUCache<string, number>;
  /**
   * attempts still being checked (a scrypt, a commit), by key: each distinct
   * credential once, with how many requests carry it. Guesses sent all at once
   * would otherwise all pass before the first of them is counted.
   */
  private readonly pending = new Map<string, Map<string, number>>();

  constructor(policy: ThrottlePolicy) {
    this.policy = policy;
    this.failures = new LRUCache({ max: policy.maxEntries });
    this.usual = new LRUCache({ max: policy.maxEntries });
  }

  /** A reload: new rules apply to the failures already counted. */
  setPolicy(policy: ThrottlePolicy): void {
    if (policy.maxEntries !== this.policy.maxEntries) {
      const failures = new LRUCache<string, Failures>({ max: policy.maxEntries });
      const usual = new LRUCache<string, number>({ max: policy.maxEntries });
      // Oldest first, so the most recent survive a smaller cache.
      for (const [k, v] of [...this.failures.entries()].reverse()) failures.set(k, v);
      for (const [k, v] of [...this.usual.entries()].reverse()) usual.set(k, v);
      this.failures = failures;
      this.usual = usual;
    }
    this.policy = policy;
  }

  /** Has `login` logged in from `ip` recently enough for the IP to count as its usual one? */
  isUsual(login: string, ip: string, now: number): boolean {
    const since = this.usual.get(pairKey(login, ip));
    return since !== undefined && now < since + this.policy.usualIpSeconds;
  }

  /**
   * Seconds this attempt must still wait (rounded up), or 0 to check it. From
   * a usual IP the account's own count does not apply: an attacker elsewhere
   * cannot keep the owner out (see SECURITY.md, lockout-DoS). `byIp` false
   * leaves the IP's count out.
   */
  wait(login: string, ip: string, known: boolean, usual: boolean, now: number, byIp = true, credential?: string): number {
    const { pair, ip: ipRule, account } = this.policy;
    let until = this.until(this.failures, pairKey(login, ip), pair, now, credential);
    if (byIp) until = Math.max(until, this.until(this.failures, ipKey(ip), ipRule, now, credential));
    if (!usual) until = Math.max(until, this.until(this.accountStore(known), accountKey(login), account, now, credential));
    return until > now ? Math.ceil(until - now) : 0;
  }

  /**
   * An attempt whose answer is not known yet: until `end` is called it counts as
   * a failure for the next wait(), once per distinct `credential` (an opaque id;
   * a browser's parallel requests carry the same one).
   */
  begin(login: string, ip: string, usual: boolean, credential: string): () => void {
    const keys = usual ? [pairKey(login, ip), ipKey(ip)] : [pairKey(login, ip), ipKey(ip), accountKey(login)];
    for (const key of keys) {
      const held = this.pending.get(key) ?? new Map<string, number>();
      held.set(credential, (held.get(credential) ?? 0) + 1);
      this.pending.set(key, held);
    }
    let ended = false;
    return (): void => {
      if (ended) return;
      ended = true;
      for (const key of keys) {
        const held = this.pending.get(key);
        const n = (held?.get(credential) ?? 1) - 1;
        if (n > 0) held?.set(credential, n);
        else held?.delete(credential);
        if (held?.size === 0) this.pending.delete(key);
      }
    };
  }

  /** Nothing failed and nothing is being checked: no wait to look up. */
  get idle(): boolean { return this.failures.size === 0 && this.accounts.size === 0 && this.pending.size === 0; }

  /**
   * A wrong PIN or code, an unknown login, a locked account. `known`: the login
   * is in the users file (where its count is kept, not how it is treated).
   */
  failed(login: string, ip: string, known: boolean, usual: boolean, now: number): void {
    count(this.failures, pairKey(login, ip), this.policy.pair, now);
    count(this.failures, ipKey(ip), this.policy.ip, now);
    if (!usual) count(this.accountStore(known), accountKey(login), this.policy.account, now);
  }

  /** A fresh login: the account and this pair start over, and the IP becomes usual for the account. */
  succeeded(login: string, ip: string, now: number): void {
    this.failures.delete(pairKey(login, ip));
    this.accounts.delete(accountKey(login));
    if (this.policy.usualIpSeconds > 0) this.usual.set(pairKey(login, ip), now);
  }

  /**
   * The account's failures were cleared in the users file. A login through
   * another gateway on the same file (from `loginIp`) is what succeeded() is
   * here: the account and that pair start over, other IPs' pairs keep their
   * counts. An admin's unlock (no `loginIp`): every pair of the account starts over.
   */
  forget(login: string, loginIp?: string): void {
    this.accounts.delete(accountKey(login));
    this.failures.delete(accountKey(login));
    if (loginIp !== undefined) {
      this.failures.delete(pairKey(login, loginIp));
      return;
    }
    const pairs = pairKey(login, '');
    for (const key of [...this.failures.keys()]) if (key.startsWith(pairs)) this.failures.delete(key);
  }

  /** How many keys hold failures now (for metrics and tests). */
  get size(): number { return this.failures.size + this.accounts.size; }

  private accountStore(known: boolean): Store {
    return known ? this.accounts : this.failures;
  }

  private until(store: Store, key: string, rule: ThrottleRule, now: number, credential?: string): number {
    let f = store.get(key);
    if (f !== undefined && now >= f.last + rule.quietSeconds) {
      store.delete(key);
      f = undefined;
    }
    const held = this.pending.get(key);
    // Other credentials still being checked count as the failures they may turn out to be.
    const others = held === undefined ? 0 : held.size - (credential !== undefined && held.has(credential) ? 1 : 0);
    if (others === 0) return f?.until ?? 0;
    return Math.max(f?.until ?? 0, now + waitAfter(rule, (f?.count ?? 0) + others));
  }
}

/** What both stores offer (LRUCache's get also marks the entry as recently used). */
interface Store {
  get(key: string): Failures | undefined;
  set(key: string, value: Failures): unknown;
  delete(key: string): unknown;
}

function count(store: Store, key: string, rule: ThrottleRule, now: number): void {
  const f = store.get(key);
  const n = f !== undefined && now < f.last + rule.quietSeconds ? f.count + 1 : 1;
  store.set(key, { count: n, last: now, until: now + waitAfter(rule, n) });
}
