// The `otpgate` command line. Exit status: 0 ok; 2 bad config or usage; 1 other failure.
// Errors go to stderr, one line each, never a stack trace.
import { Command, CommanderError } from 'commander';
import { adminError, otpCommand, usersCommand } from './adminCli.js';
import { Prompter } from './prompt.js';
import { VERSION } from './logger.js';
import { CliError } from './cliError.js';
import { configFileFrom } from './configFile.js';

function fail(err: unknown): never {
  err = adminError(err) ?? err;
  if (err instanceof CliError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(err.exitCode);
  }
  process.stderr.write(`otpgate: ${(err as Error).message ?? String(err)}\n`);
  process.exit(1);
}

export async function main(argv: readonly string[]): Promise<void> {
  const program = new Command('otpgate')
    .description('PIN+OTP Basic-auth reverse proxy on the mod_authn_otp users file')
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program.command('serve')
    .description('run the gateway')
    .option('-c, --config <file>', 'config file (default: $OTPGATE_CONFIG, then /etc/otpgate/otpgate.yaml)')
    .action(async (opts: { config?: string }) => {
      // The gateway's modules load only for the commands that run it: the admin commands start faster.
      const { serve } = await import('./serve.js');
      await serve(configFileFrom(opts.config));
    });

  program.command('demo')
    .description('a demo helpdesk with the gateway in front of it, on 127.0.0.1 (what npm start runs)')
    .action(async () => {
      const { demo } = await import('./demo.js');
      await demo();
    });

  program.command('check-config')
    .description('validate the config and its users file; print every problem; exit non-zero on any')
    .option('-c, --config <file>', 'config file (default: $OTPGATE_CONFIG, then /etc/otpgate/otpgate.yaml)')
    .action(async (opts: { config?: string }) => {
      const { checkConfig, readConfig } = await import('./serve.js');
      const file = configFileFrom(opts.config);
      let { ok, lines } = checkConfig(file);
      // With store: redis, a config that is valid is also tried against Redis.
      if (ok) {
        const config = readConfig(file);
        if (config.state.store === 'redis') {
          const { checkStateStore } = await import('./stateCheck.js');
          const found = await checkStateStore(config.state, file);
          for (const w of found.warnings) process.stderr.write(`warning: ${w}\n`);
          if (found.problems.length > 0) [ok, lines] = [false, found.problems];
          else if (found.summary !== undefined) lines = [...lines, found.summary];
        }
      }
      (ok ? process.stdout : process.stderr).write(`${lines.join('\n')}\n`);
      process.exitCode = ok ? 0 : 2;
    });

  const prompter = new Prompter();
  program.addCommand(usersCommand(prompter));
  program.addCommand(otpCommand());
  // Subcommands inherit neither the exit override nor the output: usage errors must exit 2 everywhere.
  const override = (cmd: Command): void => {
    for (const sub of cmd.commands) {
      sub.exitOverride().configureOutput({ writeErr: (s) => process.stderr.write(s) });
      override(sub);
    }
  };
  override(program);

  try {
    await program.parseAsync(argv as string[]);
    prompter.close();
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exit(err.exitCode === 0 ? 0 : 2);
    }
    fail(err);
  }
}
