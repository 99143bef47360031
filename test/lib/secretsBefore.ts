// tap's `before` script (package.json): an empty capture directory for this run.
import { CAPTURE_DIR, resetCapture } from './secrets.js';

resetCapture();
process.stderr.write(`secrets scan: capturing logs in ${CAPTURE_DIR}\n`);
