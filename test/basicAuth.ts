import t from 'tap';
import { parseBasicAuth } from '../src/basicAuth.js';

const b64 = (s: string | Buffer): string => Buffer.from(s).toString('base64');

t.test('well-formed credentials', async (t) => {
  t.same(parseBasicAuth(`Basic ${b64('alice:1234567890')}`), { login: 'alice', password: '1234567890' });
  t.same(parseBasicAuth(`Basic ${b64('alice:')}`), { login: 'alice', password: '' }, 'empty password (logout)');
  t.same(parseBasicAuth(`Basic ${b64('bob:pa:ss')}`), { login: 'bob', password: 'pa:ss' }, 'colon in the password');
  t.same(parseBasicAuth(`Basic ${b64('Jürgen:12ä456')}`), { login: 'Jürgen', password: '12ä456' }, 'UTF-8');
  t.same(parseBasicAuth(`basic ${b64('a:b')}`), { login: 'a', password: 'b' }, 'scheme is case-insensitive (RFC 7235)');
  t.same(parseBasicAuth(`Basic   ${b64('a:b')}`), { login: 'a', password: 'b' }, 'several spaces');
});

t.test('anything malformed is undefined, never a throw', async (t) => {
  const bad: [string | undefined, string][] = [
    [undefined, 'no header'],
    ['', 'empty'],
    ['Basic', 'no credentials'],
    ['Basic ', 'blank credentials'],
    [`Bearer ${b64('a:b')}`, 'other scheme'],
    [`Basic ${b64('a:b')}x`, 'not a multiple of 4'],
    ['Basic YTpi=', 'bad padding'],
    ['Basic YT!i', 'bad character'],
    ['Basic YTp-', 'base64url is not base64'],
    [`Basic ${b64('nocolon')}`, 'no colon'],
    [`Basic ${b64(':secret')}`, 'empty user'],
    [`Basic ${b64(Buffer.from([0x61, 0x3a, 0xff, 0xfe]))}`, 'not UTF-8'],
    [`Basic ${b64('a\u0000b:c')}`, 'NUL in login'],
    [`Basic ${b64('a:b\u0000c')}`, 'NUL in password'],
    [`Basic ${b64('a:b\nc')}`, 'newline'],
    [`Basic ${b64('a:b\u007f')}`, 'DEL'],
    [`Basic ${b64(`a:${'x'.repeat(10_000)}`)}`, '10 KB'],
    [`Basic ${b64(`${'u'.repeat(129)}:x`)}`, 'login too long'],
    [`Basic ${b64('a:b')} ${b64('c:d')}`, 'two tokens'],
    [`Basic\t${b64('a:b')}`, 'tab instead of space'],
    [` Basic ${b64('a:b')}`, 'leading space'],
  ];
  for (const [header, why] of bad) {
    t.equal(parseBasicAuth(header), undefined, why);
  }
});

t.test('non-canonical base64 (non-zero padding bits) is refused', async (t) => {
  // "YTpi" is a:b; "YTpiZA==" is a:bd; "YTpiZQ==" -> a:be; "YTpiZR==" has stray bits
  t.same(parseBasicAuth('Basic YTpiZQ=='), { login: 'a', password: 'be' });
  t.equal(parseBasicAuth('Basic YTpiZR=='), undefined);
});
