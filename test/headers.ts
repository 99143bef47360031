import t from 'tap';
import { BlockList } from 'node:net';
import {
  clientAddress, downstreamHeaders, hardenCookie, isTrusted, normalizedHeaderName, plainAddress, rewriteLocation, upstreamHeaders,
} from '../src/headers.js';

const ctx = {
  identity: normalizedHeaderName('Remote-User'), identityHeader: 'Remote-User', login: 'alice', peer: '10.0.0.1',
  peerTrusted: false, proto: 'http' as const,
};

t.test('normalised names: what CGI, PHP and PSGI map to one variable', async (t) => {
  // Any token punctuation too: Apache 2.2's CGI turned every one of them into _.
  for (const name of ['Remote-User', 'remote-user', 'REMOTE_USER', 'remote.user', 'Remote_User', 'rEmOtE-uSeR', 'remote-_user',
    'Remote~User', 'Remote!User', 'Remote*User', "Remote'User", 'Remote|User', 'Remote^User', 'Remote+User', 'Remote`User',
    'Remote#User', 'Remote$User', 'Remote%User', 'Remote&User']) {
    t.equal(normalizedHeaderName(name), 'remoteuser', name);
  }
  t.equal(normalizedHeaderName('X-Remote-User'), 'xremoteuser');
});

t.test('upstreamHeaders strips every spelling of the identity, credentials and hop-by-hop headers', async (t) => {
  const out = upstreamHeaders({
    host: 'helpdesk.example', authorization: 'Basic xyz', 'remote-user': 'mallory', remote_user: 'mallory',
    'remote.user': 'mallory', 'x-remote-user': 'kept', connection: 'keep-alive, X-Secret', 'x-secret': 's',
    'keep-alive': 'timeout=5', te: 'trailers', trailer: 'x', upgrade: 'h2c', 'proxy-authorization': 'Basic z',
    'proxy-connection': 'x', 'transfer-encoding': 'chunked', expect: '100-continue', accept: 'text/html',
    'x-forwarded-for': '6.6.6.6', 'x-forwarded-host': 'evil', 'x-forwarded-proto': 'https', forwarded: 'for=6.6.6.6',
    'x-real-ip': '6.6.6.6', x_forwarded_for: '6.6.6.6', cookie: 'a=b',
  }, ctx);
  t.same(out, {
    host: 'helpdesk.example', 'x-remote-user': 'kept', accept: 'text/html', cookie: 'a=b',
    'Remote-User': 'alice', 'x-forwarded-for': '10.0.0.1', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'helpdesk.example',
  });
});

t.test('a trusted proxy: X-Forwarded-For appended to, its proto and host believed', async (t) => {
  const out = upstreamHeaders({ host: 'h', 'x-forwarded-for': '192.0.2.7', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public' },
    { ...ctx, peerTrusted: true });
  t.match(out, { 'x-forwarded-for': '192.0.2.7, 10.0.0.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'public' });
});

t.test('a non-ASCII login reaches the backend as UTF-8 bytes', async (t) => {
  const out = upstreamHeaders({ host: 'h' }, { ...ctx, login: 'jürgen' });
  t.same(Buffer.from(out['Remote-User'] as string, 'latin1'), Buffer.from('jürgen', 'utf8'));
  const none = upstreamHeaders({ host: 'h', 'remote-user': 'x' }, { ...ctx, login: undefined });
  t.notOk('Remote-User' in none || 'remote-user' in none, 'no identity on routes without one');
});

t.test('client address', async (t) => {
  const list = new BlockList();
  list.addSubnet('10.0.0.0', 8, 'ipv4');
  t.ok(isTrusted(list, '10.1.2.3'));
  t.notOk(isTrusted(list, '192.0.2.1'));
  t.notOk(isTrusted(list, 'garbage'));
  t.equal(clientAddress('192.0.2.1', false, '1.2.3.4', list), '192.0.2.1', 'untrusted peer: XFF ignored');
  t.equal(clientAddress('10.0.0.1', true, '1.2.3.4, 10.0.0.9', list), '1.2.3.4', 'right-most untrusted hop');
  t.equal(clientAddress('10.0.0.1', true, '6.6.6.6, 1.2.3.4', list), '1.2.3.4', 'a forged left part is ignored');
  t.equal(clientAddress('10.0.0.1', true, 'bogus, 1.2.3.4', list), '1.2.3.4');
  t.equal(clientAddress('10.0.0.1', true, '1.2.3.4, bogus', list), '10.0.0.1', 'garbage in the chain: only the peer');
  t.equal(clientAddress('10.0.0.1', true, undefined, list), '10.0.0.1');
  t.equal(plainAddress('::ffff:127.0.0.1'), '127.0.0.1');
  t.equal(plainAddress('::1'), '::1');
});

t.test('Location rewrite: only the backend\'s own origin', async (t) => {
  const up = new URL('http://127.0.0.1:8081');
  t.equal(rewriteLocation('http://127.0.0.1:8081/otrs/index.pl?x=1#y', up, 'https://helpdesk.example'),
    'https://helpdesk.example/otrs/index.pl?x=1#y');
  t.equal(rewriteLocation('/relative', up, 'https://h'), '/relative');
  t.equal(rewriteLocation('https://elsewhere.example/', up, 'https://h'), 'https://elsewhere.example/');
  t.equal(rewriteLocation('http://127.0.0.1:9999/', up, 'https://h'), 'http://127.0.0.1:9999/');
});

t.test('hardenCookie adds what the policy asks for and the cookie lacks, keeps what it has', async (t) => {
  const all = { secure: true, httpOnly: true, sameSite: 'Lax' } as const;
  t.equal(hardenCookie('OTRSAgentInterface=abc; path=/otrs/', all), 'OTRSAgentInterface=abc; path=/otrs/; Secure; HttpOnly; SameSite=Lax');
  t.equal(hardenCookie('s=1; secure; HTTPONLY; samesite=strict', all), 's=1; secure; HTTPONLY; samesite=strict', 'no duplicates, its own SameSite kept');
  t.equal(hardenCookie('s=1', { secure: false, httpOnly: false }), 's=1');
  t.equal(hardenCookie('s=1', { secure: false, httpOnly: false, sameSite: 'None' }), 's=1; SameSite=None; Secure',
    'SameSite=None needs Secure, or browsers drop it');
  t.equal(hardenCookie('a=secure', { secure: true, httpOnly: false }), 'a=secure; Secure', 'a value is not an attribute');
  const down = downstreamHeaders({ 'set-cookie': ['a=1', 'b=2; Secure'] }, new URL('http://backend'), 'https://gw', all);
  t.same(down['set-cookie'], ['a=1; Secure; HttpOnly; SameSite=Lax', 'b=2; Secure; HttpOnly; SameSite=Lax']);
});

t.test('the assertion header, in any spelling the client sends, never reaches the backend', async (t) => {
  const out = upstreamHeaders({ host: 'h', 'x-otpgate-assertion': 'forged', x_otpgate_assertion: 'forged', 'x.otpgate.assertion': 'forged' },
    { ...ctx, assertion: 'xotpgateassertion' });
  t.same(Object.keys(out).filter((k) => k.toLowerCase().includes('assertion')), []);
});
