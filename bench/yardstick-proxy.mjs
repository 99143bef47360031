// Row (b), the yardstick: a minimal pass-through reverse proxy with no
// authentication at all, about the most any Node proxy does on this machine.
// One process, like otpgate, with a keep-alive agent to the backend, bodies piped both ways.
import { Agent, createServer, request } from 'node:http';

const [upstreamPort] = process.argv.slice(2).map(Number);
// Same pool limits as otpgate's upstream agent, so neither gets an advantage there.
const agent = new Agent({ keepAlive: true, maxSockets: 256, maxFreeSockets: 64 });

const server = createServer((req, res) => {
  const upstream = request({
    host: '127.0.0.1', port: upstreamPort, method: req.method, path: req.url, headers: req.headers, agent,
  }, (upstreamRes) => {
    res.writeHead(upstreamRes.statusCode, upstreamRes.headers);
    upstreamRes.pipe(res);
  });
  upstream.on('error', () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(upstream);
});
server.listen(0, '127.0.0.1', () => process.stdout.write(`port ${server.address().port}\n`));
process.on('SIGTERM', () => { server.close(); agent.destroy(); process.exit(0); });
