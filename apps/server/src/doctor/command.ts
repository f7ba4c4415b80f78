/**
 * The `mailroom doctor` command body, ready for the CLI to call once it has parsed its flags and read
 * the password: it turns the loaded configuration into targets, picks the host name and CA, runs the
 * checks and returns the exit code (0: no ✘, 1: at least one ✘).
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { ServerConfig } from "../config.js";
import { ConfigError } from "../errors.js";
import { runDoctor, targetsFromConfig } from "./index.js";
import type { TargetName } from "./types.js";

export interface DoctorCommandOptions {
  /** `--host NAME`: the name clients use; default the configured `hostname`. */
  readonly host?: string;
  /** `--user ADDRESS` with the password the CLI read (`--password-stdin`). */
  readonly account?: { readonly address: string; readonly password: string };
  /** `--ca FILE`: PEM to trust. In the development setup the generated certificate is trusted by default. */
  readonly caFile?: string;
  /** `--only pop3,submission`: check just these listeners. */
  readonly only?: readonly TargetName[];
  readonly timeoutMs?: number;
  readonly out: (line: string) => void;
}

export async function doctorCommand(config: ServerConfig, options: DoctorCommandOptions): Promise<number> {
  let ca: string | undefined;
  if (options.caFile !== undefined) {
    try {
      ca = await readFile(options.caFile, "utf8");
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      throw new ConfigError(`--ca ${options.caFile}: cannot read: ${code === "ENOENT" ? "no such file" : String(code ?? error)}`);
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----")) throw new ConfigError(`--ca ${options.caFile}: no PEM certificate in it`);
  } else if (config.development && config.tls === null) {
    // `mailroom serve` made this certificate itself; trusting it here is what a developer would do by hand.
    const path = join(config.dataDir, ".tls", "cert.pem");
    ca = await readFile(path, "utf8").catch(() => undefined);
    if (ca !== undefined) options.out(`trusting the development certificate ${path}`);
  }
  const targets = targetsFromConfig(config).filter((t) => options.only === undefined || options.only.includes(t.name));
  const result = await runDoctor({
    targets,
    expectedHostname: options.host ?? config.hostname,
    ...(ca !== undefined ? { ca } : {}),
    ...(options.account ? { account: options.account } : {}),
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    out: options.out,
  });
  return result.ok ? 0 : 1;
}
