// Raw HTTP/1 over a socket, for what a hostile client sends: Node's own client
// would normalise or refuse most of it (framing, header spelling, targets).
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export interface RawReply {
  /** status of the first answer; 0 when nothing that looks like HTTP came back */
  status: number;
  /** the status of every answer on the connection, in order (interim 1xx included) */
  statuses: number[];
  /** head of the first answer */
  head: string;
  /** everything after the first answer's head */
  body: Buffer;
  /** the connection ended by itself (not cut by the helper's own deadline) */
  closed: boolean;
}

/** The status of each answer in a byte stream, following Content-Length from one to the next. */
function statusesOf(all: Buffer): number[] {
  const found: number[] = [];
  let at = 0;
  while (at < all.length) {
    const end = all.indexOf('\r\n\r\n', at);
    const head = all.subarray(at, end === -1 ? all.length : end).toString('latin1');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
    if (end === -1 || !m) break;
    const status = Number(m[1]);
    found.push(status);
    if (status < 200) {
      at = end + 4;
      continue;
    }
    const length = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (!length) break; // an answer that runs to the end of the connection
    at = end + 4 + Number(length[1]);
  }
  return found;
}

/**
 * Send bytes on a fresh connection and read until the peer closes (or `waitMs`
 * passes: then `closed` is false). The request should carry `Connection: close`.
 */
export function raw(port: number, data: string | Buffer, waitMs = 2000, tls = false): Promise<RawReply> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket: Socket = tls
      ? tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false })
      : connect({ host: '127.0.0.1', port });
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const all = Buffer.concat(chunks);
      const split = all.indexOf('\r\n\r\n');
      const head = (split === -1 ? all : all.subarray(0, split)).toString('latin1');
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(head);
      resolve({
        status: m ? Number(m[1]) : 0, statuses: statusesOf(all), head,
        body: split === -1 ? Buffer.alloc(0) : all.subarray(split + 4), closed,
      });
    };
    const timer = setTimeout(() => finish(false), waitMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('error', () => finish(true));
    socket.on('close', () => finish(true));
    socket.write(data);
  });
}

/** A raw request head: lines joined with CRLF, with the blank line that ends it. */
export const head = (...lines: string[]): string => `${lines.join('\r\n')}\r\n\r\n`;
