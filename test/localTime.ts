import t from 'tap';
import { formatLocalTime, parseLocalTime } from '../src/localTime.js';

t.test('local time round trip in the process time zone', async (t) => {
  for (const s of [0, 1_244_829_152, 1_700_000_000, 2_000_000_000]) {
    const text = formatLocalTime(s);
    t.match(text, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dL$/);
    t.equal(parseLocalTime(text), s, text);
  }
  t.equal(formatLocalTime(1_700_000_000.9), formatLocalTime(1_700_000_000), 'whole seconds');
});

t.test('the local time zone is used, as mod_authn_otp and liboath do', async (t) => {
  const d = new Date(2009, 5, 12, 17, 52, 32);
  t.equal(parseLocalTime('2009-06-12T17:52:32L'), d.getTime() / 1000);
  t.equal(formatLocalTime(d.getTime() / 1000), '2009-06-12T17:52:32L');
});

t.test('malformed timestamps', async (t) => {
  for (const bad of ['2009-06-12T17:52:32', '2009-06-12 17:52:32L', '2009-13-01T00:00:00L', '2009-02-30T00:00:00L',
    '2009-06-12T24:00:00L', '0001-01-01T00:00:00L', '12345', '', '2009-6-12T17:52:32L']) {
    t.equal(parseLocalTime(bad), undefined, bad);
  }
});
