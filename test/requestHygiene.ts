// Request hygiene, end to end: the real gateway (start()) in front of a real
// recording backend, a real users file in a temp dir, raw bytes over sockets on
// 127.0.0.1 (Node's own client would normalise most of what is sent here).
// What it proves:
//  1. Bad input. Every request of a corpus (credentials, headers, request targets,
//     smuggling shapes, sizes, encodings, requests that never finish) gets the 4xx
//     it should, on a connection the gateway closes, and the backend sees nothing
//     of it, not even the start of a request. Nothing is logged as an error, and
//     afterwards a fresh login gets 200 and reaches the backend once, as its login.
//  2. A good login carrying a spoofed identity or forwarding header goes through,
//     and the backend sees only the gateway's identity and addresses.
//  3. A good login whose chunked body turns out malformed gets 400 and the backend
//     never gets a complete request (bodies are streamed, so it may see the start
//     of one, which is then aborted); if the backend's answer is already streaming,
//     it is cut, with no status line written into it.
//  4. A thousand slow clients (silent, or trickling a header byte every 100 ms) do
//     not keep a login waiting: while all of them are open a login gets 200 within
//     2 s; then headersTimeout closes every one of them with 408.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { basic, request, rfcHotp, secret, secretKey, type Seen } from './lib/harness.js';
import { identityHeaders, startGateway, type Gw } from './lib/gateway.js';
import { head, raw, type RawReply } from './lib/raw.js';

// alice: logged in before the corpus; bob: PIN "-" (the code alone); carol: locked;
// dave and frank: wrong logins (fewer than maxFailures each); erin: the login after it.
const LOGINS = ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'] as const;
type User = (typeof LOGINS)[number];
const KEY = Object.fromEntries(LOGINS.map((u) => [u, secretKey(randomBytes(20).toString('hex'))])) as Record<User, string>;
// PINs that cannot turn up in a log line by accident.
const PIN: Record<User, string> = {
  alice: secret('pinAl1ceQ'), bob: '', carol: secret('pinCar0lZ'), dave: secret('pinDav3eK'), erin: secret('pinEr1nW'),
  frank: secret('pinFr4nkJ'),
};
const USERS = LOGINS.map((u) => `HOTP ${u} ${PIN[u] || '-'} ${KEY[u]} 0${u === 'carol' ? ' 5' : ''}`).join('\n') + '\n';

const code = (user: User, counter: number): string => rfcHotp(KEY[user], counter);
/** The password for a user's code number `counter`: PIN immediately followed by the code. */
const pw = (user: User, counter: number): string => `${PIN[user]}${code(user, counter)}`;
const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

/** A six-digit code that is none of the token's next fifty codes. */
function wrongCode(user: User): string {
  const near = new Set(Array.from({ length: 50 }, (_, c) => code(user, c)));
  const wrong = ['123456', '654321', '111111', '999999'].find((c) => !near.has(c));
  if (wrong === undefined) throw new Error('no wrong code found');
  return wrong;
}

// alice logs in before the corpus: her credentials are good (lingering) in every
// request built by asAlice, get and post, so what refuses one is its shape, not her login.
const ALICE = basic('alice', pw('alice', 0));
const HOST = 'Host: gw.example';

/** A request line with Host, alice's credentials and Connection: close. */
const asAlice = (requestLine: string, ...lines: string[]): string =>
  head(requestLine, HOST, `Authorization: ${ALICE}`, ...lines, 'Connection: close');
/** GET / as alice with these header lines. */
const get = (...lines: string[]): string => asAlice('GET / HTTP/1.1', ...lines);
/** POST / as alice with these header lines, then `body` as it is. */
const post = (lines: string[], body: string): string => asAlice('POST / HTTP/1.1', ...lines) + body;
/** GET / as alice with these Host lines (or none) instead of the usual one. */
const withHost = (...hostLines: string[]): string => head('GET / HTTP/1.1', ...hostLines, `Authorization: ${ALICE}`, 'Connection: close');
/** GET / with Host, these header lines and Connection: close (no credentials but those among the lines). */
const plainGet = (...lines: string[]): string => head('GET / HTTP/1.1', HOST, ...lines, 'Connection: close');
/** GET / with this Authorization value, byte for byte. */
const withAuth = (value: string | Buffer): Buffer =>
  Buffer.concat([
    Buffer.from(`GET / HTTP/1.1\r\n${HOST}\r\nConnection: close\r\nAuthorization: `), Buffer.from(value), Buffer.from('\r\n\r\n'),
  ]);
/** GET / with Basic credentials for `login:password`, encoded from UTF-8. */
const login = (user: string, password: string): Buffer => withAuth(basic(user, password));

const CHUNKED = 'Transfer-Encoding: chunked';
const H2C_SETTINGS = 'HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA';
/** `count` header lines `X-Pad-N: v` (about 14 bytes each). */
const padding = (count: number): string[] => Array.from({ length: count }, (_, i) => `X-Pad-${i}: v`);

/** One request of the corpus: its name, the status(es) it must get, in order, and its bytes. */
type Case = readonly [name: string, answer: number | readonly number[], bytes: string | Buffer];

/** Built once the backend's port is known (one case aims at it). */
const corpus = (backendPort: number): Case[] => [
  // Credentials: a well-formed request that carries none, or unreadable or wrong ones.
  ['no Authorization header', 401, plainGet()],
  ['empty Authorization header', 401, plainGet('Authorization:')],
  ['bad base64', 401, withAuth('Basic !!!not*base64')],
  ['base64 without its padding', 401, withAuth(`Basic ${b64(`bob:${code('bob', 3)}`).replace(/=+$/, '')}`)],
  ['no colon', 401, withAuth(`Basic ${b64('alicenocolon')}`)],
  ['empty user', 401, withAuth(`Basic ${b64(`:${pw('alice', 0)}`)}`)],
  ['non-UTF-8 credentials', 401, withAuth(`Basic ${b64(Buffer.from([0x61, 0xff, 0xfe, 0x3a, 0x31]))}`)],
  ['non-UTF-8 bytes in the header value', 401, withAuth(Buffer.from([0x42, 0x61, 0x73, 0x69, 0x63, 0x20, 0xff, 0xfe]))],
  ['NUL in the decoded credentials', 401, withAuth(`Basic ${b64(`al\0ice:${pw('alice', 0)}`)}`)],
  ['control byte in the decoded credentials', 401, withAuth(`Basic ${b64(`alice:${pw('alice', 0)}\u0007`)}`)],
  ['NUL byte in the header value', 400, withAuth(Buffer.concat([Buffer.from('Basic '), Buffer.from([0]), Buffer.from(b64('a:b'))]))],
  ['control byte in the header value', 400, withAuth(Buffer.concat([Buffer.from(ALICE), Buffer.from([1])]))],
  ['10 KB value', 401, withAuth(`Basic ${'QUFB'.repeat(2560)}`)],
  ['lowercase scheme, wrong code', 401, withAuth(`basic ${b64(`frank:${PIN.frank}${wrongCode('frank')}`)}`)],
  ['uppercase scheme, unknown user', 401, withAuth(`BASIC ${b64(`nobody:${pw('alice', 0)}`)}`)],
  ['extra spaces after the scheme, wrong PIN', 401, withAuth(`Basic    ${b64(`frank:x${code('frank', 0)}`)}`)],
  ['tab after the scheme, good credentials', 401, withAuth(`Basic\t${b64(`alice:${pw('alice', 0)}`)}`)],
  ['scheme only', 401, withAuth('Basic')],
  ['Bearer scheme with good credentials', 401, withAuth(`Bearer ${ALICE.slice(6)}`)],
  ['Digest scheme', 401, withAuth('Digest username="alice", realm="Helpdesk", nonce="n", uri="/", response="00"')],
  ['NTLM scheme', 401, withAuth('NTLM TlRMTVNTUAABAAAAB4IIogAAAAAAAAAAAAAAAAAAAAAGAbEdAAAADw==')],
  ['unknown user', 401, login('nobody', pw('alice', 0))],
  ['login in another letter case', 401, login('Alice', pw('alice', 0))],
  ['wrong PIN', 401, login('dave', `x${code('dave', 5)}`)],
  ['wrong code', 401, login('dave', `${PIN.dave}${wrongCode('dave')}`)],
  ['PIN and code with a space between', 401, login('dave', `${PIN.dave} ${code('dave', 5)}`)],
  ['a code older than the last one used', 401, login('dave', pw('dave', 1))],
  ['a code replayed after its logout', 401, login('bob', pw('bob', 0))],
  ['locked user with a good code', 401, login('carol', pw('carol', 0))],
  ['two Authorization headers, the first good', 400, get(`Authorization: Basic ${b64('dave:x')}`)],

  // Headers.
  ['two Host headers', 400, get('Host: evil.example')],
  ['no Host (HTTP/1.1)', 400, withHost()],
  ['no Host (HTTP/1.0)', 400, head('GET / HTTP/1.0', `Authorization: ${ALICE}`)],
  ['empty Host', 400, withHost('Host:')],
  ['Host with userinfo', 400, withHost('Host: user@gw.example')],
  ['Host with a path', 400, withHost('Host: evil.example/x')],
  ['Host with a port that is no number', 400, withHost('Host: gw.example:http')],
  ['identity header in every spelling, no credentials', 401,
    plainGet('Remote-User: root', 'remote_user: root', 'REMOTE.USER: root', 'rEmOtE-uSeR: root', 'Remote-User: admin')],
  ['identity header with a wrong code', 401,
    plainGet(`Authorization: ${basic('frank', `${PIN.frank}${wrongCode('frank')}`)}`, 'Remote-User: frank')],
  ['identity header listed in Connection, no credentials', 401, plainGet('Remote-User: root', 'Connection: Remote-User')],
  ['identity header in a chunked trailer, no credentials', 401, head('POST / HTTP/1.1', HOST, CHUNKED, 'Trailer: Remote-User',
    'Connection: close') + '5\r\nhello\r\n0\r\nRemote-User: root\r\n\r\n'],
  ['X-Forwarded-For, Forwarded and X-Real-IP spoofs, no credentials', 401,
    plainGet('X-Forwarded-For: 127.0.0.1', 'Forwarded: for=127.0.0.1', 'X-Real-IP: 127.0.0.1', 'Remote-User: root')],
  ['one header value over 16 KiB', 431, get(`X-Big: ${'a'.repeat(17 * 1024)}`)],
  ['Authorization value over 16 KiB', 431, withAuth(`Basic ${'QUFB'.repeat(4400)}`)],
  ['header section over 16 KiB in many lines', 431, get(...Array.from({ length: 20 }, (_, i) => `X-Pad-${i}: ${'a'.repeat(1000)}`))],
  ['101 header fields', 431, get(...padding(98))],
  ['a second Host behind 2000 header fields', 431, get(...padding(2000), 'Host: evil.example')],
  ['Upgrade: h2c behind 2000 header fields', 431, get(...padding(2000), 'Upgrade: h2c')],
  ['space before the colon', 400, withHost('Host : gw.example')],
  ['header line without a colon', 400, get('Garbage')],
  ['empty header name', 400, get(': x')],
  ['header name with a slash', 400, get('X/Y: 1')],
  ['header name in UTF-8', 400, get('X-Ünïcode: 1')],
  ['NUL in a header value', 400, get('X-A: a\0b')],
  ['DEL in a header value', 400, get('X-A: a\x7fb')],
  ['bare CR in a header value', 400, get('X-A: a\rb')],
  ['bare LF line endings', 400, `GET / HTTP/1.1\n${HOST}\nAuthorization: ${ALICE}\nConnection: close\n\n`],
  ['obs-fold continuation line (space)', 400, get('X-Folded: a', ' b')],
  ['obs-fold continuation line (tab)', 400, get('X-Folded: a', '\tb')],

  // Request targets.
  ['absolute-form target', 400, asAlice('GET http://evil.example/ HTTP/1.1')],
  ['absolute-form target naming the backend', 400, asAlice(`GET http://127.0.0.1:${backendPort}/ HTTP/1.1`)],
  ['absolute-form target, uppercase scheme', 400, asAlice('GET HTTP://evil.example/ HTTP/1.1')],
  ['authority-form target on GET', 400, asAlice('GET evil.example:80 HTTP/1.1')],
  ['CONNECT', 400, asAlice('CONNECT evil.example:443 HTTP/1.1')],
  ['CONNECT with an origin-form target', 400, asAlice('CONNECT / HTTP/1.1')],
  ['asterisk-form (OPTIONS *)', 400, asAlice('OPTIONS * HTTP/1.1')],
  ['scheme-relative target //evil', 400, asAlice('GET //evil.example/ HTTP/1.1')],
  ['target without a leading slash', 400, asAlice('GET ?x=1 HTTP/1.1')],
  ['target starting with a backslash', 400, asAlice('GET \\evil.example HTTP/1.1')],
  ['raw NUL in the target', 400, asAlice('GET /a\0b HTTP/1.1')],
  ['raw tab in the target', 400, asAlice('GET /a\tb HTTP/1.1')],
  ['raw space in the target', 400, asAlice('GET /a b HTTP/1.1')],
  ['raw UTF-8 in the target', 400, Buffer.from(asAlice('GET /é HTTP/1.1'), 'utf8')],
  ['encoded dot segments, no credentials', 401, head('GET /%2e%2e/%2E%2E/etc/passwd HTTP/1.1', HOST, 'Connection: close')],
  ['encoded NUL, no credentials', 401, head('GET /a%00.html HTTP/1.1', HOST, 'Connection: close')],
  ['healthPath spelled with an escape, no credentials', 401, head('GET /otpgate/%68ealth HTTP/1.1', HOST, 'Connection: close')],
  ['healthPath behind a dot segment, no credentials', 401, head('GET /x/../otpgate/health HTTP/1.1', HOST, 'Connection: close')],

  // Smuggling shapes: framing two parsers could read differently, and protocol switches.
  ['Content-Length and Transfer-Encoding', 400, post([CHUNKED, 'Content-Length: 5'], '5\r\nhello\r\n0\r\n\r\n')],
  ['Content-Length and Transfer-Encoding on HTTP/1.0', 400,
    head('POST / HTTP/1.0', HOST, `Authorization: ${ALICE}`, 'Content-Length: 3', CHUNKED) + '5\r\nhello\r\n0\r\n\r\n'],
  ['two differing Content-Lengths', 400, post(['Content-Length: 5', 'Content-Length: 6'], 'hello!')],
  ['two equal Content-Lengths', 400, post(['Content-Length: 5', 'Content-Length: 5'], 'hello')],
  ['Content-Length as a list', 400, post(['Content-Length: 5, 5'], 'hello')],
  ['Content-Length with a sign', 400, post(['Content-Length: +5'], 'hello')],
  ['negative Content-Length', 400, post(['Content-Length: -1'], 'hello')],
  ['Content-Length beyond 64 bits', 400, post(['Content-Length: 99999999999999999999999'], 'hello')],
  ['Transfer-Encoding: chunked, identity', 400, post(['Transfer-Encoding: chunked, identity'], '5\r\nhello\r\n0\r\n\r\n')],
  ['Transfer-Encoding: identity', 400, post(['Transfer-Encoding: identity'], 'hello')],
  ['Transfer-Encoding: gzip, chunked', 400, post(['Transfer-Encoding: gzip, chunked'], '5\r\nhello\r\n0\r\n\r\n')],
  ['Transfer-Encoding: xchunked', 400, post(['Transfer-Encoding: xchunked'], '5\r\nhello\r\n0\r\n\r\n')],
  ['two Transfer-Encoding headers', 400, post([CHUNKED, CHUNKED], '5\r\nhello\r\n0\r\n\r\n')],
  ['Transfer-Encoding with a vertical tab', 400, post(['Transfer-Encoding: \x0bchunked'], '5\r\nhello\r\n0\r\n\r\n')],
  ['Upgrade: h2c', 400, get('Upgrade: h2c', H2C_SETTINGS)],
  ['Upgrade: h2c with Connection: Upgrade', 400,
    head('GET / HTTP/1.1', HOST, `Authorization: ${ALICE}`, 'Connection: Upgrade, HTTP2-Settings', 'Upgrade: h2c', H2C_SETTINGS)],
  ['Upgrade: websocket', 400, head('GET / HTTP/1.1', HOST, `Authorization: ${ALICE}`, 'Connection: Upgrade', 'Upgrade: websocket',
    'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==')],
  ['Upgrade: websocket on a POST with a body', 400, head('POST / HTTP/1.1', HOST, `Authorization: ${ALICE}`, 'Connection: Upgrade',
    'Upgrade: websocket', 'Content-Length: 5') + 'hello'],
  ['HTTP/2 connection preface', 400, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'],
  ['a request smuggled behind a refused one on the same connection', [401, 401],
    head('GET / HTTP/1.1', HOST) + head('GET /admin HTTP/1.1', HOST, 'Remote-User: root', 'Connection: close')],
  ['a request smuggled in a body the gateway does not read', 401,
    head('POST / HTTP/1.1', HOST, 'Content-Length: 5') + 'hello' + head('GET /admin HTTP/1.1', HOST, 'Remote-User: root')],

  // Request lines.
  ['HTTP/0.9 version with headers', 400, asAlice('GET / HTTP/0.9')],
  ['HTTP/2.0 version', 400, asAlice('GET / HTTP/2.0')],
  ['HTTP/1.2 version', 400, asAlice('GET / HTTP/1.2')],
  ['HTTP/9.9 version', 400, asAlice('GET / HTTP/9.9')],
  ['lowercase version', 400, asAlice('GET / http/1.1')],
  ['trailing space after the version', 400, asAlice('GET / HTTP/1.1 ')],
  ['lowercase method', 400, asAlice('get / HTTP/1.1')],
  ['unknown method', 400, asAlice('FOO / HTTP/1.1')],
  ['NUL in the method', 400, asAlice('G\0T / HTTP/1.1')],
  ['line break inside the request line', 400, `GET /\r\n HTTP/1.1\r\n${HOST}\r\n\r\n`],
  ['not HTTP at all', 400, 'HELLO\r\n\r\n'],
  ['a TLS ClientHello on the plain port', 400, Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03])],

  // Sizes and bodies.
  ['request target over 16 KiB', 431, asAlice(`GET /${'a'.repeat(17 * 1024)} HTTP/1.1`)],
  ['100 KiB request target', 431, asAlice(`GET /${'a'.repeat(100 * 1024)} HTTP/1.1`)],
  ['1 GB Content-Length, no credentials, no body', 401, head('POST / HTTP/1.1', HOST, 'Content-Length: 1000000000')],
  ['Expect: 100-continue without credentials: no invitation to upload', 401, head('POST / HTTP/1.1', HOST, 'Expect: 100-continue', 'Content-Length: 5')],
  ['unknown Expect', 417, post(['Expect: bogus', 'Content-Length: 5'], 'hello')],

  // Requests that never finish their head: 408 after headersTimeout (1 s here).
  ['a connection that sends nothing', 408, ''],
  ['a lone CRLF', 408, '\r\n'],
  ['an HTTP/0.9 simple request', 408, 'GET /\r\n'],
  ['a head without its blank line', 408, `GET / HTTP/1.1\r\n${HOST}\r\nAuthorization: ${ALICE}\r\n`],
];

t.test('bad input: the 4xx it should get, a closed connection, and nothing at the backend', async (t) => {
  const gw = await startGateway(t, USERS, { config: { headersTimeout: 1 } });
  let activity = 0; // request heads the backend parsed, and bytes it could not parse
  gw.backend.server.on('request', () => activity++);
  gw.backend.server.on('clientError', () => activity++);

  // Before the corpus: alice lingers (her credentials are in most requests), bob
  // used code 0 and logged out, dave used code 2 (code 1 is now behind his counter).
  t.equal((await request(gw.port, { auth: ['alice', pw('alice', 0)] })).status, 200, 'alice logged in');
  t.equal((await request(gw.port, { auth: ['bob', pw('bob', 0)] })).status, 200, 'bob logged in');
  t.equal((await request(gw.port, { path: '/otpgate/logout', auth: ['bob', pw('bob', 0)] })).status, 401, 'bob logged out');
  t.equal((await request(gw.port, { auth: ['dave', pw('dave', 2)] })).status, 200, 'dave logged in');
  const seenBefore = gw.backend.seen.length;
  const activityBefore = activity;

  /** One case's assertions, given its reply and what the backend saw while it was sent. */
  const check = ([name, answer]: Case, r: RawReply, backendSaw: number): Promise<unknown> => t.test(name, async (t) => {
    const expected = typeof answer === 'number' ? [answer] : answer;
    t.same(r.statuses, expected, `answered ${expected.join(' then ')}`);
    t.equal(r.closed, true, 'the gateway closed the connection');
    t.equal(backendSaw, 0, 'the backend saw nothing');
    if (expected.at(-1) === 401) {
      t.match(r.head + r.body.toString('latin1'), /\r\nWWW-Authenticate: Basic realm="Helpdesk"/i, 'with the challenge');
    }
  });
  const cases = corpus(gw.backend.port);
  t.ok(cases.length >= 60, `${cases.length} cases`);
  const waitsForTimeout = ([, answer]: Case): boolean => answer === 408;
  for (const c of cases.filter((c) => !waitsForTimeout(c))) {
    const before = activity;
    const r = await raw(gw.port, c[2], 5000);
    await check(c, r, activity - before);
  }
  // The cases that wait for headersTimeout go side by side (what the backend saw is counted for them together).
  const waiting = cases.filter(waitsForTimeout);
  const before = activity;
  const replies = await Promise.all(waiting.map((c) => raw(gw.port, c[2], 5000)));
  for (const [i, c] of waiting.entries()) await check(c, replies[i] as RawReply, activity - before);

  t.equal(gw.backend.seen.length, seenBefore, 'no request of the corpus reached the backend');
  t.same(gw.logs.lines.filter((l) => (l.level as number) >= 50), [], 'nothing logged as an error');
  t.notOk(gw.logs.text().includes(PIN.alice) || gw.logs.text().includes(ALICE.slice(6)), 'no credentials in the log');

  const fresh = await request(gw.port, { path: '/after', auth: ['erin', pw('erin', 0)] });
  t.equal(fresh.status, 200, 'afterwards a fresh login gets 200');
  t.equal(activity - activityBefore, 1, 'and the backend saw exactly that one request');
  const seen = gw.backend.seen.at(-1) as Seen;
  t.equal(seen.url, '/after');
  t.same(identityHeaders(seen), [['Remote-User', 'erin']], 'with the identity set by the gateway, once');
});

t.test('a good login with spoofed identity or forwarding headers: the backend sees only the gateway\'s', async (t) => {
  const trailers: string[][] = [];
  const gw = await startGateway(t, USERS, {
    backend: (req, res) => {
      trailers.push(req.rawTrailers);
      res.end('ok');
    },
  });
  const spoofs: Array<[name: string, bytes: string]> = [
    ['Remote-User', get('Remote-User: root')],
    ['remote_user', get('remote_user: root')],
    ['REMOTE.USER', get('REMOTE.USER: root')],
    ['every spelling, some twice', get('Remote-User: r1', 'remote-user: r2', 'REMOTE_USER: r3', 'remote.user: r4', 'rEmOtE-uSeR: r5',
      'Remote_User: r6', 'Remote-User: r7')],
    ['a value with a comma', get('Remote-User: alice, root')],
    ['a value in UTF-8', get('Remote-User: röot')],
    ['listed in Connection', get('Remote-User: root', 'Connection: Remote-User')],
    ['in a chunked trailer', post([CHUNKED, 'Trailer: Remote-User'], '5\r\nhello\r\n0\r\nRemote-User: root\r\nREMOTE_USER: root\r\n\r\n')],
    ['X-Forwarded-For, -Host, -Proto, Forwarded, X-Real-IP', get('X-Forwarded-For: 10.9.8.7', 'X-Forwarded-Host: evil.example',
      'X-Forwarded-Proto: https', 'Forwarded: for=10.9.8.7;host=evil.example', 'X-Real-IP: 10.9.8.7')],
    ['lowercase scheme and a spoofed identity', head('GET / HTTP/1.1', HOST, `Authorization: basic ${ALICE.slice(6)}`,
      'Remote-User: root', 'Connection: close')],
  ];
  for (const [name, bytes] of spoofs) {
    await t.test(name, async (t) => {
      const before = gw.backend.seen.length;
      const r = await raw(gw.port, bytes);
      t.equal(r.status, 200, 'forwarded');
      t.equal(gw.backend.seen.length, before + 1, 'the backend got one request');
      const seen = gw.backend.seen.at(-1) as Seen;
      t.same(identityHeaders(seen), [['Remote-User', 'alice']], 'the only identity is the gateway\'s');
      t.same(identityHeaders({ ...seen, rawHeaders: trailers.at(-1) ?? [] }), [], 'none in the trailers');
      const h = seen.headers;
      t.same([h['x-forwarded-for'], h['x-forwarded-host'], h['x-forwarded-proto'], h.forwarded, h['x-real-ip'], h.authorization],
        ['127.0.0.1', 'gw.example', 'http', undefined, undefined, undefined], 'addresses from the socket, no credentials');
    });
  }
});

t.test('a good login with a malformed chunked body: 400, and the backend never gets a complete request', async (t) => {
  const gw = await startGateway(t, USERS);
  const started: IncomingMessage[] = [];
  gw.backend.server.on('request', (req: IncomingMessage) => started.push(req));
  t.equal((await request(gw.port, { auth: ['alice', pw('alice', 0)] })).status, 200, 'alice logged in');
  const seenBefore = gw.backend.seen.length;
  started.length = 0;
  const chunked = (body: string): string => post([CHUNKED], body);
  const bodies: Array<[name: string, bytes: string]> = [
    ['chunk size not hex', chunked('zz\r\nhello\r\n0\r\n\r\n')],
    ['negative chunk size', chunked('-1\r\nhello\r\n0\r\n\r\n')],
    ['chunk size beyond 64 bits', chunked('fffffffffffffffff\r\nhello\r\n0\r\n\r\n')],
    ['chunk size with 0x', chunked('0x5\r\nhello\r\n0\r\n\r\n')],
    ['space after the chunk size', chunked('5 \r\nhello\r\n0\r\n\r\n')],
    ['chunk size line ending in a bare LF', chunked('5\nhello\r\n0\r\n\r\n')],
    ['chunk longer than its size', chunked('5\r\nhelloXX0\r\n\r\n')],
    ['control byte in a chunk extension', chunked('5;\x01\r\nhello\r\n0\r\n\r\n')],
    ['obs-fold in the trailer', chunked('5\r\nhello\r\n0\r\nX-A: a\r\n b\r\n\r\n')],
  ];
  for (const [name, bytes] of bodies) {
    await t.test(name, async (t) => {
      const r = await raw(gw.port, bytes);
      t.same(r.statuses, [400], 'answered 400');
      t.equal(r.closed, true, 'the gateway closed the connection');
      // What the backend started (if anything) ends, aborted: await its close, bounded.
      const ended = await Promise.all(started.splice(0).map((req) => new Promise<boolean>((resolve) => {
        if (req.closed) {
          resolve(req.complete);
          return;
        }
        const timer = setTimeout(() => resolve(true), 3000);
        req.once('close', () => {
          clearTimeout(timer);
          resolve(req.complete);
        });
      })));
      t.same(ended.filter(Boolean), [], 'no request the backend started was completed (or left open)');
    });
  }
  t.equal(gw.backend.seen.length, seenBefore, 'the backend read no body to its end');
  t.equal((await request(gw.port, { auth: ['alice', pw('alice', 0)] })).status, 200, 'alice is still served');
});

t.test('a malformed chunk while the backend\'s answer streams: the answer is cut, no status line lands inside it', async (t) => {
  // This backend answers at once, before the body (the recording one reads the body first).
  const backend = createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.write('part 1\n');
    req.resume();
    req.once('close', () => res.destroy());
  });
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    backend.closeAllConnections();
    backend.close(() => resolve());
  }));
  const gw = await startGateway(t, USERS, { upstream: `http://127.0.0.1:${(backend.address() as AddressInfo).port}` });
  const reply = await new Promise<string>((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: gw.port });
    const deadline = setTimeout(() => socket.destroy(), 5000);
    let got = '';
    socket.on('data', (c: Buffer) => {
      const first = !got.includes('part 1');
      got += c.toString('latin1');
      if (first && got.includes('part 1')) socket.write('zz\r\nnot a chunk\r\n');
    });
    socket.on('error', () => undefined); // 'close' follows
    socket.once('close', () => {
      clearTimeout(deadline);
      resolve(got);
    });
    socket.write(post([CHUNKED], '5\r\nhello\r\n'));
  });
  t.match(reply, /^HTTP\/1\.1 200 [^]*part 1/, 'the backend\'s answer had started');
  t.same(reply.match(/HTTP\/1\.\d \d{3}/g), ['HTTP/1.1 200'], 'no second status line inside it');
  t.notMatch(reply, /\r\n0\r\n\r\n$/, 'cut before its last chunk: the client can tell it is incomplete');
});

t.test('a thousand slow clients do not keep a login waiting', async (t) => {
  const IDLE = 500; // connect and send nothing
  const TRICKLING = 500; // send a request head one byte every 100 ms
  const HEADERS_TIMEOUT = 8; // seconds: ample to open them all and log in, short enough to see them closed
  const gw: Gw = await startGateway(t, USERS, { config: { headersTimeout: HEADERS_TIMEOUT } });

  interface Slow {
    socket: Socket;
    received: Buffer[];
    closed: Promise<void>;
    isClosed: boolean;
  }
  const slow: Slow[] = [];
  let trickle: NodeJS.Timeout | undefined;
  t.teardown(() => {
    clearInterval(trickle);
    for (const s of slow) s.socket.destroy();
  });
  const open = (): Promise<Slow> => new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port: gw.port });
    const entry: Slow = { socket, received: [], isClosed: false, closed: Promise.resolve() };
    entry.closed = new Promise((done) => socket.once('close', () => {
      entry.isClosed = true;
      done();
    }));
    socket.on('data', (c: Buffer) => entry.received.push(c));
    socket.once('error', reject); // before connect: the test cannot go on; after: 'close' follows
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.on('error', () => undefined);
      resolve(entry);
    });
  });
  // In batches of 250: a thousand SYNs at once could overflow the listen backlog (511).
  const opened = performance.now();
  for (let i = 0; i < IDLE + TRICKLING; i += 250) slow.push(...await Promise.all(Array.from({ length: 250 }, open)));
  const trickling = slow.slice(IDLE);
  for (const s of trickling) s.socket.write(`GET / HTTP/1.1\r\n${HOST}\r\nX-Slow: `);
  let ticks = 0;
  const tickWaiters: Array<() => void> = [];
  trickle = setInterval(() => {
    for (const s of trickling) if (!s.isClosed) s.socket.write('a');
    ticks++;
    tickWaiters.splice(0).forEach((w) => w());
  }, 100);
  while (ticks < 3) await new Promise<void>((r) => tickWaiters.push(r));
  t.comment(`${slow.length} slow connections open after ${Math.round(performance.now() - opened)} ms`);
  t.equal(slow.filter((s) => !s.isClosed).length, IDLE + TRICKLING, 'all slow connections are open');

  const started = performance.now();
  const fresh = await request(gw.port, { auth: ['erin', pw('erin', 0)] });
  const lingering = await Promise.all(Array.from({ length: 10 }, () => request(gw.port, { auth: ['erin', pw('erin', 0)] })));
  const elapsed = performance.now() - started;
  t.equal(fresh.status, 200, 'a fresh login gets 200');
  t.same(lingering.map((r) => r.status), Array(10).fill(200), 'ten lingering requests get 200');
  t.ok(elapsed < 2000, `all within 2 s (${Math.round(elapsed)} ms)`);
  t.equal(slow.filter((s) => !s.isClosed).length, IDLE + TRICKLING, 'while every slow connection is still open');
  t.equal(slow.filter((s) => s.received.length > 0).length, 0, 'and none of them has had an answer yet');
  t.comment(`the trickling ones have sent ${ticks} bytes each so far`);

  // headersTimeout ends them all, trickling or not (bounded: the teardown destroys what is left).
  let bound: NodeJS.Timeout | undefined;
  const deadline = new Promise((resolve) => { bound = setTimeout(resolve, (HEADERS_TIMEOUT + 10) * 1000); });
  await Promise.race([Promise.all(slow.map((s) => s.closed)), deadline]);
  clearTimeout(bound);
  clearInterval(trickle);
  t.equal(slow.filter((s) => s.isClosed).length, IDLE + TRICKLING, 'then the gateway closed every slow connection');
  const answers = slow.map((s) => /^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(s.received).toString('latin1'))?.[1] ?? 'none');
  t.same([...new Set(answers)], ['408'], 'each with 408');
  t.equal(gw.backend.seen.length, 11, 'the backend saw only the logins');
});
