// End to end: the real gateway (start()) in front of a real recording backend,
// real users files in temp dirs, real sockets on 127.0.0.1. Raw sockets are used
// wherever Node's own client would normalise or refuse what a hostile client sends.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { errors, jwtVerify } from 'jose';
import { basic, request, rfcHotp, secret, secretKey, tempDir, writeFile600, type Reply, type Seen } from './lib/harness.js';
import { identityHeaders, startGateway, type Gw, type GwOptions } from './lib/gateway.js';
import { head, raw, type RawReply } from './lib/raw.js';
import { findLeaks, registeredSecrets } from './lib/secrets.js';
import { hashPin } from '../src/pinHash.js';

// the last overload of t.test is (cb): its argument is a subtest
type Test = Parameters<Parameters<typeof t.test>[0]>[0];

const REALM = 'Test Helpdesk';
const KEYS = {
  alice: secretKey(randomBytes(20).toString('hex')),
  bob: secretKey(randomBytes(20).toString('hex')),
  carol: secretKey(randomBytes(20).toString('hex')),
};
// PINs that cannot turn up in a log line by accident (a timestamp, a pid).
const PIN = { alice: secret('pinAl1ceQ'), carol: secret('pinCar0lZ'), wrong: secret('wr0ngPinX') };

const USERS = [
  `HOTP alice ${PIN.alice} ${KEYS.alice} 0`,
  `HOTP bob - ${KEYS.bob} 0`,
  // mod_authn_otp's layout with the failure count only: 5 failures = locked (maxFailures 5)
  `HOTP carol ${PIN.carol} ${KEYS.carol} 0 5`,
  '',
].join('\n');

const code = (user: keyof typeof KEYS, counter: number): string => rfcHotp(KEYS[user], counter);
const alicePw = (counter: number): string => `${PIN.alice}${code('alice', counter)}`;

/** A six-digit code that is none of the token's next fifty codes. */
function wrongCode(user: keyof typeof KEYS): string {
  const near = new Set(Array.from({ length: 50 }, (_, c) => code(user, c)));
  for (let n = 1; n < 100; n++) {
    const c = String(n * 10_101).padStart(6, '0');
    if (!near.has(c)) return c;
  }
  throw new Error('no wrong code found');
}

const gateway = (t: Test, opts: GwOptions = {}): Promise<Gw> =>
  startGateway(t, USERS, { ...opts, config: { realm: REALM, ...opts.config } });

/** Field 5 (the counter) of a user's line in the users file as it is on disk. */
function fileFields(path: string, login: string): string[] {
  const line = readFileSync(path, 'utf8').split('\n').find((l) => l.split(/\s+/)[1] === login);
  if (line === undefined) throw new Error(`${login} not in ${path}`);
  return line.split(/\s+/);
}
const counterOf = (path: string, login: string): number => Number(fileFields(path, login)[4]);

const auditEvents = (logs: Gw['logs']): Record<string, unknown>[] => logs.lines.filter((l) => l.event === 'auth');

const CHALLENGE = new RegExp(`^Basic realm="${REALM}"(, charset="UTF-8")?$`);

function assertChallenge(t: Test, r: Reply, what: string): void {
  t.equal(r.status, 401, `${what}: 401`);
  t.match(r.headers['www-authenticate'] ?? '', CHALLENGE, `${what}: Basic challenge with the realm`);
  t.equal(r.headers['cache-control'], 'no-store', `${what}: not cached`);
}

interface CallOptions {
  method?: string;
  path?: string;
  headers?: Record<string, string>;
  /** written one chunk at a time, respecting back-pressure */
  chunks?: Buffer[];
  agent?: Agent;
}

/** One HTTP request with a streamed body; resolves with the reply and whether the socket was reused. */
function call(port: number, opts: CallOptions): Promise<Reply & { reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1', port, method: opts.method ?? 'GET', path: opts.path ?? '/', headers: opts.headers ?? {},
      agent: opts.agent ?? false,
    }, (res) => {
      const got: Buffer[] = [];
      res.on('data', (c: Buffer) => got.push(c));
      res.on('end', () => {
        const body = Buffer.concat(got);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString('utf8'), reused: req.reusedSocket });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    void (async () => {
      for (const chunk of opts.chunks ?? []) {
        if (!req.write(chunk)) await new Promise((r) => req.once('drain', r));
      }
      req.end();
    })();
  });
}

/** Poll `check` every 20 ms until it is true or `ms` passed. */
async function eventually(check: () => boolean, ms = 2000): Promise<boolean> {
  for (let waited = 0; waited < ms; waited += 20) {
    if (check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}

t.test('login: the challenge, every refusal alike, a good login, and an audit trail without secrets', async (t) => {
  const gw = await gateway(t);
  const none = await request(gw.port);
  assertChallenge(t, none, 'no credentials');

  const good = ['alice', alicePw(0)] as [string, string];
  const refusals: Array<[string, [string, string], string]> = [
    ['wrong PIN', ['alice', `${PIN.wrong}${code('alice', 0)}`], 'bad_pin'],
    ['wrong code', ['alice', `${PIN.alice}${wrongCode('alice')}`], 'bad_otp'],
    ['unknown user', ['nobody', alicePw(0)], 'unknown_user'],
    ['locked user', ['carol', `${PIN.carol}${code('carol', 0)}`], 'locked'],
    ['login in another case', ['Alice', alicePw(0)], 'unknown_user'],
  ];
  const replies: Reply[] = [];
  for (const [what, auth] of refusals) {
    const r = await request(gw.port, { auth });
    assertChallenge(t, r, what);
    replies.push(r);
  }
  for (const [i, r] of replies.entries()) {
    t.same([r.headers['www-authenticate'], r.headers['content-type'], r.text], [none.headers['www-authenticate'],
      none.headers['content-type'], none.text], `${refusals[i]?.[0]}: answered exactly like no credentials`);
  }
  t.equal(gw.backend.seen.length, 0, 'the backend saw none of the refused requests');
  t.equal(counterOf(gw.usersPath, 'alice'), 0, 'no code consumed by a refusal');

  const ok = await request(gw.port, { auth: good, path: '/tickets?id=7' });
  t.equal(ok.status, 200, 'good PIN + code: the backend answers');
  t.equal(gw.backend.seen.length, 1);
  const seen = gw.backend.seen[0] as Seen;
  t.equal(seen.url, '/tickets?id=7');
  t.same(identityHeaders(seen), [['Remote-User', 'alice']], 'identity set exactly once, to the login');
  t.equal(counterOf(gw.usersPath, 'alice'), 1, 'the used code is consumed');

  const again = await request(gw.port, { auth: good });
  t.equal(again.status, 200, 'the same PIN + code lingers');
  const bobOk = await request(gw.port, { auth: ['bob', code('bob', 2)] });
  t.equal(bobOk.status, 200, 'PIN "-": the code alone');
  t.equal(counterOf(gw.usersPath, 'bob'), 3, 'used counter + 1 recorded');

  // mod_authn_otp's logout: an empty password from the lingering IP.
  const logout = await request(gw.port, { auth: ['alice', ''] });
  assertChallenge(t, logout, 'empty password');
  t.equal((await request(gw.port, { auth: good })).status, 401, 'the linger is over after the logout');

  const events = auditEvents(gw.logs);
  t.same(events.map((e) => [e.user, e.reason, e.result]), [
    ['alice', 'bad_pin', 'denied'], ['alice', 'bad_otp', 'denied'], ['nobody', 'unknown_user', 'denied'],
    ['carol', 'locked', 'denied'], ['Alice', 'unknown_user', 'denied'], ['alice', 'ok', 'granted'],
    ['alice', 'linger', 'granted'], ['bob', 'ok', 'granted'], ['alice', 'logout', 'denied'], ['alice', 'bad_otp', 'denied'],
  ], 'one audit event per authentication, in order');
  for (const e of events) {
    t.equal(e.ip, '127.0.0.1', `${String(e.reason)}: client ip`);
    t.equal(e.level, e.reason === 'linger' ? 20 : 30, `${String(e.reason)}: ${e.reason === 'linger' ? 'debug' : 'info'} level`);
  }

  const secrets = [PIN.alice, PIN.carol, PIN.wrong, alicePw(0), `${PIN.alice}${wrongCode('alice')}`];
  const authValues = [...refusals.map(([, a]) => a), good, ['bob', code('bob', 2)] as [string, string]]
    .map(([u, p]) => basic(u, p));
  for (const s of [...secrets, ...authValues, ...authValues.map((a) => a.slice(6))]) {
    t.notOk(gw.logs.text().includes(s), `log text holds no ${s.startsWith('Basic') ? 'Authorization value' : 'secret'}`);
  }
  const codes = [code('alice', 0), code('carol', 0), code('bob', 2), wrongCode('alice')];
  const strings: string[] = [];
  const collect = (v: unknown): void => {
    if (typeof v === 'string') strings.push(v);
    else if (v && typeof v === 'object') Object.values(v).forEach(collect);
  };
  gw.logs.lines.forEach(collect);
  for (const c of codes) t.notOk(strings.some((s) => s.includes(c)), 'no logged value holds a code');
});

t.test('every request is authenticated on its own, also on one keep-alive connection', async (t) => {
  const gw = await gateway(t);
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const auth = { Authorization: basic('alice', alicePw(0)) };
  const first = await call(gw.port, { agent, headers: auth });
  t.equal(first.status, 200);
  const second = await call(gw.port, { agent });
  t.equal(second.reused, true, 'same connection');
  assertChallenge(t, second, 'no credentials on a connection that logged in before');
  const wrong = await call(gw.port, { agent, headers: { Authorization: basic('alice', `${PIN.wrong}${code('alice', 0)}`) } });
  t.equal(wrong.reused, true);
  t.equal(wrong.status, 401, 'wrong credentials on that connection');
  const third = await call(gw.port, { agent, headers: auth });
  t.equal(third.reused, true);
  t.equal(third.status, 200);
  t.equal(gw.backend.seen.length, 2, 'only the authenticated requests reached the backend');
});

t.test('header hygiene', async (t) => {
  t.test('identity spellings, credentials, hop-by-hop and forwarding headers from the client', async (t) => {
    const gw = await gateway(t);
    const r = await raw(gw.port, head(
      'GET /h?x=1 HTTP/1.1',
      'Host: helpdesk.example:8443',
      `Authorization: ${basic('alice', alicePw(0))}`,
      'Remote-User: m1', 'remote-user: m2', 'REMOTE_USER: m3', 'remote.user: m4', 'Remote_User: m5', 'Remote-User: m6',
      'rEmOtE-uSeR: m7',
      'X-Remote-User: kept as is',
      'Connection: close, Remote-User, X-Hop-Named',
      'X-Hop-Named: hop',
      'Keep-Alive: timeout=5',
      'TE: trailers',
      'Trailer: X-Late',
      'Proxy-Authorization: Basic cHJveHk6cHJveHk=',
      'Proxy-Connection: keep-alive',
      'X-Forwarded-For: 6.6.6.6',
      'X-Forwarded-Proto: https',
      'X-Forwarded-Host: evil.example',
      'Forwarded: for=6.6.6.6',
      'X-Real-IP: 6.6.6.6',
      'Accept: text/html',
    ));
    t.equal(r.status, 200);
    t.equal(r.closed, true, 'the client asked to close: the gateway closes');
    t.match(r.head, /\r\nconnection: close\r\n/i);
    t.notMatch(r.head, /\r\nkeep-alive:/i, 'the backend\'s Keep-Alive is not passed on');
    t.equal(gw.backend.seen.length, 1);
    const seen = gw.backend.seen[0] as Seen;
    const h = seen.headers;
    t.same(identityHeaders(seen), [['Remote-User', 'alice']], 'no client spelling of the identity header, ours once');
    t.equal(h['x-remote-user'], 'kept as is', 'X-Remote-User is another header: unchanged');
    t.equal(h.authorization, undefined, 'no Authorization');
    for (const name of ['x-hop-named', 'keep-alive', 'te', 'trailer', 'proxy-authorization', 'proxy-connection', 'forwarded', 'x-real-ip', 'upgrade']) {
      t.equal(h[name], undefined, `no ${name}`);
    }
    t.notMatch(String(h.connection ?? ''), /remote|hop/i, 'Connection names none of the client\'s headers');
    t.equal(h['x-forwarded-for'], '127.0.0.1', 'X-Forwarded-For from the socket');
    t.equal(h['x-forwarded-proto'], 'http');
    t.equal(h['x-forwarded-host'], 'helpdesk.example:8443', 'X-Forwarded-Host is the Host the client used');
    t.equal(h.host, 'helpdesk.example:8443', 'Host passes unchanged');
    t.equal(h.accept, 'text/html');
    t.equal(seen.url, '/h?x=1');
    t.equal(auditEvents(gw.logs)[0]?.ip, '127.0.0.1', 'the client X-Forwarded-For is not believed');
    t.equal(fileFields(gw.usersPath, 'alice')[7], '127.0.0.1', 'the linger IP is the peer');
  });

  t.test('the identity header listed in Connection alone still reaches the backend once, as ours', async (t) => {
    const gw = await gateway(t);
    const r = await raw(gw.port, head('GET / HTTP/1.1', 'Host: h', `Authorization: ${basic('alice', alicePw(0))}`,
      'Connection: Remote-User, close'));
    t.equal(r.status, 200);
    t.same(identityHeaders(gw.backend.seen[0] as Seen), [['Remote-User', 'alice']]);
  });

  t.test('the identity header in a chunked trailer does not reach the backend', async (t) => {
    let trailers: Record<string, string | undefined> = {};
    const gw = await gateway(t, {
      backend: (req, res) => {
        trailers = req.trailers;
        res.end('ok');
      },
    });
    const r = await raw(gw.port, head('POST /t HTTP/1.1', 'Host: h', `Authorization: ${basic('alice', alicePw(0))}`,
      'Transfer-Encoding: chunked', 'Trailer: Remote-User', 'Connection: close') +
      '5\r\nhello\r\n0\r\nRemote-User: mallory\r\nAuthorization: Basic bWFsbG9yeTp4\r\n\r\n');
    t.equal(r.status, 200);
    const seen = gw.backend.seen[0] as Seen;
    t.equal(seen.body.toString(), 'hello', 'the body arrived');
    t.same(identityHeaders(seen), [['Remote-User', 'alice']]);
    t.notOk(Object.keys(trailers).some((k) => k.replace(/[-_.]/g, '') === 'remoteuser' || k === 'authorization'),
      'no identity or credentials in the trailers the backend got');
  });

  t.test('a trusted proxy: its X-Forwarded-For is appended to and names the client', async (t) => {
    const gw = await gateway(t, { config: { trustedProxies: ['127.0.0.1'], logoutOnIpChange: true } });
    const auth = { Authorization: basic('alice', alicePw(0)) };
    const r = await request(gw.port, { headers: { ...auth, 'X-Forwarded-For': '203.0.113.9' } });
    t.equal(r.status, 200);
    t.equal((gw.backend.seen[0] as Seen).headers['x-forwarded-for'], '203.0.113.9, 127.0.0.1', 'appended');
    t.equal(auditEvents(gw.logs)[0]?.ip, '203.0.113.9', 'audit names the forwarded client');
    t.equal(fileFields(gw.usersPath, 'alice')[7], '203.0.113.9', 'the linger IP is the forwarded client');
    const same = await request(gw.port, { headers: { ...auth, 'X-Forwarded-For': '203.0.113.9' } });
    t.equal(same.status, 200, 'linger from the same client');
    const moved = await request(gw.port, { headers: { ...auth, 'X-Forwarded-For': '198.51.100.1' } });
    t.equal(moved.status, 401, 'logoutOnIpChange: another forwarded client does not ride the linger');
    t.same(auditEvents(gw.logs).slice(1).map((e) => [e.reason, e.ip]), [['linger', '203.0.113.9'], ['bad_otp', '198.51.100.1']]);
  });
});

t.test('a chunked body on a GET stays a body: no request smuggled past the identity check', async (t) => {
  const gw = await gateway(t);
  const inner = head('GET /admin/delete-all HTTP/1.1', 'Host: x', 'Remote-User: root', 'Content-Length: 0');
  const body = `${Buffer.byteLength(inner).toString(16)}\r\n${inner}\r\n0\r\n\r\n`;
  const r = await raw(gw.port, head('GET / HTTP/1.1', 'Host: gw', `Authorization: ${basic('alice', alicePw(0))}`,
    'Transfer-Encoding: chunked', 'Connection: close') + body);
  t.equal(r.status, 200);
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(gw.backend.seen.length, 1, 'the backend saw one request');
  const seen = gw.backend.seen[0] as Seen;
  t.equal(seen.url, '/');
  t.equal(seen.headers['remote-user'], 'alice');
  t.equal(seen.body.toString('latin1'), inner, 'the smuggling attempt arrived as that request\'s body');
});

t.test('proxying leaves requests and answers untouched', async (t) => {
  let streamFinished = false;
  let release: () => void = () => undefined;
  const gw = await gateway(t, {
    backend: (req, res, body) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname.startsWith('/status/')) {
        const status = Number(url.pathname.slice(8));
        res.writeHead(status, { 'Content-Type': 'text/plain', 'X-Backend': 'yes' });
        res.end(status === 204 ? undefined : `backend says ${status}`);
      } else if (url.pathname === '/hop') {
        res.writeHead(200, { Connection: 'X-Backend-Internal', 'X-Backend-Internal': 'for the gateway only', 'Keep-Alive': 'timeout=99', 'X-Kept': 'yes' });
        res.end('hop');
      } else if (url.pathname === '/redirect') {
        res.writeHead(302, { Location: url.searchParams.get('to') ?? '/' });
        res.end();
      } else if (url.pathname === '/stream') {
        res.writeHead(200, { 'Content-Type': 'text/plain' });
        res.write('first chunk\n');
        const finish = (): void => {
          streamFinished = true;
          res.end('last chunk\n');
        };
        const timer = setTimeout(finish, 1500);
        release = () => {
          clearTimeout(timer);
          setTimeout(finish, 100);
        };
      } else {
        res.writeHead(200, { 'Content-Type': 'application/json' });
        res.end(JSON.stringify({ method: req.method, url: req.url, bodyLength: body.length }));
      }
    },
  });
  const authorization = basic('alice', alicePw(0));
  const auth = { Authorization: authorization };
  t.equal((await request(gw.port, { headers: auth })).status, 200, 'logged in');

  t.test('methods and bodies', async (t) => {
    for (const method of ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD']) {
      const body = ['POST', 'PUT', 'PATCH', 'DELETE'].includes(method) ? randomBytes(1000) : undefined;
      const path = `/m/${method}?a=1&b=%20x&c&d=%C3%A9`;
      // Node's client sends a DELETE or OPTIONS body unframed unless told its length.
      const headers = body ? { ...auth, 'Content-Length': String(body.length) } : auth;
      const r = await request(gw.port, { method, path, headers, ...(body ? { body } : {}) });
      t.equal(r.status, 200, `${method} answered`);
      const seen = gw.backend.seen.find((s) => s.url.startsWith(`/m/${method}?`));
      if (!seen) {
        t.fail(`${method} did not reach the backend`);
        continue;
      }
      t.equal(seen.method, method, `${method} reached the backend as ${method}`);
      t.equal(seen.url, path, `${method}: path and query preserved`);
      if (body) t.ok(seen.body.equals(body), `${method}: body byte-exact`);
      if (method === 'HEAD') t.equal(r.body.length, 0, 'HEAD: no body');
      else t.equal((JSON.parse(r.text) as { method: string }).method, method, `${method}: the backend's answer`);
    }
  });

  t.test('a 20 MB upload, chunked and with Content-Length, arrives byte-exact', async (t) => {
    const big = randomBytes(20 * 1024 * 1024);
    const chunks = Array.from({ length: 20 }, (_, i) => big.subarray(i * 1024 * 1024, (i + 1) * 1024 * 1024));
    for (const framing of ['chunked', 'content-length'] as const) {
      const before = gw.backend.seen.length;
      const headers: Record<string, string> = framing === 'chunked'
        ? { ...auth, 'Transfer-Encoding': 'chunked' }
        : { ...auth, 'Content-Length': String(big.length) };
      const r = await call(gw.port, { method: 'POST', path: `/upload/${framing}`, headers, chunks });
      t.equal(r.status, 200, `${framing}: answered`);
      t.equal((JSON.parse(r.text) as { bodyLength: number }).bodyLength, big.length, `${framing}: backend read it all`);
      t.equal(gw.backend.seen.length, before + 1);
      const seen = gw.backend.seen[before] as Seen;
      t.equal(seen.url, `/upload/${framing}`);
      t.equal(framing === 'chunked' ? seen.headers['transfer-encoding'] : seen.headers['content-length'],
        framing === 'chunked' ? 'chunked' : String(big.length), `${framing}: framed as sent`);
      t.ok(seen.body.equals(big), `${framing}: byte-exact`);
      seen.body = Buffer.alloc(0); // 20 MB less to hold
    }
  });

  t.test('a streamed answer reaches the client while the backend is still writing', async (t) => {
    const got = await new Promise<{ firstBeforeEnd: boolean; text: string }>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: gw.port, path: '/stream', headers: auth, agent: false }, (res) => {
        let text = '';
        let firstBeforeEnd: boolean | undefined;
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (firstBeforeEnd === undefined) {
            firstBeforeEnd = !streamFinished;
            release();
          }
          text += c;
        });
        res.on('end', () => resolve({ firstBeforeEnd: firstBeforeEnd === true, text }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    t.equal(got.firstBeforeEnd, true, 'first chunk arrived before the backend finished');
    t.equal(got.text, 'first chunk\nlast chunk\n');
  });

  t.test('backend status codes pass through, 5xx included', async (t) => {
    for (const status of [201, 204, 404, 418, 500, 503]) {
      const r = await request(gw.port, { path: `/status/${status}`, headers: auth });
      t.equal(r.status, status, `${status} passes through`);
      t.equal(r.headers['x-backend'], 'yes', `${status}: the backend's own answer`);
      if (status !== 204) t.equal(r.text, `backend says ${status}`);
    }
  });

  t.test('the backend\'s connection-specific answer headers stay between it and the gateway', async (t) => {
    const r = await request(gw.port, { path: '/hop', headers: auth });
    t.equal(r.text, 'hop');
    t.equal(r.headers['x-kept'], 'yes', 'end-to-end headers pass');
    t.equal(r.headers['x-backend-internal'], undefined, 'a header the backend listed in Connection is dropped');
    t.not(r.headers['keep-alive'], 'timeout=99', 'the backend\'s Keep-Alive is not the gateway\'s');
    t.notMatch(String(r.headers.connection), /x-backend-internal/i);
  });

  t.test('redirects to the backend\'s origin are rewritten to the client\'s', async (t) => {
    const backendOrigin = `http://127.0.0.1:${gw.backend.port}`;
    const to = (location: string): string => `/redirect?to=${encodeURIComponent(location)}`;
    const viaHost = await request(gw.port, { path: to(`${backendOrigin}/x?q=1&r=2#frag`), headers: { ...auth, Host: 'helpdesk.example:8443' } });
    t.equal(viaHost.status, 302);
    t.equal(viaHost.headers.location, 'http://helpdesk.example:8443/x?q=1&r=2#frag', 'rewritten to the Host the client used');
    const plain = await request(gw.port, { path: to(`${backendOrigin}/x`), headers: auth });
    t.equal(plain.headers.location, `http://127.0.0.1:${gw.port}/x`, 'default Host: the gateway address');
    const relative = await request(gw.port, { path: to('/y?z=1'), headers: auth });
    t.equal(relative.headers.location, '/y?z=1', 'relative Location unchanged');
    const foreign = await request(gw.port, { path: to('https://other.example/z'), headers: auth });
    t.equal(foreign.headers.location, 'https://other.example/z', 'another origin unchanged');
  });
});

t.test('a failing upstream', async (t) => {
  t.test('upstream down: 502, and the gateway keeps serving', async (t) => {
    const closed = createNetServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const deadPort = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const gw = await gateway(t, { upstream: `http://127.0.0.1:${deadPort}` });
    const auth = ['alice', alicePw(0)] as [string, string];
    const first = await request(gw.port, { auth });
    t.equal(first.status, 502);
    t.equal(first.headers['cache-control'], 'no-store');
    t.equal((await request(gw.port, { auth })).status, 502, 'again');
    t.equal((await request(gw.port, { path: '/otpgate/health' })).status, 200, 'still serving');
    t.ok(gw.logs.lines.some((l) => l.event === 'upstream_error'), 'logged');
  });

  t.test('a backend that never answers: 504 after upstreamTimeout, nothing left hanging', async (t) => {
    let upstreamSocketClosed = false;
    const gw = await gateway(t, {
      config: { upstreamTimeout: 1 },
      backend: (req, res) => {
        if (req.url === '/hang') {
          req.socket.once('close', () => { upstreamSocketClosed = true; });
          return; // never answers
        }
        res.end('ok');
      },
    });
    const started = Date.now();
    const r = await raw(gw.port, head('GET /hang HTTP/1.1', 'Host: h', `Authorization: ${basic('alice', alicePw(0))}`, 'Connection: close'), 4000);
    const elapsed = Date.now() - started;
    t.equal(r.status, 504);
    t.ok(elapsed >= 900 && elapsed < 3000, `answered after about upstreamTimeout (${elapsed} ms)`);
    t.equal(r.closed, true, 'the client connection was closed by the gateway');
    t.ok(await eventually(() => upstreamSocketClosed), 'the upstream connection was given up');
    t.ok(gw.logs.lines.some((l) => l.event === 'upstream_timeout'), 'logged');
    const after = await request(gw.port, { auth: ['alice', alicePw(0)] });
    t.equal(after.status, 200, 'the gateway keeps serving');
  });

  t.test('upstreamTimeout counts silence, not length: a slow upload is not cut, a silent backend is, once', async (t) => {
    const gw = await gateway(t, {
      config: { upstreamTimeout: 1 },
      backend: (req, res, body) => {
        if (req.url === '/hang') return; // reads the body, never answers
        res.end(String(body.length));
      },
    });
    const auth = { Authorization: basic('alice', alicePw(0)) };
    const chunks = Array.from({ length: 12 }, () => Buffer.alloc(1000, 'u'));
    const started = Date.now();
    const slow = await new Promise<Reply>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: gw.port, method: 'POST', path: '/upload', headers: auth, agent: false }, (res) => {
        const got: Buffer[] = [];
        res.on('data', (c: Buffer) => got.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(got), text: Buffer.concat(got).toString() }));
      });
      req.on('error', reject);
      void (async () => {
        for (const c of chunks) {
          req.write(c);
          await new Promise((r) => setTimeout(r, 200)); // 2.4 s in all, twice the timeout
        }
        req.end();
      })();
    });
    t.equal(slow.status, 200, `an upload flowing for ${Date.now() - started} ms went through`);
    t.equal(slow.text, '12000');
    // The same (now reused) backend connection, silent: 504 after one timeout, not two.
    const hangStart = Date.now();
    const hung = await request(gw.port, { path: '/hang', headers: auth });
    const waited = Date.now() - hangStart;
    t.equal(hung.status, 504);
    t.ok(waited < 1800, `504 after ${waited} ms, about upstreamTimeout`);
  });

  t.test('a kept-alive backend connection closed as it is reused: a GET goes again, a POST is not repeated', async (t) => {
    // Every backend connection answers its first request and closes on the second,
    // like a backend whose keep-alive timeout ran out just as the gateway reused it.
    const seen: string[] = [];
    const closing = createNetServer((socket) => {
      let requests = 0;
      socket.on('data', (chunk: Buffer) => {
        const line = chunk.toString('latin1').split('\r\n')[0] ?? '';
        if (!/^[A-Z]+ \//.test(line)) return; // a body chunk
        seen.push(line);
        if (++requests === 1) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        else socket.destroy();
      });
    });
    await new Promise<void>((r) => closing.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => closing.close(() => r())));
    const gw = await gateway(t, { upstream: `http://127.0.0.1:${(closing.address() as AddressInfo).port}` });
    const auth: [string, string] = ['alice', alicePw(0)];
    // Which pooled connection a request gets is the pool's choice: enough requests
    // that some land on a used one (every other one, as undici's pool picks).
    for (let i = 0; i < 6; i++) {
      t.equal((await request(gw.port, { path: `/get${i}`, auth })).status, 200, `GET ${i}: answered`);
    }
    const gets = seen.filter((l) => l.startsWith('GET '));
    t.ok(gets.length > 6, `some GETs went again on a new connection (${gets.length} sent for 6)`);
    for (let i = 0; i < 6; i++) t.ok(gets.filter((l) => l.startsWith(`GET /get${i} `)).length <= 2, `GET ${i}: at most one retry`);
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await request(gw.port, { method: 'POST', path: `/post${i}`, auth, body: 'x=1' })).status);
    t.ok(statuses.includes(502), `a POST on a used connection: 502 (${statuses.join(' ')})`);
    t.ok(statuses.every((s) => s === 200 || s === 502), 'answered or 502, nothing else');
    for (let i = 0; i < 6; i++) t.equal(seen.filter((l) => l.startsWith(`POST /post${i} `)).length, 1, `POST ${i}: sent once`);
  });

  t.test('a backend status Node cannot send (000): 502, and the gateway keeps serving', async (t) => {
    const broken = createNetServer((socket) => {
      socket.once('data', () => socket.end('HTTP/1.1 000 Nothing\r\nContent-Length: 0\r\n\r\n'));
    });
    await new Promise<void>((r) => broken.listen(0, '127.0.0.1', r));
    t.teardown(() => new Promise<void>((r) => broken.close(() => r())));
    const gw = await gateway(t, { upstream: `http://127.0.0.1:${(broken.address() as AddressInfo).port}` });
    t.equal((await request(gw.port, { auth: ['alice', alicePw(0)] })).status, 502);
    t.equal((await request(gw.port, { path: '/otpgate/health' })).status, 200, 'still serving');
  });

  t.test('a backend that drops the connection mid-answer: the client connection closes too', async (t) => {
    let slowClosed: 'finished' | 'cut' | undefined;
    const gw = await gateway(t, {
      backend: (req, res) => {
        if (req.url === '/drop') {
          res.writeHead(200, { 'Content-Length': '100000' });
          res.write('partial answer', () => setTimeout(() => req.socket.destroy(), 50));
          return;
        }
        if (req.url === '/drop-after-head') {
          res.writeHead(200, { 'Content-Length': '100000', 'X-Backend': 'yes', 'Set-Cookie': 'half=1' });
          res.flushHeaders();
          setTimeout(() => req.socket.destroy(), 50);
          return;
        }
        if (req.url === '/slow') {
          res.writeHead(200, { 'Content-Type': 'text/plain' });
          const tick = setInterval(() => res.write('tick\n'), 20);
          const stop = setTimeout(() => res.end(), 2000);
          res.once('close', () => {
            clearInterval(tick);
            clearTimeout(stop);
            slowClosed = res.writableFinished ? 'finished' : 'cut';
          });
          return;
        }
        if (req.url === '/drop-before-head') {
          req.socket.destroy();
          return;
        }
        res.end('ok');
      },
    });
    const auth = `Authorization: ${basic('alice', alicePw(0))}`;
    // keep-alive on purpose: only the gateway closing the connection ends it
    const r = await raw(gw.port, head('GET /drop HTTP/1.1', 'Host: h', auth), 3000);
    t.equal(r.closed, true, 'closed, not hanging');
    t.ok(r.body.length < 100_000, 'the client can tell the answer is incomplete');
    const after = await request(gw.port, { auth: ['alice', alicePw(0)] });
    t.equal(after.status, 200, 'the gateway keeps serving');
    t.equal(after.text, 'ok');

    const headOnly = await raw(gw.port, head('GET /drop-after-head HTTP/1.1', 'Host: h', auth, 'Connection: close'));
    t.equal(headOnly.closed, true, 'dropped after its head: answered, not hanging');
    t.ok(headOnly.status === 502 || headOnly.status === 0, `a 502 or a cut connection, never the backend's 200 (got ${headOnly.status})`);
    if (headOnly.status === 502) t.notMatch(headOnly.head, /x-backend|set-cookie/i, 'the 502 carries none of the backend\'s headers');
    const none = await request(gw.port, { path: '/drop-before-head', auth: ['alice', alicePw(0)] });
    t.equal(none.status, 502, 'dropped before answering: 502');
    t.equal((await request(gw.port, { auth: ['alice', alicePw(0)] })).status, 200, 'and the gateway still serves');

    // The other way round: a client that leaves mid-answer ends the upstream request, and is no backend failure.
    const failures = gw.logs.lines.filter((l) => l.event === 'upstream_error').length;
    await new Promise<void>((resolve, reject) => {
      const req = httpRequest({ host: '127.0.0.1', port: gw.port, path: '/slow', agent: false,
        headers: { Authorization: basic('alice', alicePw(0)) } }, (res) => {
        res.once('data', () => {
          req.destroy();
          resolve();
        });
      });
      req.on('error', () => undefined); // destroyed on purpose
      req.on('response', (res) => res.on('error', () => undefined));
      setTimeout(() => reject(new Error('no first chunk')), 2000).unref();
      req.end();
    });
    t.ok(await eventually(() => slowClosed !== undefined), 'the backend\'s answer was given up');
    t.equal(slowClosed, 'cut', 'before the backend finished it');
    t.equal(gw.logs.lines.filter((l) => l.event === 'upstream_error').length, failures, 'not logged as a backend failure');
    t.equal((await request(gw.port, { auth: ['alice', alicePw(0)] })).status, 200, 'the gateway still serves');
  });
});

t.test('healthPath', async (t) => {
  const gw = await gateway(t);
  const ok = await request(gw.port, { path: '/otpgate/health' });
  t.equal(ok.status, 200);
  t.match(ok.headers['content-type'], /^application\/json/);
  t.match(JSON.parse(ok.text), { status: 'ok', users: 3 });
  for (const path of ['/otpgate/healthz', '/otpgate/health/', '/otpgate/health/x', '/OTPGATE/HEALTH', '/otpgate']) {
    assertChallenge(t, await request(gw.port, { path }), `${path} is not the health endpoint`);
  }
  t.equal(gw.backend.seen.length, 0);
  t.equal((await request(gw.port, { auth: ['alice', alicePw(0)] })).status, 200);
  const afterLogin = await request(gw.port, { path: '/otpgate/health' });

  rmSync(gw.usersPath);
  await gw.running.reload();
  const gone = await request(gw.port, { path: '/otpgate/health' });
  t.equal(gone.status, 503, 'users file deleted: 503');
  t.match(JSON.parse(gone.text), { status: 'unavailable' });
  t.not((await request(gw.port, { auth: ['alice', alicePw(1)] })).status, 200, 'and nobody logs in');
  const secrets = registeredSecrets();
  t.ok(secrets.size >= 10, `the keys, PINs and logins of this file are registered (${secrets.size})`);
  t.same([findLeaks(afterLogin.text, secrets), findLeaks(gone.text, secrets)], [[], []], 'no secret in either health answer');
  t.notOk(gone.text.includes(gw.dir), 'nor where the users file is: the health answer needs no login');

  writeFile600(gw.usersPath, USERS);
  // The 1 s poll notices the file is back by itself.
  t.ok(await eventually(() => gw.running.users.usable, 2000), 'users file usable again');
  t.equal((await request(gw.port, { path: '/otpgate/health' })).status, 200, 'back to 200');
  t.equal(gw.backend.seen.length, 1, 'the backend saw the login, none of the rest');
});

t.test('brute force: throttled with 429 before any credential check', async (t) => {
  const clock = { now: 1_800_000_000 };
  const throttleConfig = { trustedProxies: ['127.0.0.1'], maxLinger: 0 };
  const from = (ip: string, login: string, password: string): Promise<Reply> =>
    request(gw.port, { auth: [login, password], headers: { 'X-Forwarded-For': ip } });
  const gw = await gateway(t, { clock: () => clock.now, config: { ...throttleConfig, maxFailures: 0 } });

  t.test('one IP guessing: five free failures, then growing waits; a wait says when to try again', async (t) => {
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await from('192.0.2.10', 'alice', `${PIN.alice}${wrongCode('alice')}`)).status);
    t.same(statuses, [401, 401, 401, 401, 401, 401], 'six checked and refused');
    const held = await from('192.0.2.10', 'alice', alicePw(0));
    t.equal(held.status, 429, 'the seventh waits, even with the right password');
    t.equal(held.headers['retry-after'], '1');
    t.match(held.headers['content-type'], /^text\/html/);
    t.equal(held.headers['cache-control'], 'no-store');
    t.equal(held.headers['www-authenticate'], undefined, 'no prompt: the page is shown');
    t.match(held.text, /Too many failed logins[\s\S]*1 seconds/);
    t.equal(counterOf(gw.usersPath, 'alice'), 0, 'the right code was not even checked: not consumed');
    t.equal(gw.backend.seen.length, 0, 'the backend saw nothing');
    clock.now += 1;
    t.equal((await from('192.0.2.10', 'alice', alicePw(0))).status, 200, 'after the wait the right password logs in');
    t.equal(counterOf(gw.usersPath, 'alice'), 1);
    const audit = auditEvents(gw.logs).find((e) => e.reason === 'throttled');
    t.match(audit, { user: 'alice', ip: '192.0.2.10', result: 'denied', retryAfter: 1 });
  });

  t.test('an unknown login gets exactly the same answers', async (t) => {
    const answers = async (login: string, ip: string): Promise<string[]> => {
      const out: string[] = [];
      for (let i = 0; i < 8; i++) {
        const r = await from(ip, login, `${PIN.wrong}123456`);
        out.push(`${r.status} ${r.headers['retry-after'] ?? '-'} ${r.text.length}`);
      }
      return out;
    };
    t.same(await answers('nobody-here', '192.0.2.20'), await answers('bob', '192.0.2.21'));
  });
});

t.test('lockout-DoS: failures from elsewhere do not keep the owner out from its usual IP', async (t) => {
  const clock = { now: 1_800_000_000 };
  const gw = await gateway(t, { clock: () => clock.now, config: { trustedProxies: ['127.0.0.1'], maxLinger: 0 } });
  const from = (ip: string, password: string): Promise<Reply> =>
    request(gw.port, { auth: ['alice', password], headers: { 'X-Forwarded-For': ip } });
  t.equal((await from('198.51.100.7', alicePw(0))).status, 200, 'the owner logs in from its office');
  // An attacker elsewhere: the lock (maxFailures 5) and the throttle hold it up.
  const attacker: number[] = [];
  for (let i = 0; i < 12; i++) {
    attacker.push((await from('192.0.2.66', `${PIN.wrong}${wrongCode('alice')}`)).status);
    clock.now += 1;
  }
  t.ok(attacker.every((s) => s === 401 || s === 429), `the attacker gets nowhere (${attacker.join(' ')})`);
  t.ok(attacker.includes(429), 'and is throttled');
  const elsewhere = await from('203.0.113.9', alicePw(1));
  t.ok(elsewhere.status === 401 || elsewhere.status === 429, `from a new IP, even the right code is refused (${elsewhere.status})`);
  t.equal(counterOf(gw.usersPath, 'alice'), 1, 'and not consumed');
  t.equal((await from('198.51.100.7', alicePw(1))).status, 200, 'from its usual IP the owner logs in at once');
  t.equal(counterOf(gw.usersPath, 'alice'), 2);
});

t.test('a lock from before a restart does not hold from the IP the file records as the owner\'s last login', async (t) => {
  const clock = { now: 1_800_000_000 };
  const gw = await gateway(t, { clock: () => clock.now, config: { trustedProxies: ['127.0.0.1'], maxLinger: 0 } });
  const from = (ip: string, password: string): Promise<Reply> =>
    request(gw.port, { auth: ['carol', password], headers: { 'X-Forwarded-For': ip } });
  // carol's line: 5 failures (locked) and, written by hand, a last login from 198.51.100.8.
  const lines = readFileSync(gw.usersPath, 'utf8').replace(/^HOTP carol .*$/m,
    `HOTP carol ${PIN.carol} ${KEYS.carol} 0 5 ${code('carol', 99)} 2026-01-01T00:00:00L 198.51.100.8`);
  writeFileSync(gw.usersPath, lines);
  await gw.running.users.reload();
  t.equal((await from('192.0.2.40', `${PIN.carol}${code('carol', 0)}`)).status, 401, 'locked from elsewhere');
  t.equal((await from('198.51.100.8', `${PIN.carol}${code('carol', 1)}`)).status, 200,
    'from its recorded IP, at once (no throttle state needed)');
});

t.test('the logout path is throttled like a login', async (t) => {
  const gw = await gateway(t, { config: { trustedProxies: ['127.0.0.1'] } });
  const statuses: number[] = [];
  for (let i = 0; i < 8; i++) {
    const r = await request(gw.port, { path: '/otpgate/logout', auth: ['alice', `${PIN.wrong}${wrongCode('alice')}`],
      headers: { 'X-Forwarded-For': '192.0.2.50' } });
    statuses.push(r.status);
  }
  t.ok(statuses.every((s) => s === 401), 'always the challenge');
  const audited = auditEvents(gw.logs).filter((e) => e.path === 'logout').length;
  t.ok(audited < 8, `only ${audited} of 8 were checked: the rest waited unchecked`);
});

t.test('an office behind one NAT address: logged-in agents keep working when its IP is throttled', async (t) => {
  const clock = { now: 1_800_000_000 };
  const gw = await gateway(t, { clock: () => clock.now, config: { trustedProxies: ['127.0.0.1'] } });
  const nat = { 'X-Forwarded-For': '203.0.113.5' };
  const bobPw = code('bob', 0);
  t.equal((await request(gw.port, { auth: ['bob', bobPw], headers: nat })).status, 200, 'bob logs in');
  for (let i = 0; i < 60; i++) await request(gw.port, { auth: [`typo${i}`, '000000'], headers: nat });
  const fresh = await request(gw.port, { auth: ['alice', alicePw(0)], headers: nat });
  t.equal(fresh.status, 429, 'after 60 failures from the address, a fresh login from it waits');
  const lingering = await request(gw.port, { auth: ['bob', bobPw], headers: nat });
  t.equal(lingering.status, 200, 'bob\'s session goes on');
  t.equal(gw.backend.seen.at(-1)?.headers['remote-user'], 'bob');
});

t.test('Expect: 100-continue: only a granted request is invited to send its body', async (t) => {
  const gw = await gateway(t, { backend: (_req, res, body) => res.end(`got ${body.length}`) });
  const ask = (auth: string): Promise<RawReply> => raw(gw.port, head('POST /upload HTTP/1.1', 'Host: h', `Authorization: ${auth}`,
    'Expect: 100-continue', 'Content-Length: 5', 'Connection: close') + 'hello');
  const refused = await ask(basic('alice', `${PIN.wrong}123456`));
  t.same(refused.statuses, [401], 'refused without a 100 first');
  const granted = await ask(basic('alice', alicePw(0)));
  t.same(granted.statuses, [100, 200], '100 Continue, then the answer');
  t.match(granted.body.toString(), /got 5$/);
  t.equal(gw.backend.seen[0]?.headers.expect, undefined, 'the backend is not asked to continue: the body is on its way');
});

t.test('security headers on every answer; cookie hardening per config', async (t) => {
  const gw = await gateway(t, {
    config: { cookies: { httpOnly: true, sameSite: 'Lax' } },
    backend: (req, res) => {
      if (req.url === '/own-policy') res.writeHead(200, { 'Referrer-Policy': 'no-referrer' }).end('ok');
      else res.writeHead(200, { 'Set-Cookie': ['a=1; path=/', 'b=2; HttpOnly; SameSite=Strict'] }).end('ok');
    },
  });
  const prompt = await request(gw.port);
  t.equal(prompt.headers['x-content-type-options'], 'nosniff');
  t.equal(prompt.headers['referrer-policy'], 'same-origin');
  t.match(prompt.headers['content-security-policy'], /default-src 'none'.*frame-ancestors 'none'/, 'the gateway\'s own pages: a strict CSP');
  t.equal(prompt.headers['strict-transport-security'], undefined, 'no HSTS without TLS');
  const bad = await raw(gw.port, head('GET http://evil/ HTTP/1.1', 'Host: h', 'Connection: close'));
  t.equal(bad.status, 400);
  t.match(bad.head, /\r\nX-Content-Type-Options: nosniff/i, 'also on a 400');
  const health = await request(gw.port, { path: '/otpgate/health' });
  t.equal(health.headers['x-content-type-options'], 'nosniff', 'and on the health answer');
  const ok = await request(gw.port, { auth: ['alice', alicePw(0)] });
  t.equal(ok.headers['x-content-type-options'], 'nosniff', 'proxied answers get them too');
  t.equal(ok.headers['content-security-policy'], undefined, 'but not the gateway\'s CSP: the helpdesk\'s pages need their own');
  t.same(ok.headers['set-cookie'], ['a=1; path=/; HttpOnly; SameSite=Lax', 'b=2; HttpOnly; SameSite=Strict']);
  const own = await request(gw.port, { path: '/own-policy', auth: ['alice', alicePw(0)] });
  t.equal(own.headers['referrer-policy'], 'no-referrer', 'the backend\'s own value wins');
});

t.test('signed identity assertion: the backend can verify who passed the gateway', async (t) => {
  const dir = tempDir(t);
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const keyFile = join(dir, 'assertion-key.pem');
  writeFileSync(keyFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  // The signing key, as its PEM line and as the JWK a library would print: no log may hold either.
  secret(String(privateKey.export({ type: 'pkcs8', format: 'pem' })).split('\n')[1] ?? '');
  secret(privateKey.export({ format: 'jwk' }).d ?? '');
  const clock = { now: 1_800_000_000 };
  const gw = await gateway(t, {
    clock: () => clock.now,
    config: { identityAssertion: { algorithm: 'EdDSA', keyFile, audience: 'znuny', ttlSeconds: 30 } },
  });
  const ok = await request(gw.port, {
    auth: ['alice', alicePw(0)], headers: { 'X-Otpgate-Assertion': 'forged', 'x_otpgate_assertion': 'forged' },
  });
  t.equal(ok.status, 200);
  const seen = gw.backend.seen[0] as Seen;
  const assertions = seen.rawHeaders.filter((_, i) => i % 2 === 0 && /^x.otpgate.assertion$/i.test(seen.rawHeaders[i] as string));
  t.equal(assertions.length, 1, 'one assertion: the client\'s are gone');
  const jwt = seen.headers['x-otpgate-assertion'] as string;
  const { payload } = await jwtVerify(jwt, publicKey, { audience: 'znuny', issuer: 'otpgate', currentDate: new Date(clock.now * 1000) });
  t.match(payload, { sub: 'alice', iat: clock.now, exp: clock.now + 30 });
  await t.rejects(jwtVerify(jwt, publicKey, { audience: 'znuny', currentDate: new Date((clock.now + 31) * 1000) }), errors.JWTExpired,
    'a captured assertion expires');
  t.notOk(gw.logs.lines.some((l) => JSON.stringify(l).includes(jwt)), 'never logged');
});

t.test('logoutPath', async (t) => {
  const gw = await gateway(t);
  const alice = ['alice', alicePw(0)] as [string, string];
  const bob = ['bob', code('bob', 0)] as [string, string];
  t.equal((await request(gw.port, { auth: alice })).status, 200);
  t.equal((await request(gw.port, { auth: bob })).status, 200);

  assertChallenge(t, await request(gw.port, { path: '/otpgate/logout', auth: alice }), 'logout with lingering credentials');
  assertChallenge(t, await request(gw.port, { auth: alice }), 'those credentials afterwards');

  assertChallenge(t, await request(gw.port, { path: '/otpgate/logout' }), 'logout without credentials');
  const attempts: Array<[string, string]> = [
    ['bob', `x${code('bob', 0)}`], // wrong PIN
    ['bob', wrongCode('bob')],
    ['bob', code('bob', 1)], // a fresh code: logout never consumes one
    ['nobody', code('bob', 0)],
    ['Bob', code('bob', 0)],
  ];
  for (const auth of attempts) {
    assertChallenge(t, await request(gw.port, { path: '/otpgate/logout?next=/', auth }), `logout as ${auth[0]} with wrong credentials`);
  }
  t.equal(counterOf(gw.usersPath, 'bob'), 1, 'no code consumed by a logout');
  t.equal((await request(gw.port, { auth: bob })).status, 200, 'bob\'s linger survived all of them');
  t.equal(gw.backend.seen.length, 3, 'the backend saw no logout request');
  t.ok(auditEvents(gw.logs).some((e) => e.user === 'alice' && e.reason === 'logout' && e.path === 'logout'), 'logout audited');
});

t.test('a hashed PIN end to end: wrong PIN counted, login, linger, logout; a plain PIN beside it', async (t) => {
  const pin = secret('h4shedPinEve');
  const stored = secret(await hashPin(pin)); // the default cost, as the admin CLI writes it
  const key = secretKey(randomBytes(20).toString('hex'));
  const gw = await startGateway(t, `HOTP eve ${stored} ${key} 0 0\n${USERS}`, { config: { realm: REALM } });
  const eve = (counter: number): [string, string] => ['eve', `${pin}${rfcHotp(key, counter)}`];
  assertChallenge(t, await request(gw.port, { auth: ['eve', `${PIN.wrong}${rfcHotp(key, 0)}`] }), 'wrong PIN');
  t.ok(await eventually(() => fileFields(gw.usersPath, 'eve')[5] === '1'), 'the failure is counted in the file');
  const ok = await request(gw.port, { auth: eve(0), path: '/desk' });
  t.equal(ok.status, 200, 'PIN + code: the backend answers');
  t.same(identityHeaders(gw.backend.seen[0] as Seen), [['Remote-User', 'eve']]);
  t.same(fileFields(gw.usersPath, 'eve').slice(2, 6), [stored, key, '1', '0'], 'code consumed, count reset, the hash kept');
  t.equal((await request(gw.port, { auth: eve(0) })).status, 200, 'the same PIN + code lingers');
  t.equal((await request(gw.port, { auth: ['alice', alicePw(0)] })).status, 200, 'a plain PIN in the same file');
  assertChallenge(t, await request(gw.port, { path: '/otpgate/logout', auth: eve(0) }), 'logout');
  assertChallenge(t, await request(gw.port, { auth: eve(0) }), 'those credentials after the logout');
  t.equal((await request(gw.port, { auth: eve(1) })).status, 200, 'the next code logs in');
  t.same(auditEvents(gw.logs).filter((e) => e.user === 'eve').map((e) => [e.reason, e.result]), [
    ['bad_pin', 'denied'], ['ok', 'granted'], ['linger', 'granted'], ['logout', 'denied'], ['bad_otp', 'denied'], ['ok', 'granted'],
  ]);
  t.equal(gw.backend.seen.length, 4, 'the backend saw the granted requests only');
  for (const s of [pin, stored]) t.notOk(gw.logs.text().includes(s), 'the log holds neither the PIN nor its hash');
});

t.test('40 guesses at a hashed PIN sent at once: the throttle stops most before they are checked', async (t) => {
  const pin = secret('h4shedPinZed');
  const stored = secret(await hashPin(pin));
  const key = secretKey(randomBytes(20).toString('hex'));
  // A clock that stands still: the waits earned cannot run out while the test looks at them.
  const now = Date.now() / 1000;
  const gw = await startGateway(t, `HOTP zed ${stored} ${key} 0 0\n${USERS}`, { config: { realm: REALM, maxFailures: 0 }, clock: () => now });
  const replies = await Promise.all(Array.from({ length: 40 }, (_, k) =>
    request(gw.port, { auth: ['zed', `${PIN.wrong}${String(k).padStart(2, '0')}${rfcHotp(key, 0).slice(2)}`] })));
  const checked = replies.filter((r) => r.status === 401).length;
  t.equal(checked + replies.filter((r) => r.status === 429).length, 40, 'each refused or throttled');
  // The pair's five free failures and the one being checked when the sixth arrives (no file lock: maxFailures 0).
  t.ok(checked <= 6, `${checked} of 40 checked`);
  t.equal((await request(gw.port, { auth: ['zed', `${pin}${rfcHotp(key, 0)}`] })).status, 429, 'the account waits now, right PIN or not');
});

t.test('routes: open paths are proxied as nobody, closed ones answered 403, the rest need a login; ambiguous paths 400', async (t) => {
  const gw = await startGateway(t, USERS, {
    config: {
      realm: REALM,
      routes: [
        { path: '/otrs/index.pl', auth: 'otp' },
        { path: '/otrs/customer.pl', auth: 'none' },
        { path: '/otrs-web/', auth: 'none' },
        { pattern: '^/otrs/nph-genericinterface\\.pl/', auth: 'none', keepAuthorization: true },
        { path: '/server-status', auth: 'deny' },
      ],
    },
  });
  const spoof = { 'Remote-User': 'admin', remote_user: 'admin', 'REMOTE.USER': 'admin' };
  const open = await request(gw.port, { path: '/otrs-web/skin/app.js', headers: spoof, auth: ['alice', 'not checked here'] });
  t.equal(open.status, 200, 'an open path needs no login');
  const seen = gw.backend.seen.at(-1) as Seen;
  t.same(identityHeaders(seen), [], 'no identity reaches the backend, whatever the client sent');
  t.equal(seen.headers.authorization, undefined, 'nor the client\'s Authorization');
  t.equal((await request(gw.port, { path: '/otrs/customer.pl?Action=Login' })).status, 200, 'the customer portal is open');
  const hook = await request(gw.port, { path: '/otrs/nph-genericinterface.pl/Webservice/T', headers: { Authorization: 'Bearer t0k3n' } });
  t.equal(hook.status, 200);
  t.equal(gw.backend.seen.at(-1)?.headers.authorization, 'Bearer t0k3n', 'keepAuthorization: the service checks it itself');
  const before = gw.backend.seen.length;
  t.equal((await request(gw.port, { path: '/server-status', auth: ['alice', alicePw(0)] })).status, 403, 'closed, even to a valid login');
  assertChallenge(t, await request(gw.port, { path: '/otrs/index.pl' }), 'the agent interface needs a login');
  assertChallenge(t, await request(gw.port, { path: '/otrs/customer.plx' }), 'a longer name is not the open file');
  assertChallenge(t, await request(gw.port, { path: '/elsewhere' }), 'no rule: a login');
  for (const path of ['/otrs-web/../otrs/index.pl', '/otrs-web/%2e%2e/otrs/index.pl', '/otrs-web/..%2Fserver-status', '//otrs-web/x',
    '/otrs-web/%c0%ae%c0%ae/otrs/index.pl', '/otrs-web/..;/otrs/index.pl']) {
    t.equal((await request(gw.port, { path })).status, 400, `${path}: refused`);
  }
  // The backend decodes the path before it picks a resource: so do the rules.
  t.equal((await request(gw.port, { path: '/%73erver-statu%73', auth: ['alice', alicePw(0)] })).status, 403, 'an encoded letter does not open a closed path');
  assertChallenge(t, await request(gw.port, { path: '/otrs/%69ndex.pl' }), 'nor skip the agent interface\'s login');
  t.equal((await request(gw.port, { path: '/otrs-web/%61pp.js' })).status, 200, 'an open path stays open encoded');
  t.match((await raw(gw.port, 'GET /server-status#x HTTP/1.1\r\nHost: a\r\n\r\n')).head, /^HTTP\/1\.1 400 /, 'a fragment in the target: 400');
  t.equal(gw.backend.seen.length, before + 1, 'none of those reached the backend, only the open one');
  const agent = await request(gw.port, { path: '/otrs/index.pl', auth: ['alice', alicePw(0)] });
  t.equal(agent.status, 200, 'with PIN + code the agent interface answers');
  t.same(identityHeaders(gw.backend.seen.at(-1) as Seen), [['Remote-User', 'alice']]);
});

t.test('the parallel first load: 20 requests with one brand-new code consume it once', async (t) => {
  const gw = await gateway(t);
  const auth = ['alice', alicePw(0)] as [string, string];
  const replies = await Promise.all(Array.from({ length: 20 }, (_, i) => request(gw.port, { path: `/img/${i}.png`, auth })));
  t.same(replies.map((r) => r.status), Array(20).fill(200), 'all 20 answered by the backend');
  t.equal(gw.backend.seen.length, 20);
  t.equal(counterOf(gw.usersPath, 'alice'), 1, 'exactly one code consumed');
  const events = auditEvents(gw.logs);
  t.equal(events.filter((e) => e.reason === 'ok').length, 1, 'one fresh login');
  t.equal(events.filter((e) => e.result === 'granted').length, 20, 'the rest rode its linger');
});

t.test('bad input: a clean 4xx, never a 5xx or a crash, and the backend sees nothing', async (t) => {
  const gw = await gateway(t);
  const good = basic('alice', alicePw(0));
  const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');
  // Log in first so that framing tricks below carry valid, lingering credentials.
  t.equal((await request(gw.port, { headers: { Authorization: good } })).status, 200);
  const seenBefore = gw.backend.seen.length;

  const get = (...lines: string[]): string => head('GET / HTTP/1.1', 'Host: h', ...lines, 'Connection: close');
  const withAuth = (value: string | Buffer): Buffer =>
    Buffer.concat([Buffer.from('GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nAuthorization: '), Buffer.from(value),
      Buffer.from('\r\n\r\n')]);
  // bob's code for counter 3: would log in (counter 0, look-ahead 4) if the encoding were accepted.
  const bobB64 = b64(`bob:${code('bob', 3)}`);
  const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const last = bobB64.length - 3; // "bob:" + 6 digits = 10 bytes: two characters and "=="
  const sloppy = bobB64.slice(0, last) + ALPHABET[ALPHABET.indexOf(bobB64[last] as string) | 1] + bobB64.slice(last + 1);
  t.ok(sloppy !== bobB64 && Buffer.from(sloppy, 'base64').equals(Buffer.from(bobB64, 'base64')), 'a second spelling of the same bytes');
  const credentialCases: Array<[string, string | Buffer]> = [
    ['bad base64', withAuth('Basic !!!not*base64')],
    ['base64 without its padding', withAuth(`Basic ${bobB64.replace(/=+$/, '')}`)],
    ['base64 with the unused bits set', withAuth(`Basic ${sloppy}`)],
    ['base64 with a space inside', withAuth(`Basic ${bobB64.slice(0, 4)} ${bobB64.slice(4)}`)],
    ['no colon', withAuth(`Basic ${b64('alicenocolon')}`)],
    ['empty user', withAuth(`Basic ${b64(`:${alicePw(0)}`)}`)],
    ['non-UTF-8 credentials', withAuth(`Basic ${b64(Buffer.from([0x61, 0xff, 0xfe, 0x3a, 0x31]))}`)],
    ['non-UTF-8 bytes in the header', withAuth(Buffer.from([0x42, 0x61, 0x73, 0x69, 0x63, 0x20, 0xff, 0xfe]))],
    ['NUL in the credentials', withAuth(`Basic ${b64(`al\0ice:${alicePw(0)}`)}`)],
    ['control byte in the credentials', withAuth(`Basic ${b64(`alice:${alicePw(0)}\u0007`)}`)],
    ['10 KB value', withAuth(`Basic ${'QUFB'.repeat(2560)}`)],
    ['two spaces and garbage', withAuth('Basic  ::garbage::')],
    ['another scheme', withAuth(`Bearer ${good.slice(6)}`)],
    ['scheme only', withAuth('Basic')],
  ];
  for (const [what, data] of credentialCases) {
    const r = await raw(gw.port, data);
    t.equal(r.status, 401, `${what}: 401`);
    t.match(r.head, /\r\nWWW-Authenticate: Basic realm=/i, `${what}: with the challenge`);
  }

  const rejected: Array<[string, string | Buffer, number[]]> = [
    ['NUL byte in the Authorization header', withAuth(Buffer.concat([Buffer.from('Basic '), Buffer.from([0]), Buffer.from(good.slice(6))])), [400]],
    ['control byte in the Authorization header', withAuth(Buffer.concat([Buffer.from(good), Buffer.from([1])])), [400]],
    ['two Content-Lengths', head('POST / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Content-Length: 5', 'Content-Length: 6', 'Connection: close') + 'hello!', [400]],
    ['Transfer-Encoding and Content-Length', head('POST / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Transfer-Encoding: chunked',
      'Content-Length: 5', 'Connection: close') + '5\r\nhello\r\n0\r\n\r\n', [400]],
    ['obs-fold header', head('GET / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'X-Folded: a', ' b', 'Connection: close'), [400]],
    ['Upgrade: h2c', get(`Authorization: ${good}`, 'Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA'), [400]],
    ['Upgrade: h2c with Connection: Upgrade', head('GET / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Connection: Upgrade, HTTP2-Settings',
      'Upgrade: h2c', 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA'), [400]],
    ['Upgrade: websocket', head('GET / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Connection: Upgrade', 'Upgrade: websocket',
      'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=='), [400]],
    ['absolute-form target', head('GET http://evil.example/ HTTP/1.1', 'Host: evil.example', `Authorization: ${good}`, 'Connection: close'), [400]],
    ['absolute-form target to the backend itself', head(`GET http://127.0.0.1:${gw.backend.port}/ HTTP/1.1`, `Host: 127.0.0.1:${gw.backend.port}`,
      `Authorization: ${good}`, 'Connection: close'), [400]],
    ['CONNECT', head('CONNECT evil.example:443 HTTP/1.1', 'Host: evil.example:443', `Authorization: ${good}`), [400]],
    ['OPTIONS *', head('OPTIONS * HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Connection: close'), [400]],
    ['scheme-relative target', head('GET //evil.example/ HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Connection: close'), [400]],
    ['duplicate Host', head('GET / HTTP/1.1', 'Host: h', 'Host: evil.example', `Authorization: ${good}`, 'Connection: close'), [400]],
    ['no Host', head('GET / HTTP/1.1', `Authorization: ${good}`, 'Connection: close'), [400]],
    ['header section over 16 KB', get(`Authorization: ${good}`,
      ...Array.from({ length: 20 }, (_, i) => `X-Pad-${i}: ${'a'.repeat(1000)}`)), [431, 400]],
    ['100 KB request-target', head(`GET /${'a'.repeat(100 * 1024)} HTTP/1.1`, 'Host: h', `Authorization: ${good}`, 'Connection: close'), [431, 414, 400]],
    ['not HTTP at all', 'HELLO\r\n\r\n', [400]],
    ['bad chunked body', head('POST / HTTP/1.1', 'Host: h', `Authorization: ${good}`, 'Transfer-Encoding: chunked', 'Connection: close') +
      'zz\r\nhello\r\n0\r\n\r\n', [400]],
  ];
  for (const [what, data, expected] of rejected) {
    const r = await raw(gw.port, data);
    t.ok(expected.includes(r.status), `${what}: ${expected.join(' or ')} (got ${r.status || 'nothing'})`);
    t.equal(r.closed, true, `${what}: connection closed`);
  }
  t.equal(gw.backend.seen.length, seenBefore, 'the backend saw none of them');
  t.notOk(gw.logs.lines.some((l) => (l.level as number) >= 50), 'nothing logged as an error');
  t.notOk(gw.logs.text().includes(good.slice(6)) || gw.logs.text().includes(PIN.alice), 'no credentials in the log');

  // RFC 7235: the scheme is case-insensitive.
  const lower = await raw(gw.port, withAuth(`basic ${good.slice(6)}`));
  t.equal(lower.status, 200, 'lowercase "basic" with good credentials logs in');
  const fresh = await request(gw.port, { auth: ['bob', code('bob', 0)] });
  t.equal(fresh.status, 200, 'a normal login still works');
  t.equal(gw.backend.seen.length, seenBefore + 2);
});

t.test('TLS: HTTPS to the client, X-Forwarded-Proto https to the backend', async (t) => {
  const certDir = tempDir(t);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-days', '1',
    '-keyout', join(certDir, 'key.pem'), '-out', join(certDir, 'cert.pem')], { stdio: 'ignore' });
  // A line from the middle of the private key: no log may quote the key file.
  secret(readFileSync(join(certDir, 'key.pem'), 'utf8').split('\n')[5] ?? '');
  const gw = await gateway(t, {
    config: { tls: { cert: join(certDir, 'cert.pem'), key: join(certDir, 'key.pem') } },
    backend: (req, res) => {
      if (req.url === '/redirect') res.writeHead(302, { Location: `http://127.0.0.1:${gw.backend.port}/x` }).end();
      else res.writeHead(200, { 'Set-Cookie': 'OTRSAgentInterface=s3ss10n; path=/otrs/' }).end('ok');
    },
  });
  const get = (path: string, auth?: string): Promise<Reply> => new Promise((resolve, reject) => {
    const req = httpsRequest({
      host: '127.0.0.1', port: gw.port, path, rejectUnauthorized: false, agent: false,
      headers: auth ? { Authorization: auth } : {},
    }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, headers: res.headers as IncomingHttpHeaders, body, text: body.toString('utf8') });
      });
    });
    req.on('error', reject);
    req.end();
  });
  const prompt = await get('/');
  assertChallenge(t, prompt, 'https without credentials');
  t.equal(prompt.headers['strict-transport-security'], 'max-age=31536000', 'HSTS over TLS, on the gateway\'s own pages');
  const auth = basic('alice', alicePw(0));
  const ok = await get('/', auth);
  t.equal(ok.status, 200);
  t.equal(ok.text, 'ok');
  t.equal(ok.headers['strict-transport-security'], 'max-age=31536000', 'and on the backend\'s answers');
  t.same(ok.headers['set-cookie'], ['OTRSAgentInterface=s3ss10n; path=/otrs/; Secure'], 'the helpdesk\'s cookie gets Secure over TLS');
  t.equal((gw.backend.seen[0] as Seen).headers['x-forwarded-proto'], 'https');
  const redirect = await get('/redirect', auth);
  t.equal(redirect.headers.location, `https://127.0.0.1:${gw.port}/x`, 'redirect rewritten to the https origin');
  const plain = await raw(gw.port, head('GET / HTTP/1.1', 'Host: h', `Authorization: ${auth}`, 'Connection: close'));
  t.not(plain.status, 200, 'plain HTTP on the TLS port does not reach the backend');
  t.equal(gw.backend.seen.length, 2);
  const overTls = await raw(gw.port, head('GET / HTTP/1.1', 'Host: h', 'Connection: close'), 2000, true);
  t.equal(overTls.status, 401, 'raw TLS client gets the challenge');
});

t.test('server timeouts follow the config', async (t) => {
  const gw = await gateway(t, { config: { headersTimeout: 7, requestTimeout: 11, keepAliveTimeout: 3 } });
  const { server } = gw.running.gateway;
  t.equal(server.headersTimeout, 7000);
  t.equal(server.requestTimeout, 11_000);
  t.equal(server.keepAliveTimeout, 3000);
  const defaults = await gateway(t);
  t.equal(defaults.running.gateway.server.headersTimeout, 20_000, 'default headersTimeout');
  t.equal(defaults.running.gateway.server.requestTimeout, 300_000, 'default requestTimeout');
  t.equal(defaults.running.gateway.server.keepAliveTimeout, 5000, 'default keepAliveTimeout');
});

t.test('maxHeaderBytes: a head over the configured size gets 431 and reaches nobody', async (t) => {
  const gw = await gateway(t, { config: { maxHeaderBytes: 4096 } });
  const auth = `Authorization: ${basic('alice', alicePw(0))}`;
  const big = await raw(gw.port, head(`GET /${'a'.repeat(5000)} HTTP/1.1`, 'Host: h', auth, 'Connection: close'));
  t.equal(big.status, 431, 'a 5 KB URL over a 4 KiB limit');
  const bigHeader = await raw(gw.port, head('GET / HTTP/1.1', 'Host: h', auth, `X-Pad: ${'b'.repeat(5000)}`, 'Connection: close'));
  t.equal(bigHeader.status, 431, 'a 5 KB header');
  t.equal(gw.backend.seen.length, 0);
  t.equal((await request(gw.port, { path: `/${'c'.repeat(3000)}`, auth: ['alice', alicePw(0)] })).status, 200, 'under the limit: through');
});
