/**
 * The whole server as a user runs it: `mailroom serve` with a config file, real clients (Python's
 * smtplib and poplib, nodemailer), a Maildir store in a temp dir and a certificate made with openssl.
 */
import { copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTransport } from "nodemailer";
import { cleanup, opensslCertificate, python, runCli, serve, tempDir, writeFile, type Served } from "./helpers.js";

afterAll(cleanup);

const dir = tempDir();
const { cert, key } = opensslCertificate(dir);
const liveCert = `${dir}/live-cert.pem`;
const liveKey = `${dir}/live-key.pem`;
copyFileSync(cert, liveCert);
copyFileSync(key, liveKey);
const config = writeFile(
  dir,
  "mailroom.toml",
  `hostname = "mail.example.test"
[store]
url = "maildir:./mail"
[smtp]
listen = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
max_session_seconds = 5
[pop3]
listen = ["127.0.0.1:0"]
pop3s = ["127.0.0.1:0"]
login_timeout_seconds = 3
[tls]
cert = "live-cert.pem"
key = "live-key.pem"
[limits]
shutdown_timeout_seconds = 3
`,
);
const PASSWORD = "s3cret pass";

const SEND = `
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net", timeout=10)
s.sendmail(sys.argv[2], sys.argv[3:], sys.stdin.buffer.read())
s.quit()
`;

const FETCH = `
import poplib, ssl, sys, json, base64
port, user, password, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
if mode == "pop3s":
    ctx = ssl.create_default_context(cafile=sys.argv[5])
    p = poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=10)
else:
    p = poplib.POP3("127.0.0.1", port, timeout=10)
p.user(user)
p.pass_(password)
out = {"uidl": [l.decode() for l in p.uidl()[1]], "list": [l.decode() for l in p.list()[1]], "messages": []}
for i in range(1, len(out["list"]) + 1):
    lines = p.retr(i)[1]
    out["messages"].append(base64.b64encode(b"\\r\\n".join(lines) + b"\\r\\n").decode())
if mode == "dele-all":
    for i in range(1, len(out["list"]) + 1):
        p.dele(i)
p.quit()
print(json.dumps(out))
`;

interface Fetched {
  uidl: string[];
  list: string[];
  messages: Buffer[];
}

async function fetch(port: number, user: string, mode: "plain" | "pop3s" | "dele-all" = "plain"): Promise<Fetched> {
  const out = JSON.parse(await python(FETCH, [String(port), user, PASSWORD, mode, cert])) as { uidl: string[]; list: string[]; messages: string[] };
  return { ...out, messages: out.messages.map((m) => Buffer.from(m, "base64")) };
}

let server: Served;

beforeAll(async () => {
  const run = (args: string[], stdin?: string) => runCli([...args, "--config", config], stdin === undefined ? {} : { stdin });
  expect((await run(["domain", "add", "example.test"])).code).toBe(0);
  expect((await run(["user", "add", "bob@example.test", "--password-stdin"], `${PASSWORD}\n`)).code).toBe(0);
  expect((await run(["user", "add", "carol@example.test", "--password-stdin"], `${PASSWORD}\n`)).code).toBe(0);
  server = await serve(config, { cwd: dir });
});

/** A raw connection that collects everything the server sends, once its greeting has come. */
async function openSession(port: number, greeting: RegExp) {
  const socket = connect(port, "127.0.0.1");
  const state = { received: "" };
  socket.setEncoding("utf8").on("data", (d: string) => (state.received += d));
  const closed = new Promise<void>((resolve) => socket.on("close", () => resolve()));
  socket.on("error", () => {});
  const end = Date.now() + 10_000;
  while (!state.received.includes("\r\n")) {
    if (Date.now() > end) throw new Error("no greeting");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  expect(state.received).toMatch(greeting);
  return { socket, state, closed };
}

describe("mailroom serve", () => {
  it("logs every listener's actual address", () => {
    expect(Object.keys(server.addresses).sort()).toEqual(["pop3", "pop3s", "smtp", "submission", "submissions"]);
    for (const address of Object.values(server.addresses)) expect(address).toMatch(/^127\.0\.0\.1:\d+$/);
    for (const name of Object.keys(server.addresses)) {
      expect(server.lines).toContainEqual(expect.objectContaining({ msg: "listening", listener: name, address: server.addresses[name] }));
    }
  });

  it("delivers over SMTP and gives the message back byte for byte over POP3, with stable UIDLs", async () => {
    const original = Buffer.from(
      [
        "From: Sender <sender@remote.test>",
        "To: Bob <bob@example.test>",
        "Subject: round trip",
        "Message-ID: <e2e-1@remote.test>",
        "",
        "First line.",
        ".a line that starts with a dot",
        "..two dots",
        "",
        "   trailing spaces   ",
        "",
      ].join("\r\n"),
    );
    await python(SEND, [String(server.port("smtp")), "sender@remote.test", "bob@example.test"], original.toString("latin1"));

    const first = await fetch(server.port("pop3"), "bob@example.test");
    expect(first.messages).toHaveLength(1);
    const got = first.messages[0]!;
    // The server adds trace headers on top; everything the client sent follows unchanged.
    expect(got.subarray(got.length - original.length).equals(original)).toBe(true);
    const added = got.subarray(0, got.length - original.length).toString("latin1");
    expect(added).toMatch(/^Return-Path: <sender@remote\.test>\r\nReceived: from client\.example\.net /);
    // LIST reports exactly the octets RETR yields.
    expect(first.list).toEqual([`1 ${got.length}`]);

    const second = await fetch(server.port("pop3"), "bob@example.test");
    expect(second.uidl).toEqual(first.uidl);
    expect(second.messages[0]!.equals(got)).toBe(true);

    // DELE then QUIT removes it.
    await fetch(server.port("pop3"), "bob@example.test", "dele-all");
    const after = await fetch(server.port("pop3"), "bob@example.test");
    expect(after.list).toEqual([]);
  });

  it("accepts submission with STARTTLS and AUTH (nodemailer) for a local user, readable over POP3S", async () => {
    const ca = readFileSync(cert, "utf8");
    const transport = createTransport({
      host: "127.0.0.1",
      port: server.port("submission"),
      secure: false,
      requireTLS: true,
      name: "client.example.net",
      auth: { user: "bob@example.test", pass: PASSWORD },
      tls: { ca, servername: "localhost" },
    });
    const info = await transport.sendMail({
      from: "bob@example.test",
      to: "carol@example.test",
      subject: "over submission",
      text: "Hello Carol.\n",
    });
    transport.close();
    expect(info.accepted).toEqual(["carol@example.test"]);

    const implicit = createTransport({
      host: "127.0.0.1",
      port: server.port("submissions"),
      secure: true,
      name: "client.example.net",
      auth: { user: "bob@example.test", pass: PASSWORD },
      tls: { ca, servername: "localhost" },
    });
    await implicit.sendMail({ from: "bob@example.test", to: "carol@example.test", subject: "over implicit TLS", text: "Again.\n" });
    implicit.close();

    const mail = await fetch(server.port("pop3s"), "carol@example.test", "pop3s");
    const texts = mail.messages.map((m) => m.toString("utf8"));
    expect(texts).toHaveLength(2);
    expect(texts[0]).toContain("Subject: over submission");
    expect(texts[0]).toContain("Hello Carol.");
    expect(texts[1]).toContain("Subject: over implicit TLS");
  });

  it("refuses submission AUTH with a wrong password", async () => {
    const transport = createTransport({
      host: "127.0.0.1",
      port: server.port("submission"),
      requireTLS: true,
      auth: { user: "bob@example.test", pass: "wrong" },
      tls: { ca: readFileSync(cert, "utf8"), servername: "localhost" },
    });
    await expect(transport.sendMail({ from: "bob@example.test", to: "carol@example.test", text: "x" })).rejects.toThrow(/535/);
    transport.close();
  });

  it("never logs a password", () => {
    const all = JSON.stringify(server.lines);
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain(Buffer.from(`\0bob@example.test\0${PASSWORD}`).toString("base64"));
  });

  it("passes `mailroom doctor` against the running listeners, without printing the password", async () => {
    const env: Record<string, string> = {
      MAILROOM_SMTP_LISTEN: server.addresses["smtp"]!,
      MAILROOM_SMTP_SUBMISSION: server.addresses["submission"]!,
      MAILROOM_SMTP_SUBMISSIONS: server.addresses["submissions"]!,
      MAILROOM_POP3_LISTEN: server.addresses["pop3"]!,
      MAILROOM_POP3_POP3S: server.addresses["pop3s"]!,
    };
    const result = await runCli(
      ["doctor", "--config", config, "--host", "localhost", "--ca", cert, "--user", "bob@example.test", "--password-stdin"],
      { stdin: `${PASSWORD}\n`, env },
    );
    expect(result.stderr).toBe("");
    expect(result.code).toBe(0);
    expect(result.stdout).not.toContain(PASSWORD);
    expect(result.stdout).not.toContain("✘");
    // One section per listener, headed by its name and address.
    for (const name of ["smtp", "submission", "submissions", "pop3", "pop3s"]) {
      expect(result.stdout).toMatch(new RegExp(`^${name} .*${server.addresses[name]!.replace(/\./g, "\\.")}`, "m"));
    }
  });

  it("reloads the certificate on SIGHUP and keeps the old one when the new one is bad", async () => {
    const fresh = opensslCertificate(dir, "fresh");
    copyFileSync(fresh.cert, liveCert);
    copyFileSync(fresh.key, liveKey);
    server.child.kill("SIGHUP");
    await server.waitForLine((line) => line["msg"] === "TLS certificate reloaded");

    writeFileSync(liveCert, "not a certificate\n");
    server.child.kill("SIGHUP");
    const failed = await server.waitForLine((line) => line["msg"] === "TLS reload failed; keeping the old certificate");
    expect(String(failed["err"])).not.toContain("\n");
    // As at start-up, the keys and the files, so that the log says what to fix.
    const unusable = `${config}: tls.cert / tls.key: not a usable certificate and key (${liveCert}, ${liveKey}): `;
    expect(String(failed["err"])).toMatch(new RegExp(`^${unusable.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}.+`));
    // Each file fine on its own, but not a pair.
    copyFileSync(fresh.cert, liveCert);
    copyFileSync(key, liveKey);
    server.child.kill("SIGHUP");
    const isFailure = (line: Record<string, unknown>): boolean => line["msg"] === "TLS reload failed; keeping the old certificate";
    await server.waitForLine(() => server.lines.filter(isFailure).length === 2);
    expect(server.lines.filter(isFailure)[1]!["err"]).toBe(`${unusable}TLS key does not match the certificate`);
    copyFileSync(fresh.key, liveKey);

    // Still serving TLS with the last good certificate.
    const mail = await fetch(server.port("pop3s"), "carol@example.test", "pop3s").catch((e: unknown) => e);
    expect(mail).toBeInstanceOf(Error); // the client pins the first certificate, the server now shows "fresh"
    const pinned = JSON.parse(
      await python(
        `
import poplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
p = poplib.POP3_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=10)
print('"' + p.getwelcome().decode()[:3] + '"')
p.quit()
`,
        [String(server.port("pop3s")), fresh.cert],
      ),
    ) as string;
    expect(pinned).toBe("+OK");
  });

  it("ends a POP3 connection not logged in after pop3.login_timeout_seconds, an SMTP one after smtp.max_session_seconds", async () => {
    const started = Date.now();
    const pop3 = await openSession(server.port("pop3"), /^\+OK /);
    const smtp = await openSession(server.port("smtp"), /^220 /);
    // Busy clients: neither is idle, so only the two limits can end them.
    const busy = setInterval(() => {
      pop3.socket.write("CAPA\r\n");
      smtp.socket.write("NOOP\r\n");
    }, 500);
    try {
      await pop3.closed;
      expect(Date.now() - started).toBeGreaterThanOrEqual(2900);
      expect(pop3.state.received).toMatch(/\r\n-ERR no login within the time limit, closing connection\r\n$/);
      await smtp.closed;
      expect(Date.now() - started).toBeGreaterThanOrEqual(4900);
      expect(smtp.state.received).toMatch(/\r\n250 2\.0\.0 OK\r\n421 4\.4\.2 mail\.example\.test connection time limit reached, closing connection\r\n$/);
    } finally {
      clearInterval(busy);
    }
  });

  it("stops on SIGTERM: tells open sessions, exits 0 within the deadline", async () => {
    const pop3 = await openSession(server.port("pop3"), /^\+OK /);
    const smtp = await openSession(server.port("smtp"), /^220 /);

    const started = Date.now();
    server.child.kill("SIGTERM");
    const code = await server.exited;
    const elapsed = Date.now() - started;
    await Promise.all([pop3.closed, smtp.closed]);
    expect(code).toBe(0);
    expect(elapsed).toBeLessThan(3_000 + 2_000);
    expect(pop3.state.received.split("\r\n")[1]).toMatch(/^-ERR /);
    expect(smtp.state.received.split("\r\n")[1]).toMatch(/^421 /);
    expect(server.lines).toContainEqual(expect.objectContaining({ msg: "stopped" }));
  });
});
