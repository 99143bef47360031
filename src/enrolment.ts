// otpauth:// URIs (the Key URI format phone apps scan) for a token line.
import { generateHOTP, generateTOTP } from '@otplib/uri';
import { ScureBase32Plugin } from '@otplib/plugin-base32-scure';
import type { TokenType } from './otp.js';

const base32 = new ScureBase32Plugin();

export interface Enrolment {
  readonly type: TokenType;
  readonly login: string;
  readonly key: Uint8Array;
  /** event tokens: the next counter */
  readonly counter?: number;
}

export function otpauthUri(token: Enrolment, issuer: string): string {
  if (token.type.algorithm !== 'HOTP') throw new Error('only HOTP and TOTP tokens can be enrolled with an otpauth:// URI');
  const common = { issuer, label: token.login, secret: base32.encode(token.key, { padding: false }), digits: token.type.digits };
  return token.type.stepSeconds > 0
    ? generateTOTP({ ...common, period: token.type.stepSeconds })
    : generateHOTP({ ...common, counter: token.counter ?? 0 });
}
