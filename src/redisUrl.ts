// Where the shared state lives: a Redis URL, read into what the client needs.
// Pure; config validation and the connection both use it.
//   redis://[[user]:password@]host[:port][/db]        one server
//   rediss://...                                       the same over TLS
//   redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db]
//   rediss+sentinel://...                              master and sentinels over TLS
// Sentinels default to port 26379, a server to 6379. The password is the master's.

export interface RedisEndpoint {
  readonly host: string;
  readonly port: number;
}

export interface RedisTarget {
  /** one server, or the master a set of Sentinels names */
  readonly server?: RedisEndpoint | undefined;
  readonly sentinels?: readonly RedisEndpoint[] | undefined;
  readonly masterName?: string | undefined;
  readonly db: number;
  readonly username?: string | undefined;
  readonly password?: string | undefined;
  readonly tls: boolean;
}

const HOST_PORT = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.\-_]+))(?::(\d{1,5}))?$/;

function endpoint(text: string, defaultPort: number): RedisEndpoint | undefined {
  const m = HOST_PORT.exec(text);
  if (!m) return undefined;
  const port = m[3] === undefined ? defaultPort : Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: m[1] ?? m[2] ?? '', port };
}

/** 0-15: the databases a Redis has unless configured otherwise (a missing one is not refused until SELECT). */
function dbOf(text: string | undefined): number | undefined {
  if (text === undefined || text === '') return 0;
  return /^(?:\d|1[0-5])$/.test(text) ? Number(text) : undefined;
}

/** The URL read, or one line saying what is wrong with it (never echoing a password). */
export function parseRedisUrl(url: string): RedisTarget | string {
  const m = /^(rediss?)(\+sentinel)?:\/\/(?:([^@/]*)@)?([^/?#]+)(\/[^?#]*)?$/.exec(url);
  if (!m) return 'expected redis://host:port, rediss://host:port or redis+sentinel://host:26379,host:26379/mastername';
  const [, scheme, sentinel, auth, hosts = '', path = ''] = m;
  const tls = scheme === 'rediss';
  let username: string | undefined;
  let password: string | undefined;
  if (auth !== undefined) {
    const colon = auth.indexOf(':');
    try {
      username = decodeURIComponent(colon < 0 ? auth : auth.slice(0, colon)) || undefined;
      password = colon < 0 ? undefined : decodeURIComponent(auth.slice(colon + 1)) || undefined;
    } catch {
      return 'a malformed %-escape in the user or password';
    }
  }
  const parts = path.split('/').slice(1);
  if (sentinel === undefined) {
    const server = endpoint(hosts, 6379);
    const db = dbOf(parts[0]);
    // The host part is not echoed: a password with an unescaped @ or / ends up in it.
    if (server === undefined || hosts.includes(',')) return 'expected one host[:port] (several only with redis+sentinel://; a password\'s @ or / written %40, %2F)';
    if (db === undefined || parts.length > 1) return 'expected /db, a database number 0-15, after the host';
    return { server, db, username, password, tls };
  }
  const sentinels = hosts.split(',').map((h) => endpoint(h, 26379));
  if (sentinels.some((s) => s === undefined)) return 'expected host[:port] of each Sentinel, separated by commas';
  const masterName = parts[0] ?? '';
  const db = dbOf(parts[1]);
  if (!/^[A-Za-z0-9.\-_]+$/.test(masterName)) return 'expected the master\'s name after the Sentinels: redis+sentinel://host:26379/mymaster';
  if (db === undefined || parts.length > 2) return 'expected /db, a database number 0-15, after the master\'s name';
  return { sentinels: sentinels as RedisEndpoint[], masterName, db, username, password, tls };
}
