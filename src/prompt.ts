// Values the admin CLI needs from a person: asked at the terminal (a PIN
// without echo), or, when a flag says `-`, read as the next line of standard
// input so scripts can pipe them in.
import { createInterface, type Interface } from 'node:readline';
import { CliError } from './cliError.js';

export class Prompter {
  private lines: Interface | undefined;
  private readonly buffered: string[] = [];
  private waiting: ((line: string | undefined) => void) | undefined;
  private ended = false;

  /** The next line of standard input (for a flag given as `-`). */
  async stdinLine(what: string): Promise<string> {
    if (this.lines === undefined) {
      this.lines = createInterface({ input: process.stdin, terminal: false });
      this.lines.on('line', (line) => {
        if (this.waiting) {
          const w = this.waiting;
          this.waiting = undefined;
          w(line);
        } else this.buffered.push(line);
      });
      this.lines.on('close', () => {
        this.ended = true;
        this.waiting?.(undefined);
      });
    }
    const next = this.buffered.shift() ?? (this.ended ? undefined : await new Promise<string | undefined>((resolve) => { this.waiting = resolve; }));
    if (next === undefined) throw new CliError(`standard input ended before the ${what}`, 2);
    return next.replace(/\r$/, '');
  }

  /** Ask at the terminal; `hidden` does not echo what is typed. `noTerminal`: the error without one (name the flags to use instead). */
  async ask(question: string, hidden: boolean, noTerminal: string): Promise<string> {
    const input = process.stdin;
    if (!input.isTTY) throw new CliError(noTerminal, 2);
    // Raw (no echo) before the question shows: an answer typed at once must not be echoed by the terminal.
    input.setRawMode(true);
    process.stderr.write(question);
    input.resume();
    try {
      return await new Promise<string>((resolve, reject) => {
        let typed = '';
        const onData = (chunk: Buffer): void => {
          for (const ch of chunk.toString('utf8')) {
            if (ch === '\r' || ch === '\n') {
              input.off('data', onData);
              process.stderr.write('\n');
              resolve(typed);
              return;
            }
            if (ch === '\u0003' || ch === '\u0004') { // Ctrl-C, Ctrl-D
              input.off('data', onData);
              process.stderr.write('\n');
              reject(new CliError('cancelled; nothing was changed', 1));
              return;
            }
            if (ch === '\u007f' || ch === '\b') {
              if (typed.length > 0) {
                typed = [...typed].slice(0, -1).join('');
                if (!hidden) process.stderr.write('\b \b');
              }
            } else if (ch >= ' ') {
              typed += ch;
              if (!hidden) process.stderr.write(ch);
            }
          }
        };
        input.on('data', onData);
      });
    } finally {
      input.setRawMode(false);
      input.pause();
    }
  }

  close(): void {
    this.lines?.close();
    process.stdin.pause();
  }
}
