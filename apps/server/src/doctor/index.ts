/**
 * `mailroom doctor`: checks a running server from the outside, as a client would, and says what is
 * wrong in words a support engineer would use. Read-only by construction: no DELE, no MAIL FROM.
 */
import { Buffer } from "node:buffer";
import type { ServerConfig } from "../config.js";
import { formatHostPort, type DoctorContext } from "./common.js";
import { checkPop3 } from "./pop3.js";
import { Reporter } from "./report.js";
import { checkSmtp } from "./smtp.js";
import type { DoctorOptions, DoctorResult, DoctorTarget, TargetName } from "./types.js";

export type { Check, CheckStatus, DoctorOptions, DoctorResult, DoctorTarget, TargetName } from "./types.js";

const DEFAULT_TIMEOUT_MS = 10_000;

const DESCRIPTION: Record<TargetName, string> = {
  smtp: "SMTP (MX), STARTTLS",
  submission: "submission, STARTTLS",
  submissions: "submission, implicit TLS",
  pop3: "POP3, STLS",
  pop3s: "POP3, implicit TLS",
};

/** Runs every check in order, printing as it goes. Never throws for a server problem. */
export async function runDoctor(options: DoctorOptions): Promise<DoctorResult> {
  const secrets = options.account
    ? [options.account.password, Buffer.from(`\0${options.account.address}\0${options.account.password}`, "utf8").toString("base64")]
    : [];
  const report = new Reporter(options.out, secrets);
  const ctx: DoctorContext = {
    report,
    expectedHostname: options.expectedHostname,
    ca: options.ca,
    account: options.account,
    timeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    credentialsRefusedOn: null,
  };
  if (options.targets.length === 0) report.line("no listeners to check");
  for (const target of options.targets) {
    const where = formatHostPort(target.host, target.port);
    report.section(`${target.name} ${where}`, `${target.name} ${where} (${DESCRIPTION[target.name]})`);
    if (target.name === "pop3" || target.name === "pop3s") await checkPop3(target, ctx);
    else await checkSmtp(target, ctx);
  }
  const failures = report.checks.filter((c) => c.status === "fail").length;
  const warnings = report.checks.filter((c) => c.status === "warn").length;
  const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? "" : "s"}`;
  report.line("");
  if (failures === 0) report.line(`✔ no problems found${warnings > 0 ? `, ${plural(warnings, "warning")}` : ""}`);
  else report.line(`✘ ${plural(failures, "problem")}${warnings > 0 ? `, ${plural(warnings, "warning")}` : ""}`);
  return { ok: failures === 0, checks: report.checks };
}

/** Where a wildcard listener can be reached from this machine. */
function connectHost(host: string): string {
  if (host === "0.0.0.0") return "127.0.0.1";
  if (host === "::" || host === "[::]") return "::1";
  return host;
}

/**
 * The listeners of a loaded configuration as doctor targets. Wildcard addresses are checked over
 * loopback; port 0 (a test setting: any free port) cannot be found from outside and is left out.
 */
export function targetsFromConfig(config: Pick<ServerConfig, "smtp" | "pop3">): DoctorTarget[] {
  const groups: Array<[TargetName, readonly { host: string; port: number }[], boolean]> = [
    ["smtp", config.smtp.listen, false],
    ["submission", config.smtp.submission, false],
    ["submissions", config.smtp.submissions, true],
    ["pop3", config.pop3.listen, false],
    ["pop3s", config.pop3.pop3s, true],
  ];
  const targets: DoctorTarget[] = [];
  for (const [name, addresses, implicitTls] of groups) {
    for (const address of addresses) {
      if (address.port === 0) continue;
      targets.push({ name, host: connectHost(address.host), port: address.port, implicitTls });
    }
  }
  return targets;
}
