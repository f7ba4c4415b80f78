/**
 * POP3 / POP3S: greeting, CAPA, STLS, certificate, then (with an account) USER/PASS, STAT and QUIT.
 * Nothing is ever marked for deletion, so QUIT commits nothing but retrieval times of nothing.
 */
import { open, handshake, isLoopback, reportReadProblem, type DoctorContext } from "./common.js";
import type { LineClient } from "./line-client.js";
import type { DoctorTarget } from "./types.js";

export async function checkPop3(target: DoctorTarget, ctx: DoctorContext): Promise<void> {
  const client = await open(target, ctx);
  if (!client) return;
  try {
    await converse(client, target, ctx);
  } finally {
    client.close();
  }
}

async function converse(client: LineClient, target: DoctorTarget, ctx: DoctorContext): Promise<void> {
  const { report } = ctx;
  let greeting: string;
  try {
    greeting = await client.readLine();
  } catch (error) {
    reportReadProblem(ctx, target, "greeting", "no POP3 greeting", error);
    return;
  }
  if (/^\d{3}[ -]/.test(greeting)) {
    report.fail("greeting", `wrong protocol: an SMTP server answered (${greeting})`, `port ${target.port} belongs to SMTP; POP3 is usually 110 (STLS) or 995 (implicit TLS)`);
    return;
  }
  if (greeting.startsWith("-ERR")) {
    report.fail("greeting", `the server refused the session: ${greeting}`, hintForErr(greeting));
    return;
  }
  if (!greeting.startsWith("+OK")) {
    report.fail("greeting", `wrong protocol: not a POP3 greeting (${greeting.slice(0, 80)})`, `is ${target.port} the POP3 port?`);
    return;
  }
  report.ok("greeting", `greeting: ${greeting}`);

  let caps = await capa(client, target, ctx);
  if (caps === null) return;

  if (!client.secure) {
    const plaintext = caps.some((c) => /^(USER|SASL)\b/i.test(c));
    if (!plaintext) report.ok("plaintext-login", "plaintext login refused before STLS (expected on non-loopback connections)");
    else if (isLoopback(target.host)) {
      report.ok("plaintext-login", "plaintext login offered before STLS: this connection comes from loopback, which the server trusts; remote clients must use STLS first");
    } else {
      report.warn("plaintext-login", "plaintext login accepted before STLS: passwords can cross the network unencrypted", "set pop3.allow_plaintext_auth = false");
    }
    if (!caps.some((c) => /^STLS$/i.test(c))) {
      report.fail("stls", "STLS not offered: remote clients cannot log in safely", "configure [tls] cert and key (or use the pop3s listener)");
      return;
    }
    client.send("STLS");
    let answer: string;
    try {
      answer = await client.readLine();
    } catch (error) {
      reportReadProblem(ctx, target, "stls", "STLS", error);
      return;
    }
    if (!answer.startsWith("+OK")) {
      report.fail("stls", `STLS refused: ${answer}`, hintForErr(answer));
      return;
    }
    report.ok("stls", `STLS: ${answer}`);
    if (!(await handshake(client, target, ctx, "upgrade"))) return;
    caps = await capa(client, target, ctx);
    if (caps === null) return;
  }

  if (ctx.account) await login(client, target, ctx, ctx.account);
  client.send("QUIT");
  try {
    const bye = await client.readLine();
    if (bye.startsWith("+OK")) report.ok("quit", `QUIT: ${bye}`);
    else report.fail("quit", `QUIT failed: ${bye}`, hintForErr(bye));
  } catch (error) {
    reportReadProblem(ctx, target, "quit", "QUIT", error);
  }
}

async function capa(client: LineClient, target: DoctorTarget, ctx: DoctorContext): Promise<string[] | null> {
  client.send("CAPA");
  try {
    const status = await client.readLine();
    if (!status.startsWith("+OK")) {
      ctx.report.warn("capabilities", `CAPA not supported: ${status}`);
      return [];
    }
    const caps = await client.readPop3Body();
    ctx.report.ok("capabilities", `CAPA${client.secure ? " (over TLS)" : ""}: ${caps.length} capabilities`);
    ctx.report.info(caps.join(", "));
    return caps;
  } catch (error) {
    reportReadProblem(ctx, target, "capabilities", "CAPA", error);
    return null;
  }
}

async function login(client: LineClient, target: DoctorTarget, ctx: DoctorContext, account: { address: string; password: string }): Promise<void> {
  const { report } = ctx;
  if (ctx.credentialsRefusedOn !== null) {
    report.warn("login", `login skipped: the password was already refused on ${ctx.credentialsRefusedOn}`, "retrying would only trip the login throttle");
    return;
  }
  try {
    client.send(`USER ${account.address}`);
    const user = await client.readLine();
    if (!user.startsWith("+OK")) {
      report.fail("login", `USER refused: ${user}`, hintForErr(user));
      if (/\[AUTH\]/.test(user)) ctx.credentialsRefusedOn = `${target.name}`;
      return;
    }
    client.send(`PASS ${account.password}`);
    const pass = await client.readLine();
    if (!pass.startsWith("+OK")) {
      report.fail("login", `login as ${account.address} failed: ${pass}`, hintForErr(pass));
      if (/\[AUTH\] invalid/i.test(pass)) ctx.credentialsRefusedOn = target.name;
      return;
    }
    report.ok("login", `logged in as ${account.address}: ${pass.slice(4)}`);
    client.send("STAT");
    const stat = await client.readLine();
    const match = /^\+OK (\d+) (\d+)/.exec(stat);
    if (match) report.ok("stat", `STAT: ${match[1]} message${match[1] === "1" ? "" : "s"}, ${match[2]} octets (nothing is deleted)`);
    else report.fail("stat", `STAT failed: ${stat}`, hintForErr(stat));
  } catch (error) {
    reportReadProblem(ctx, target, "login", "login", error);
  }
}

/** The likely cause behind a POP3 -ERR, keyed by its response code (RFC 2449, 3206). */
function hintForErr(line: string): string {
  if (/plaintext authentication requires STLS/i.test(line)) return "plaintext login refused before STLS: use STLS (or port 995) first";
  if (/\[IN-USE\]/i.test(line)) {
    return "mailbox in use by another session: another client (phone, desktop) has it open; it is free again when that client QUITs or its lease expires (pop3.lease_ttl_seconds)";
  }
  if (/\[SYS\/TEMP\]/i.test(line)) return "store unavailable or server busy: check that the store (disk, PostgreSQL, Redis) is reachable, and the server log";
  if (/too many failed logins/i.test(line)) return "the login throttle is refusing this account or address after failed attempts; wait and retry";
  if (/\[AUTH\]/i.test(line)) return "wrong password or unknown user (the server does not say which, by design); check with mailroom user list, reset with mailroom user passwd";
  if (/\[LOGIN-DELAY\]/i.test(line)) return "logged in too soon after the previous session (pop3.login_delay_seconds)";
  if (/\[SYS\/PERM\]/i.test(line)) return "a permanent store error; see the server log";
  return "see the server log";
}
