import { isIP } from "node:net";
import { reportCertificate } from "./certificate.js";
import { LineClient, NetProblem, seconds } from "./line-client.js";
import type { Reporter } from "./report.js";
import type { DoctorTarget } from "./types.js";

/** What every protocol check needs. */
export interface DoctorContext {
  readonly report: Reporter;
  readonly expectedHostname: string | undefined;
  readonly ca: string | undefined;
  readonly account: { readonly address: string; readonly password: string } | undefined;
  readonly timeoutMs: number;
  /** Set after the server refused the account once: trying again would only feed the login throttle. */
  credentialsRefusedOn: string | null;
}

export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host) || /^::ffff:127\./i.test(host);
}

function problemOf(error: unknown): NetProblem {
  return error instanceof NetProblem ? error : new NetProblem("EUNKNOWN", error instanceof Error ? error.message : String(error));
}

/** Connects and, for implicit-TLS listeners, shakes hands. Returns null (after reporting) on failure. */
export async function open(target: DoctorTarget, ctx: DoctorContext): Promise<LineClient | null> {
  const { report } = ctx;
  const where = formatHostPort(target.host, target.port);
  let client: LineClient;
  try {
    client = await LineClient.connect(target.host, target.port, ctx.timeoutMs);
  } catch (error) {
    const problem = problemOf(error);
    switch (problem.code) {
      case "ECONNREFUSED":
        report.fail("connect", `connection refused by ${where}`, `port closed: nothing listens on ${where}; is mailroom serve running, and is this port in its configuration?`);
        break;
      case "ETIMEDOUT":
        report.fail("connect", `connection timed out after ${seconds(ctx.timeoutMs)} (firewall?)`, `a firewall may be dropping packets to port ${target.port}, or ${target.host} is unreachable`);
        break;
      case "EHOSTUNREACH":
      case "ENETUNREACH":
        report.fail("connect", `${target.host} is unreachable (${problem.code})`, "check the address and the routing/firewall between here and the server");
        break;
      case "ENOTFOUND":
      case "EAI_AGAIN":
        report.fail("connect", `host name ${target.host} not found`, "check the name, or use an IP address");
        break;
      default:
        report.fail("connect", `cannot connect to ${where}: ${problem.message}`);
    }
    return null;
  }
  report.ok("connect", `connected to ${where}`);
  if (target.implicitTls && !(await handshake(client, target, ctx, "implicit"))) return null;
  return client;
}

/** The TLS handshake on an open connection (implicit TLS, or after STARTTLS/STLS was accepted). */
export async function handshake(client: LineClient, target: DoctorTarget, ctx: DoctorContext, kind: "implicit" | "upgrade"): Promise<boolean> {
  const servername = ctx.expectedHostname ?? (isIP(target.host) ? undefined : target.host);
  try {
    const socket = await client.startTls({ ...(servername ? { servername } : {}), ...(ctx.ca ? { ca: ctx.ca } : {}) });
    reportCertificate(socket, { expectedHostname: ctx.expectedHostname, ca: ctx.ca }, ctx.report);
    return true;
  } catch (error) {
    const problem = problemOf(error);
    const hint =
      kind === "implicit"
        ? `wrong port for implicit TLS? ${target.port} may be a plain port (STARTTLS/STLS); implicit TLS is usually 465 (submissions) and 995 (pop3s)`
        : "the server accepted the upgrade but the handshake failed: check [tls] cert and key, and the server log";
    ctx.report.fail("tls", `TLS handshake failed: ${tlsReason(problem.message)}`, hint);
    client.close();
    return false;
  }
}

/** Turns a failed read into a check: timeouts, closes and resets each get their likely cause. */
export function reportReadProblem(ctx: DoctorContext, target: DoctorTarget, step: string, what: string, error: unknown): void {
  const problem = problemOf(error);
  if (problem.code === "ETIMEDOUT") {
    const hint =
      step === "greeting" && !target.implicitTls
        ? `if ${target.port} is an implicit-TLS port (465/995) the server is waiting for a TLS handshake; otherwise the server is stuck or overloaded`
        : "the server is stuck or overloaded; check its log";
    ctx.report.fail(step, `${what}: no reply within ${seconds(ctx.timeoutMs)}`, hint);
  } else if (problem.code === "ECLOSED" || problem.code === "ECONNRESET") {
    ctx.report.fail(step, `${what}: the server closed the connection`, "connection limits (limits.max_connections_per_address) or the server shutting down; check its log");
  } else {
    ctx.report.fail(step, `${what}: ${problem.message}`);
  }
}

/** OpenSSL's "8000…:error:0A00010B:SSL routines:ssl3_get_record:wrong version number:…" → "wrong version number". */
function tlsReason(message: string): string {
  const match = /SSL routines:[^:]*:([^:]+):/.exec(message);
  return match ? match[1]! : message;
}
