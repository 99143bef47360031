// Errors for people: the command line prints the message as one line and exits with its status.

/** A failure for people: one line on stderr, and the exit status it calls for. */
export class CliError extends Error {
  constructor(message: string, readonly exitCode: 1 | 2) {
    super(message);
  }
}
