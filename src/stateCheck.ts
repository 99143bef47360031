// check-config for store: redis: can this machine reach Redis with the
// configured URL and credentials, and does Redis keep every write?
import { Redis } from 'ioredis';
import type { StateConfig } from './config.js';
import { redisOptionsOf } from './redisLink.js';

export interface StateCheck {
  /** problems: check-config fails */
  readonly problems: string[];
  /** worth knowing, not wrong */
  readonly warnings: string[];
  /** one line on what was found */
  readonly summary?: string | undefined;
}

/** Connect once (within a few seconds), look at the role and persistence, disconnect. */
export async function checkStateStore(state: StateConfig, source: string): Promise<StateCheck> {
  const where = state.url ?? 'redis';
  let redis: Redis;
  try {
    redis = new Redis({ ...redisOptionsOf(state), retryStrategy: () => null, sentinelRetryStrategy: () => null, connectTimeout: 3000 });
  } catch (err) {
    return { problems: [`${source}: state.tls: ${(err as Error).message}`], warnings: [] };
  }
  let cause: NodeJS.ErrnoException | undefined;
  redis.on('error', (err: NodeJS.ErrnoException) => { cause ??= err; });
  try {
    await redis.connect();
    const role = String((await redis.role())[0]);
    const warnings: string[] = [];
    if (role !== 'master') return { problems: [`${source}: state.url: ${where} is a ${role}, not a master: it cannot take writes`], warnings };
    const setting = async (name: string): Promise<string | undefined> => {
      try {
        return (await redis.config('GET', name) as string[])[1];
      } catch {
        return undefined; // CONFIG may be denied to the gateway's ACL user: nothing to say then
      }
    };
    const [aof, fsync, eviction] = [await setting('appendonly'), await setting('appendfsync'), await setting('maxmemory-policy')];
    if (eviction !== undefined && eviction !== 'noeviction') {
      warnings.push(`${where}: maxmemory-policy is ${eviction}: Redis may evict records, and their codes work again (set noeviction)`);
    }
    if (aof === 'no') warnings.push(`${where}: appendonly is off: a crash of Redis loses logins, and their codes work again (set appendonly yes, appendfsync always)`);
    else if (fsync !== undefined && fsync !== 'always') warnings.push(`${where}: appendfsync is ${fsync}: a crash of Redis can lose the last logins, and their codes work again (set appendfsync always)`);
    return { problems: [], warnings, summary: `state store ${where} reachable (master)` };
  } catch (err) {
    const code = cause?.code ?? (err as NodeJS.ErrnoException).code ?? cause?.message ?? (err as Error).message;
    return { problems: [`${source}: state.url: cannot reach ${where} (${code})`], warnings: [] };
  } finally {
    redis.disconnect();
  }
}
