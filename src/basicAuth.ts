// RFC 7617 Basic credentials. Returns undefined for anything malformed and
// never throws: client input decides between exactly two cases.
import { isUtf8 } from 'node:buffer';

export interface Credentials {
  readonly login: string;
  readonly password: string;
}

// Scheme is case-insensitive (RFC 7235 section 2.1); token68 must be canonical base64.
const SHAPE = /^Basic +([A-Za-z0-9+/]+={0,2}) *$/i;
const MAX_HEADER = 1024;
export const MAX_LOGIN = 128; // mod_authn_otp's MAX_USERNAME
export const MAX_PASSWORD = 256;
const CONTROL = /[\u0000-\u001f\u007f]/;

export function parseBasicAuth(header: string | undefined): Credentials | undefined {
  if (header === undefined || header.length > MAX_HEADER) return undefined;
  const m = SHAPE.exec(header);
  const encoded = m?.[1];
  if (encoded === undefined || encoded.length % 4 !== 0) return undefined;
  const bytes = Buffer.from(encoded, 'base64');
  // Node's decoder is lenient; insist the value is the canonical encoding of what it decodes to.
  if (bytes.toString('base64') !== encoded) return undefined;
  if (!isUtf8(bytes)) return undefined;
  const text = bytes.toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) return undefined;
  const login = text.slice(0, colon);
  const password = text.slice(colon + 1);
  if (login.length > MAX_LOGIN || password.length > MAX_PASSWORD) return undefined;
  if (CONTROL.test(text)) return undefined;
  return { login, password };
}
