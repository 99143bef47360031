// Row (b'), for reference: the same minimal pass-through proxy as the yardstick
// (b), but sending to the backend with undici, the client otpgate forwards with.
// It shows how much of otpgate's lead over (b) is the client library, and what
// otpgate's own work (authentication, header hygiene) costs on top of it.
import { createServer } from 'node:http';
import { Pool } from 'undici';

const [upstreamPort] = process.argv.slice(2).map(Number);
// Same connection limit as otpgate's pool.
const pool = new Pool(`http://127.0.0.1:${upstreamPort}`, { connections: 256 });
// undici frames the request itself and refuses these from the caller.
const FRAMING = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'expect']);

const server = createServer((req, res) => {
  const headers = {};
  for (const [name, value] of Object.entries(req.headers)) if (!FRAMING.has(name)) headers[name] = value;
  const body = req.headers['content-length'] || req.headers['transfer-encoding'] ? req : null;
  pool.stream({ path: req.url, method: req.method, headers, body },
    ({ statusCode, headers: upstreamHeaders }) => { res.writeHead(statusCode, upstreamHeaders); return res; },
    (err) => {
      if (!err) return;
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`port ${server.address().port}\n`));
process.on('SIGTERM', () => { server.close(); pool.destroy(); process.exit(0); });
