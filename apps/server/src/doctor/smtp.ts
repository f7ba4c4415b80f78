/**
 * SMTP (MX), submission and submissions: greeting, EHLO, STARTTLS, certificate, then on submission
 * listeners (with an account) AUTH PLAIN, RSET and QUIT. No MAIL FROM is ever sent.
 */
import { Buffer } from "node:buffer";
import { open, handshake, isLoopback, reportReadProblem, type DoctorContext } from "./common.js";
import type { LineClient } from "./line-client.js";
import type { DoctorTarget } from "./types.js";

const EHLO_NAME = "doctor.mailroom.invalid";

export async function checkSmtp(target: DoctorTarget, ctx: DoctorContext): Promise<void> {
  const client = await open(target, ctx);
  if (!client) return;
  try {
    await converse(client, target, ctx);
  } finally {
    client.close();
  }
}

async function command(client: LineClient, line: string): Promise<{ code: number; lines: string[] }> {
  client.send(line);
  return client.readSmtpReply();
}

async function converse(client: LineClient, target: DoctorTarget, ctx: DoctorContext): Promise<void> {
  const { report } = ctx;
  const submission = target.name !== "smtp";
  let greeting: { code: number; lines: string[] };
  try {
    greeting = await client.readSmtpReply();
  } catch (error) {
    reportReadProblem(ctx, target, "greeting", "no SMTP greeting", error);
    return;
  }
  const first = greeting.lines[0] ?? "";
  if (first.startsWith("+OK") || first.startsWith("-ERR")) {
    report.fail("greeting", `wrong protocol: a POP3 server answered (${first})`, `port ${target.port} belongs to POP3; SMTP is usually 25, submission 587, submissions 465`);
    return;
  }
  if (greeting.code !== 220) {
    const hint = greeting.code === 0 ? `is ${target.port} an SMTP port?` : "the server refuses sessions now (connection limits, shutting down, or a policy); see its log";
    report.fail("greeting", `${greeting.code === 0 ? "wrong protocol: not an SMTP greeting" : "the server refused the session"}: ${first.slice(0, 80)}`, hint);
    return;
  }
  report.ok("greeting", `greeting: ${first}`);

  let caps = await ehlo(client, target, ctx);
  if (caps === null) return;

  if (!client.secure) {
    if (submission && caps.some((c) => /^AUTH\b/i.test(c)) && !isLoopback(target.host)) {
      report.warn("plaintext-login", "AUTH offered before STARTTLS: passwords can cross the network unencrypted", "remote clients should only be offered AUTH after STARTTLS");
    }
    if (!caps.some((c) => /^STARTTLS$/i.test(c))) {
      const message = "STARTTLS not offered";
      const hint = "configure [tls] cert and key";
      if (submission) report.fail("starttls", `${message}: remote clients cannot log in safely`, hint);
      else report.warn("starttls", `${message}: mail from other servers arrives unencrypted`, hint);
      await quit(client, target, ctx);
      return;
    }
    let reply: { code: number; lines: string[] };
    try {
      reply = await command(client, "STARTTLS");
    } catch (error) {
      reportReadProblem(ctx, target, "starttls", "STARTTLS", error);
      return;
    }
    if (reply.code !== 220) {
      report.fail("starttls", `STARTTLS refused: ${reply.lines.join(" / ")}`, "see the server log");
      return;
    }
    report.ok("starttls", `STARTTLS: ${reply.lines[0] ?? ""}`);
    if (!(await handshake(client, target, ctx, "upgrade"))) return;
    caps = await ehlo(client, target, ctx);
    if (caps === null) return;
  }

  if (submission && ctx.account) {
    const done = await authenticate(client, target, ctx, caps, ctx.account);
    if (!done) return;
  }
  await quit(client, target, ctx);
}

async function ehlo(client: LineClient, target: DoctorTarget, ctx: DoctorContext): Promise<string[] | null> {
  let reply: { code: number; lines: string[] };
  try {
    reply = await command(client, `EHLO ${EHLO_NAME}`);
  } catch (error) {
    reportReadProblem(ctx, target, "capabilities", "EHLO", error);
    return null;
  }
  if (reply.code !== 250) {
    ctx.report.fail("capabilities", `EHLO refused: ${reply.lines.join(" / ")}`, "see the server log");
    return null;
  }
  const caps = reply.lines.slice(1).map((l) => l.slice(4));
  ctx.report.ok("capabilities", `EHLO${client.secure ? " (over TLS)" : ""}: ${caps.length} extensions`);
  ctx.report.info(caps.join(", "));
  return caps;
}

/** Returns false when the session is no longer usable. */
async function authenticate(
  client: LineClient,
  target: DoctorTarget,
  ctx: DoctorContext,
  caps: readonly string[],
  account: { address: string; password: string },
): Promise<boolean> {
  const { report } = ctx;
  if (ctx.credentialsRefusedOn !== null) {
    report.warn("login", `login skipped: the password was already refused on ${ctx.credentialsRefusedOn}`, "retrying would only trip the login throttle");
    return true;
  }
  const auth = caps.find((c) => /^AUTH\b/i.test(c));
  if (!auth || !/\bPLAIN\b/i.test(auth)) {
    report.fail("login", "AUTH PLAIN not offered over TLS", "this listener should be a submission listener (smtp.submission / smtp.submissions)");
    return true;
  }
  const token = Buffer.from(`\0${account.address}\0${account.password}`, "utf8").toString("base64");
  let reply: { code: number; lines: string[] };
  try {
    reply = await command(client, `AUTH PLAIN ${token}`);
  } catch (error) {
    reportReadProblem(ctx, target, "login", "AUTH", error);
    return false;
  }
  const text = reply.lines.join(" / ");
  if (reply.code === 235) report.ok("login", `AUTH PLAIN as ${account.address}: ${text}`);
  else if (reply.code === 535) {
    ctx.credentialsRefusedOn = target.name;
    report.fail("login", `AUTH PLAIN as ${account.address} refused: ${text}`, "wrong password or unknown user (the server does not say which, by design); check with mailroom user list, reset with mailroom user passwd");
  } else if (reply.code === 454 || reply.code === 421) {
    report.fail("login", `AUTH PLAIN as ${account.address}: temporary failure: ${text}`, "store unavailable, or the login throttle after failed attempts; check the store and the server log");
  } else if (reply.code === 538) {
    report.fail("login", `AUTH refused without TLS: ${text}`, "plaintext login refused before STARTTLS");
  } else {
    report.fail("login", `AUTH PLAIN as ${account.address} failed: ${text}`, "see the server log");
  }
  if (reply.code === 421) return false;
  try {
    const rset = await command(client, "RSET");
    if (rset.code !== 250) report.warn("rset", `RSET: ${rset.lines.join(" / ")}`);
  } catch (error) {
    reportReadProblem(ctx, target, "rset", "RSET", error);
    return false;
  }
  return true;
}

async function quit(client: LineClient, target: DoctorTarget, ctx: DoctorContext): Promise<void> {
  try {
    const reply = await command(client, "QUIT");
    if (reply.code === 221) ctx.report.ok("quit", `QUIT: ${reply.lines[0] ?? ""}`);
    else ctx.report.warn("quit", `QUIT: ${reply.lines.join(" / ")}`);
  } catch (error) {
    reportReadProblem(ctx, target, "quit", "QUIT", error);
  }
}
