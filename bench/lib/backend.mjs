// The backend behind every proxy: nginx answering `200 ok` from memory, so the
// backend costs as little as possible and the rows compare the proxies. If nginx
// cannot be had, a tiny Node server stands in (and the report says so).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, makeTempDir, runQuiet, spawnTracked, startNodeServer, waitForHttp } from './processes.mjs';
import { ensureCommand } from './tools.mjs';

export const NGINX_WORKERS = 1;

function nginxConfig(prefix, port) {
  const temp = (name) => join(prefix, 'tmp', name);
  // keepalive_requests raised: nginx's default (1000) would close the keep-alive
  // connections of wrk and of the proxies' agents every 1000 requests.
  return `worker_processes ${NGINX_WORKERS};
daemon off;
pid ${join(prefix, 'nginx.pid')};
error_log ${join(prefix, 'error.log')} warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${temp('body')};
  proxy_temp_path ${temp('proxy')};
  fastcgi_temp_path ${temp('fastcgi')};
  uwsgi_temp_path ${temp('uwsgi')};
  scgi_temp_path ${temp('scgi')};
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  server {
    listen 127.0.0.1:${port};
    location / { return 200 "ok"; }
  }
}
`;
}

async function startNginx(nginx, log) {
  const prefix = makeTempDir('otpgate-bench-nginx-');
  mkdirSync(join(prefix, 'tmp'));
  const port = await freePort();
  const conf = join(prefix, 'nginx.conf');
  writeFileSync(conf, nginxConfig(prefix, port));
  // -e: nginx opens its compiled-in error log before reading the config; keep it in the prefix too.
  const child = spawnTracked('nginx', nginx, ['-p', prefix, '-c', conf, '-e', join(prefix, 'error.log')]);
  await waitForHttp(`http://127.0.0.1:${port}/`, child);
  const version = runQuiet(nginx, ['-v']).output.replace(/^nginx version: /, '');
  log(`backend: ${version}, worker_processes ${NGINX_WORKERS}, on 127.0.0.1:${port}`);
  return { kind: 'nginx', description: `${version}, worker_processes ${NGINX_WORKERS}, return 200 "ok"`, port, child };
}

async function startNodeBackend(reason, log) {
  const script = fileURLToPath(new URL('../node-backend.mjs', import.meta.url));
  const { child, port } = await startNodeServer('node backend', script);
  log(`backend: FALLBACK Node http server on 127.0.0.1:${port} (${reason})`);
  return { kind: 'node', description: `FALLBACK Node http server (nginx unavailable: ${reason})`, port, child };
}

/** nginx if it can be had (BENCH_BACKEND=node forces the fallback, to test it). */
export async function startBackend(log) {
  if (process.env.BENCH_BACKEND === 'node') return startNodeBackend('BENCH_BACKEND=node', log);
  const nginx = ensureCommand('nginx', 'nginx-light', log);
  if (nginx.path) {
    try {
      return await startNginx(nginx.path, log);
    } catch (err) {
      return startNodeBackend(`nginx failed to start: ${err.message.split('\n')[0]}`, log);
    }
  }
  return startNodeBackend(nginx.reason, log);
}
