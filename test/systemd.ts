// The shipped systemd unit: its exposure as systemd's own analyzer scores it,
// where the analyzer is installed, and its hardening directive by directive
// everywhere, so a machine without systemd still notices a weakened unit.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempDir } from './lib/harness.js';

const UNIT = fileURLToPath(new URL('../systemd/otpgate.service', import.meta.url));
const README = fileURLToPath(new URL('../README.md', import.meta.url));
const TEXT = readFileSync(UNIT, 'utf8');

/** Every `Key=value` of a section, in order; a key given twice keeps both (as systemd does for lists). */
function directives(text: string, section: string): Map<string, string[]> {
  const found = new Map<string, string[]>();
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = header[1] ?? '';
      continue;
    }
    const eq = line.indexOf('=');
    if (current !== section || eq < 0) continue;
    const key = line.slice(0, eq);
    found.set(key, [...(found.get(key) ?? []), line.slice(eq + 1)]);
  }
  return found;
}

/** The drop-in the unit's comments give for a port above 1024, as a file's text. */
function portDropIn(): string {
  const block = /the capability with a drop-in:\n((?:# {3}.*\n)+)/.exec(TEXT);
  if (!block?.[1]) throw new Error(`${UNIT}: the comment with the drop-in for ports above 1024 is gone`);
  return block[1].replace(/^# {3}/gm, '');
}

const service = directives(TEXT, 'Service');
const one = (key: string): string | undefined => service.get(key)?.at(-1);

t.test('the unit keeps its hardening directives', async (t) => {
  t.same([one('User'), one('Group'), one('DynamicUser')], ['otpgate', 'otpgate', undefined], 'a fixed system user');
  t.match(one('ExecStart'), /^\/usr\/bin\/node .*\/opt\/otpgate\/bin\/otpgate serve$/);
  for (const [key, value] of [
    ['NoNewPrivileges', 'yes'], ['ProtectSystem', 'strict'], ['ProtectHome', 'yes'], ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'], ['DevicePolicy', 'closed'], ['PrivateMounts', 'yes'], ['ProtectProc', 'invisible'],
    ['ProcSubset', 'pid'], ['ProtectKernelTunables', 'yes'], ['ProtectKernelModules', 'yes'], ['ProtectKernelLogs', 'yes'],
    ['ProtectControlGroups', 'yes'], ['ProtectClock', 'yes'], ['ProtectHostname', 'yes'], ['PrivateIPC', 'yes'],
    ['KeyringMode', 'private'], ['RemoveIPC', 'yes'], ['RestrictNamespaces', 'yes'], ['RestrictRealtime', 'yes'],
    ['RestrictSUIDSGID', 'yes'], ['LockPersonality', 'yes'], ['SystemCallArchitectures', 'native'], ['UMask', '0077'],
    ['StateDirectory', 'otpgate'], ['StateDirectoryMode', '0700'],
  ] as const) {
    t.equal(one(key), value, `${key}=${value}`);
  }
  t.same(service.get('CapabilityBoundingSet'), ['CAP_NET_BIND_SERVICE'], 'no capability but binding a low port');
  t.same(service.get('AmbientCapabilities'), ['CAP_NET_BIND_SERVICE']);
  t.same(one('RestrictAddressFamilies')?.split(/\s+/).sort(), ['AF_INET', 'AF_INET6', 'AF_UNIX']);
  const filters = service.get('SystemCallFilter') ?? [];
  t.equal(filters[0], '@system-service', 'an allow list of system calls');
  t.ok(filters.some((f) => f.startsWith('~') && f.includes('@privileged') && f.includes('@resources')), 'minus @privileged and @resources');
  t.equal(one('SystemCallErrorNumber'), 'EPERM');
  // V8's JIT writes code and then executes it: with this on, node aborts at start.
  t.not(one('MemoryDenyWriteExecute'), 'yes', 'W^X stays off for the JIT');
  t.match(portDropIn(), /^\[Service\]\nAmbientCapabilities=\nCapabilityBoundingSet=\nPrivateUsers=yes\n$/,
    'the comments show how to drop the capability for ports above 1024');
});

t.test('README and unit state the same exposure', async (t) => {
  const readme = /`systemd-analyze security`: exposure (\d+\.\d); (\d+\.\d) when listening above port 1024/.exec(readFileSync(README, 'utf8'));
  const unit = /systemd-analyze security otpgate\.service +# expect exposure (\d+\.\d) \((\d+\.\d) with the drop-in/.exec(TEXT);
  t.ok(readme && unit, 'both state it');
  t.same(readme?.slice(1), unit?.slice(1));
  t.ok(Number(readme?.[1]) <= 1.5, 'at most 1.5 as stated');
});

const analyzer = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' });
if (analyzer.error === undefined && analyzer.status === 0) {
  /** The analyzer's overall figure for a unit file (drop-ins in `<file>.d/` next to it count). */
  const exposure = (unitFile: string): { value: number; output: string; code: number | null } => {
    // --offline: score the file itself; no running systemd, no installed unit, no otpgate user needed.
    const r = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', unitFile], { encoding: 'utf8' });
    const output = `${r.stdout}${r.stderr}`;
    const m = /Overall exposure level for otpgate\.service: (\d+\.\d+)/.exec(output);
    return { value: m ? Number(m[1]) : Number.NaN, output, code: r.status };
  };

  t.test(`systemd-analyze security --offline (${analyzer.stdout.split('\n')[0]})`, async (t) => {
    const shipped = exposure(UNIT);
    t.equal(shipped.code, 0, 'the analyzer accepts the unit');
    t.ok(shipped.value <= 1.5, `exposure ${shipped.value} <= 1.5`, { output: shipped.output });
    t.notMatch(shipped.output, /Unknown key|Failed to|Invalid/i, 'every directive understood');
    const threshold = spawnSync('systemd-analyze', ['security', '--offline=true', '--threshold=15', UNIT]);
    t.equal(threshold.status, 0, 'and by its own --threshold (tenths)');

    const dir = tempDir(t);
    const copy = join(dir, 'otpgate.service');
    copyFileSync(UNIT, copy);
    mkdirSync(`${copy}.d`);
    writeFileSync(join(`${copy}.d`, 'port.conf'), portDropIn());
    const high = exposure(copy);
    t.ok(high.value <= 1.2, `with the drop-in for ports above 1024: ${high.value} <= 1.2`, { output: high.output });
    t.ok(high.value < shipped.value, 'the drop-in is read and lowers it');
  });
} else {
  t.comment('systemd-analyze is not installed: the directive checks above stand in for its score');
}
