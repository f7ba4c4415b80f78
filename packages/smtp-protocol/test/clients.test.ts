import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Store } from "@mailroom/store";
import { createSmtpServer, type SmtpServer } from "../src/index.js";
import { HOST, makeCertificate, seededStore, storedMessages, tlsContext } from "./helpers.js";

/** Real third-party clients: Python's smtplib and swaks, over loopback TCP. */

let cert: ReturnType<typeof makeCertificate>;
let dir: string;
let store: Store;
let server: SmtpServer;
let mxPort: number;
let submissionPort: number;

beforeAll(async () => {
  cert = makeCertificate();
  dir = mkdtempSync(join(tmpdir(), "smtp-clients-"));
  store = await seededStore();
  server = createSmtpServer({ store, hostname: HOST, tls: tlsContext(cert) });
  mxPort = (await server.listen({ host: "127.0.0.1", port: 0, mode: "mx" })).port;
  submissionPort = (await server.listen({ host: "127.0.0.1", port: 0, mode: "submission" })).port;
});

afterAll(async () => {
  await server.close({ deadlineMs: 1000 });
  cert.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** Runs a program to completion (bounded), failing with its output. */
function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${file} failed: ${error.message}\n${stdout}\n${stderr}`));
      else resolve(stdout + stderr);
    });
  });
}

const LONG = "L".repeat(998);
const ATTACHMENT = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 256)).toString("base64").replace(/.{76}/g, "$&\r\n");

/** A message with dot lines, a 998-octet line, UTF-8 text and a base64 attachment (CRLF line ends). */
function message(from: string, to: string): string {
  return [
    `From: ${from}`,
    `To: ${to}`,
    "Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=",
    "MIME-Version: 1.0",
    'Content-Type: multipart/mixed; boundary="b1"',
    "",
    "--b1",
    "Content-Type: text/plain; charset=utf-8",
    "Content-Transfer-Encoding: 8bit",
    "",
    ".",
    "..two dots",
    ".leading dot",
    "ünïcödé ✓ 日本語",
    LONG,
    "--b1",
    "Content-Type: application/octet-stream",
    "Content-Transfer-Encoding: base64",
    'Content-Disposition: attachment; filename="bytes.bin"',
    "",
    ATTACHMENT.trimEnd(),
    "--b1--",
    "",
  ].join("\r\n");
}

const PY = `
import smtplib, ssl, sys
port, mode, sender, rcpt, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
data = open(path, 'rb').read()
s = smtplib.SMTP('127.0.0.1', port, local_hostname='py.client.test', timeout=20)
s.ehlo()
if mode == 'submission':
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s.starttls(context=ctx)
    s.ehlo()
    s.login('alice@local.test', 'alice-secret')
s.sendmail(sender, [rcpt], data, mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
s.quit()
print('sent')
`;

describe("Python smtplib", () => {
  it("delivers a message to the MX with SMTPUTF8 and the stored bytes are exact", async () => {
    const body = message("jörg@far.example", "bob@local.test");
    writeFileSync(join(dir, "py-mx.eml"), body);
    writeFileSync(join(dir, "client.py"), PY);
    await run("python3", [join(dir, "client.py"), String(mxPort), "mx", "jörg@far.example", "bob@local.test", join(dir, "py-mx.eml")]);
    const [stored] = await storedMessages(store, "bob@local.test");
    const header = /^Return-Path: <jörg@far\.example>\r\nReceived: from py\.client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.local\.test \(Mailroom\) with UTF8SMTP id [A-Z0-9]+\r\n\tfor <bob@local\.test>; [A-Z][a-z]{2}, \d{1,2} [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000\r\n/;
    expect(stored).toMatch(header);
    expect(stored!.replace(header, "")).toBe(body);
  });

  it("submits over STARTTLS with AUTH and the trace says UTF8SMTPSA", async () => {
    const body = message("alice@local.test", "carol@other-local.test");
    writeFileSync(join(dir, "py-sub.eml"), body);
    await run("python3", [join(dir, "client.py"), String(submissionPort), "submission", "alice@local.test", "carol@other-local.test", join(dir, "py-sub.eml")]);
    const [stored] = await storedMessages(store, "carol@other-local.test");
    const header = /^Return-Path: <alice@local\.test>\r\nReceived: from py\.client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.local\.test \(Mailroom\) with UTF8SMTPSA id [A-Z0-9]+\r\n\t\(using TLSv1\.[23] with cipher [A-Za-z0-9_-]+\)\r\n\tfor <carol@other-local\.test>; [^\r\n]+\r\n/;
    expect(stored).toMatch(header);
    expect(stored!.replace(header, "")).toBe(body);
  });
});

describe("swaks", () => {
  it("STARTTLS + AUTH PLAIN on a submission listener; stored bytes exact", async () => {
    const body = message("alice@local.test", "bob@local.test");
    // swaks ends the data with its own CRLF before the final dot.
    writeFileSync(join(dir, "swaks.eml"), body.slice(0, -2));
    const out = await run("/usr/bin/swaks", [
      "--server", `127.0.0.1:${submissionPort}`, "--tls", "--ehlo", "swaks.client.test",
      "--auth", "PLAIN", "--auth-user", "alice@local.test", "--auth-password", "alice-secret",
      "--from", "alice@local.test", "--to", "bob@local.test", "--data", join(dir, "swaks.eml"), "--timeout", "20",
    ]);
    expect(out).toContain("235 2.7.0 Authentication successful");
    const messages = await storedMessages(store, "bob@local.test");
    const stored = messages[messages.length - 1]!;
    const header = /^Return-Path: <alice@local\.test>\r\nReceived: from swaks\.client\.test \(\[127\.0\.0\.1\]\)\r\n\tby mx\.local\.test \(Mailroom\) with ESMTPSA id [A-Z0-9]+\r\n\t\(using TLSv1\.[23] with cipher [A-Za-z0-9_-]+\)\r\n\tfor <bob@local\.test>; [^\r\n]+\r\n/;
    expect(stored).toMatch(header);
    expect(stored.replace(header, "")).toBe(body);
  });

  it("AUTH LOGIN without TLS is refused by the server (538), nothing stored", async () => {
    const before = (await storedMessages(store, "bob@local.test")).length;
    await expect(
      run("/usr/bin/swaks", [
        "--server", `127.0.0.1:${submissionPort}`, "--auth", "LOGIN", "--auth-user", "alice@local.test",
        "--auth-password", "alice-secret", "--from", "alice@local.test", "--to", "bob@local.test", "--timeout", "20",
      ]),
    ).rejects.toThrow();
    expect((await storedMessages(store, "bob@local.test")).length).toBe(before);
  });
});
