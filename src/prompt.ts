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
  private typeahead = '';

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
    let onData: ((chunk: Buffer) => void) | undefined;
    try {
      return await new Promise<string>((resolve, reject) => {
        const answer = new Answer(hidden);
        const feed = (text: string): boolean => {
          const result = answer.feed(text);
          if (result === undefined) return false;
          process.stderr.write('\n');
          // Typed ahead (the next answer): kept for the next question.
          this.typeahead = result.rest;
          if (result.cancelled) reject(new CliError('cancelled; nothing was changed', 1));
          else resolve(result.typed);
          return true;
        };
        const ahead = this.typeahead;
        this.typeahead = '';
        if (feed(ahead)) return;
        onData = (chunk: Buffer): void => { feed(chunk.toString('utf8')); };
        input.on('data', onData);
        input.resume();
      });
    } finally {
      if (onData) input.off('data', onData);
      input.setRawMode(false);
      input.pause();
    }
  }

  close(): void {
    this.lines?.close();
    process.stdin.pause();
  }
}

/** What is typed at a raw terminal, key by key, until Enter. */
class Answer {
  private typed = '';
  // 0: text; 1: after ESC; 2: inside a control sequence (an arrow key: ESC [ A)
  private escape = 0;

  constructor(private readonly hidden: boolean) {}

  /** Undefined while the answer goes on; else the answer, or a cancel, and what was typed after it. */
  feed(text: string): { typed: string; cancelled: boolean; rest: string } | undefined {
    const chars = [...text];
    for (let k = 0; k < chars.length; k++) {
      const ch = chars[k] as string;
      if (this.escape === 1) {
        this.escape = ch === '[' || ch === 'O' ? 2 : 0;
      } else if (this.escape === 2) {
        if (ch >= '@' && ch <= '~') this.escape = 0;
      } else if (ch === '\u001b') {
        this.escape = 1;
      } else if (ch === '\r' || ch === '\n') {
        return { typed: this.typed, cancelled: false, rest: chars.slice(k + 1).join('').replace(/^\n/, '') };
      } else if (ch === '\u0003' || ch === '\u0004') { // Ctrl-C, Ctrl-D
        return { typed: '', cancelled: true, rest: '' };
      } else if (ch === '\u007f' || ch === '\b') {
        if (this.typed.length > 0) {
          this.typed = [...this.typed].slice(0, -1).join('');
          if (!this.hidden) process.stderr.write('\b \b');
        }
      } else if (ch >= ' ') {
        this.typed += ch;
        if (!this.hidden) process.stderr.write(ch);
      }
    }
    return undefined;
  }
}
