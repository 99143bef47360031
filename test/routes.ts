// Path rules, pure: which rule a path gets, and which paths are refused as ambiguous.
import t from 'tap';
import { ambiguousPath, decodedPath, pathOf, routeFor, type Route } from '../src/routes.js';

// The Znuny example of the README.
const routes: Route[] = [
  { auth: 'otp', path: '/otrs/index.pl', keepAuthorization: false },
  { auth: 'none', path: '/otrs/customer.pl', keepAuthorization: false },
  { auth: 'none', path: '/otrs/public.pl', keepAuthorization: false },
  { auth: 'none', path: '/otrs-web/', keepAuthorization: false },
  { auth: 'none', pattern: /^\/otrs\/nph-genericinterface\.pl\/Webservice\/[A-Za-z]+$/u, keepAuthorization: true },
  { auth: 'deny', path: '/server-status', keepAuthorization: false },
];
const authOf = (path: string): string => routeFor(routes, path)?.auth ?? 'otp (default)';

t.test('first match wins; no match: an OTP login', async (t) => {
  t.equal(authOf('/otrs/index.pl'), 'otp');
  t.equal(authOf('/otrs/customer.pl'), 'none');
  t.equal(authOf('/otrs/customer.pl/extra'), 'none', 'a file rule covers its path info');
  t.equal(authOf('/otrs/customer.plx'), 'otp (default)', 'but not a longer name');
  t.equal(authOf('/otrs-web/js/app.js'), 'none', 'a directory rule covers everything under it');
  t.equal(authOf('/otrs-web'), 'otp (default)', 'not the name without its slash');
  t.equal(authOf('/otrs-webx/a'), 'otp (default)');
  t.equal(authOf('/otrs/nph-genericinterface.pl/Webservice/Tickets'), 'none');
  t.equal(authOf('/otrs/nph-genericinterface.pl/Webservice/Tickets/x'), 'otp (default)', 'the pattern is anchored as written');
  t.equal(authOf('/server-status'), 'deny');
  t.equal(authOf('/OTRS/customer.pl'), 'otp (default)', 'paths are case-sensitive, as the backend\'s');
  t.equal(authOf('/'), 'otp (default)');
  t.equal(routeFor([], '/otrs-web/x'), undefined, 'no rules: everything needs a login');
  t.equal(routeFor([{ auth: 'otp', path: '/otrs-web/x', keepAuthorization: false }, ...routes], '/otrs-web/x')?.auth, 'otp', 'order decides');
});

t.test('paths a backend may read differently than a prefix rule are ambiguous', async (t) => {
  for (const p of ['/otrs-web/../otrs/index.pl', '/otrs-web/..', '/./otrs/index.pl', '/otrs-web/%2e%2e/otrs/index.pl',
    '/otrs-web/%2E./x', '/otrs-web/..%2fotrs/index.pl', '/otrs-web/..%5Cotrs', '/otrs-web\\..\\x', '//otrs-web/x',
    '/otrs-web//x', '/otrs/customer.pl%00.js', '/..', '/otrs-web/..;/otrs/index.pl', '/otrs-web/.;x/y']) {
    t.ok(ambiguousPath(p), p);
  }
  for (const p of ['/', '/otrs/index.pl', '/otrs-web/js/app.min.js', '/a..b/c', '/x/.hidden', '/x/..y', '/%41bc', '/x.']) {
    t.notOk(ambiguousPath(p), p);
  }
});

t.test('pathOf: the path without the query', async (t) => {
  t.equal(pathOf('/otrs/index.pl?Action=Logout'), '/otrs/index.pl');
  t.equal(pathOf('/a'), '/a');
  t.equal(pathOf('/a?'), '/a');
  t.equal(pathOf('/a?b?c'), '/a');
});

t.test('rules see the path decoded, as the backend does: an encoded letter is no way around them', async (t) => {
  t.equal(decodedPath('/%73erver-status'), '/server-status');
  t.equal(authOf(decodedPath('/%73erver-statu%73') ?? ''), 'deny');
  t.equal(decodedPath('/otrs/%69ndex.pl'), '/otrs/index.pl');
  t.equal(decodedPath('/caf%C3%A9'), '/café');
  t.equal(decodedPath('/a%2573'), '/a%73', 'decoded once, as Apache does');
  t.equal(decodedPath('/plain/path'), '/plain/path');
  t.equal(decodedPath('/otrs-web/%c0%ae%c0%ae/x'), undefined, 'overlong UTF-8: refused');
  t.equal(decodedPath('/bad%zz'), undefined, 'a malformed escape: refused');
  t.equal(decodedPath('/bad%e9'), undefined, 'not UTF-8: refused');
});

