// The config as the commands use it: where it is, read and validated (exit 2
// on any problem), and the parts the users file and the decision take.
import { loadConfig, type Config } from './config.js';
import { CliError } from './cliError.js';
import type { Policy } from './decision.js';
import type { FileSafety } from './usersFile.js';

export type { Config } from './config.js';

export function policyOf(config: Config): Policy {
  return {
    maxOffset: config.maxOffset, maxLinger: config.maxLinger, maxIdle: config.maxIdle,
    logoutOnIpChange: config.logoutOnIpChange, maxFailures: config.maxFailures, lockoutSeconds: config.lockoutSeconds,
    maxLockoutSeconds: config.maxLockoutSeconds, permanentLockAfter: config.permanentLockAfter,
  };
}

export function safetyOf(config: Config): FileSafety {
  return {
    allowInsecurePermissions: config.allowInsecurePermissions, allowSymlinkedUsersFile: config.allowSymlinkedUsersFile,
    allowUnsafeUsersFileDirectory: config.allowUnsafeUsersFileDirectory,
  };
}

export function configFileFrom(option: string | undefined): string {
  // An empty $OTPGATE_CONFIG (`OTPGATE_CONFIG= otpgate ...`) counts as unset.
  return option ?? (process.env.OTPGATE_CONFIG || '/etc/otpgate/otpgate.yaml');
}

export function readConfig(file: string): Config {
  const result = loadConfig(file);
  if (!result.ok) throw new CliError(result.errors.join('\n'), 2);
  return result.config;
}
