// tap's `after` script (package.json), run once every test file has ended:
// fails the run (exit 1) if a secret a test registered occurs in a log any
// test captured. It names the file and the secret: both are test data.
// An argument names another directory (test/secrets.ts tests this script).
import { existsSync } from 'node:fs';
import { CAPTURE_DIR, scanCapture } from './secrets.js';

const dir = process.argv[2] ?? CAPTURE_DIR;
if (!existsSync(dir)) {
  process.stderr.write(`secrets scan: ${dir} is missing: the before script did not run, nothing was captured\n`);
  process.exit(1);
}
const result = scanCapture(dir);
for (const leak of result.leaks) process.stderr.write(`secrets scan: ${dir}/${leak.file}: contains the secret "${leak.secret}"\n`);
process.stderr.write(`secrets scan: ${result.logFiles} captured logs (${result.bytes} characters), ${result.secrets} secrets: ` +
  `${result.leaks.length === 0 ? 'no leak' : `${result.leaks.length} LEAKS`}\n`);
process.exit(result.leaks.length === 0 ? 0 : 1);
