// Path rules: which parts of the helpdesk need an OTP login (`otp`), stay open
// (`none`: a customer portal, public pages, static files, web services with
// their own auth) or are closed to everyone (`deny`). The first rule that
// matches decides; without one, `otp`. Pure: a path in, a rule out.

export type RouteAuth = 'otp' | 'none' | 'deny';

export interface Route {
  readonly auth: RouteAuth;
  /** `/dir/` matches everything under it; `/file` matches itself and `/file/...` (not `/filex`) */
  readonly path?: string;
  readonly pattern?: RegExp;
  /** `none` only: pass the client's Authorization on (a web service that checks it itself) */
  readonly keepAuthorization: boolean;
}

/** The path of a request target (origin-form), without its query. */
export function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

/**
 * A path the backend may resolve to another one than a prefix rule sees: dot
 * segments (`/otrs-web/../otrs/index.pl`), an encoded dot, slash or backslash,
 * a backslash, an empty segment, an encoded NUL. Browsers never send these (they
 * resolve dot segments themselves); with rules in place, they are refused.
 */
export function ambiguousPath(path: string): boolean {
  // `..;` too: Tomcat and Jetty read a dot segment with path parameters as a dot segment.
  return /(?:^|\/)\.{1,2}(?:[/;]|$)|%2e|%2f|%5c|%00|\\|\/\//i.test(path);
}

/**
 * The path as the backend reads it: percent-decoded once, as Apache does before
 * it maps a path to a resource (`/%73erver-status` is `/server-status` there, and
 * a rule must see it so). Undefined for an escape that is malformed or not UTF-8
 * (an overlong `%c0%ae` among them): such a path is refused.
 */
export function decodedPath(path: string): string | undefined {
  if (!path.includes('%')) return path;
  try {
    return decodeURIComponent(path);
  } catch {
    return undefined;
  }
}

function matches(route: Route, path: string): boolean {
  if (route.pattern !== undefined) return route.pattern.test(path);
  const prefix = route.path ?? '';
  if (prefix.endsWith('/')) return path.startsWith(prefix);
  return path === prefix || path.startsWith(`${prefix}/`);
}

/** The rule for `path` (decoded, and known not to be ambiguous); undefined: none matches (an OTP login is needed). */
export function routeFor(routes: readonly Route[], path: string): Route | undefined {
  for (const route of routes) if (matches(route, path)) return route;
  return undefined;
}
