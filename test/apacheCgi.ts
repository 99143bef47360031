// The helpdesk as Znuny/OTRS runs it: Debian's real Apache with mod_cgi, a CGI
// script reading the login the way Znuny's HTTPBasicAuth module does
// (REMOTE_USER, else HTTP_REMOTE_USER), behind a real gateway.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { request, rfcHotp, secret, secretKey, type Reply } from './lib/harness.js';
import { startApache } from './lib/apache.js';
import { startGateway } from './lib/gateway.js';

const KEY = { alice: secretKey(randomBytes(20).toString('hex')), bob: secretKey(randomBytes(20).toString('hex')) };
const PIN = { alice: secret('ap4chePinA'), bob: secret('ap4chePinB') };
const USERS = `HOTP alice ${PIN.alice} ${KEY.alice} 0 0\nHOTP bob ${PIN.bob} ${KEY.bob} 0 0\n`;
const pw = (user: 'alice' | 'bob', counter: number): [string, string] => [user, `${PIN[user]}${rfcHotp(KEY[user], counter)}`];

/** What the CGI script printed: LOGIN and every user or credential variable, by name. */
function cgiSaw(r: Reply): Record<string, string> {
  const seen: Record<string, string> = {};
  for (const line of r.text.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) seen[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return seen;
}

// Every way a client could try to name itself: spellings Apache turns into
// HTTP_REMOTE_USER or that other CGI stacks read, and the Authorization header.
const SPOOF = { 'Remote-User': 'admin', remote_user: 'admin', 'REMOTE.USER': 'admin', 'Remote-user': 'admin', 'X-Remote-User': 'admin' };

t.test('through Apache and CGI: the login arrives as HTTP_REMOTE_USER, and nothing else names a user', async (t) => {
  const apache = await startApache(t);
  const gw = await startGateway(t, USERS, {
    upstream: apache.url, config: { routes: [{ path: '/otrs/customer.pl', auth: 'none' }] },
  });
  const agent = await request(gw.port, { path: '/otrs/index.pl?Action=AgentDashboard', auth: pw('alice', 0) });
  t.equal(agent.status, 200, apache.errorLog());
  t.same(cgiSaw(agent), { LOGIN: 'alice', HTTP_REMOTE_USER: 'alice' }, 'REMOTE_USER unset, HTTP_REMOTE_USER the login, no credentials');

  const spoofed = await request(gw.port, { path: '/otrs/index.pl', auth: pw('alice', 0), headers: SPOOF });
  t.same(cgiSaw(spoofed), { LOGIN: 'alice', HTTP_REMOTE_USER: 'alice', HTTP_X_REMOTE_USER: 'admin' },
    'no spelling of the header shadows the login (X-Remote-User is another header, not read by the module)');

  const customer = await request(gw.port, { path: '/otrs/customer.pl', headers: { ...SPOOF, Authorization: 'Basic YWRtaW46eA==' } });
  t.equal(customer.status, 200, 'the customer portal is open');
  t.same(cgiSaw(customer), { LOGIN: '', HTTP_X_REMOTE_USER: 'admin' }, 'an open path: no login at all, whatever the client sends');

  const none = await request(gw.port, { path: '/otrs/index.pl', headers: SPOOF });
  t.equal(none.status, 401, 'the agent interface without credentials: the prompt, and the CGI never runs');
});

t.test('linger and logout as the helpdesk needs them', async (t) => {
  const apache = await startApache(t);
  const gw = await startGateway(t, USERS, { upstream: apache.url, config: { logoutPath: '/otrs/index.pl/logout' } });
  const first = await request(gw.port, { path: '/otrs/index.pl', auth: pw('alice', 0) });
  t.equal(cgiSaw(first).LOGIN, 'alice');
  // A page load: the browser sends the same PIN+code with every request.
  const again = await Promise.all(Array.from({ length: 5 }, () => request(gw.port, { path: '/otrs/index.pl', auth: pw('alice', 0) })));
  t.same(again.map((r) => cgiSaw(r).LOGIN), Array(5).fill('alice'), 'the linger rides: each request reaches the helpdesk as alice');
  const bob = await request(gw.port, { path: '/otrs/index.pl', auth: pw('bob', 0) });
  t.equal(cgiSaw(bob).LOGIN, 'bob', 'another agent meanwhile is himself, not alice');
  // Znuny's LogoutURL pointed at the gateway's logout path.
  const out = await request(gw.port, { path: '/otrs/index.pl/logout', auth: pw('alice', 0) });
  t.equal(out.status, 401, 'logout: the challenge, so the browser forgets the password');
  t.equal((await request(gw.port, { path: '/otrs/index.pl', auth: pw('alice', 0) })).status, 401, 'the old credentials no longer reach the helpdesk');
  t.equal(cgiSaw(await request(gw.port, { path: '/otrs/index.pl', auth: pw('bob', 0) })).LOGIN, 'bob', 'bob is still logged in');
  t.equal(cgiSaw(await request(gw.port, { path: '/otrs/index.pl', auth: pw('alice', 1) })).LOGIN, 'alice', 'the next code logs alice in again');
});
