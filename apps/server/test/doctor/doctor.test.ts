import { Buffer } from "node:buffer";
import { createServer, type AddressInfo } from "node:net";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { runDoctor, targetsFromConfig, type DoctorOptions } from "../../src/doctor/index.js";
import {
  ADDRESS, PASSWORD, closedPort, collector, expiredCertificate, holdPop3Session, removeTempDirs, selfSigned, silentServer, startServers, type Servers,
} from "./fixtures.js";

const LOCALHOST = selfSigned("localhost");
const open: Servers[] = [];

async function servers(material = LOCALHOST, options: { pop3Remote?: boolean; storeDown?: boolean } = {}): Promise<Servers> {
  const s = await startServers(material, options);
  open.push(s);
  return s;
}

async function doctor(options: Omit<DoctorOptions, "out">): Promise<{ ok: boolean; text: string; lines: string[] }> {
  const out = collector();
  const result = await runDoctor({ timeoutMs: 5000, ...options, out: out.out });
  return { ok: result.ok, text: out.text(), lines: out.lines };
}

afterEach(async () => {
  for (const s of open.splice(0)) await s.close();
});
afterAll(removeTempDirs);

describe("runDoctor against real listeners", () => {
  it("reports every listener healthy, logs in, and leaves the mailbox as it was", async () => {
    const s = await servers();
    const box = s.store.mailbox(ADDRESS);
    const before = (await box.list()).map((m) => [m.uid, m.size]);

    const { ok, text, lines } = await doctor({ targets: s.targets, expectedHostname: "localhost", ca: LOCALHOST.cert, account: { address: ADDRESS, password: PASSWORD } });

    expect(text, text).not.toMatch(/✘/);
    expect(ok).toBe(true);
    for (const t of s.targets) expect(lines.some((l) => l.startsWith(`${t.name} 127.0.0.1:${t.port} (`))).toBe(true);
    expect(text).toMatch(/✔ greeting: 220 localhost ESMTP/);
    expect(text).toMatch(/✔ greeting: \+OK /);
    expect(text).toMatch(/✔ STARTTLS: 220 2\.0\.0/);
    expect(text).toMatch(/✔ STLS: \+OK/);
    expect(text).toMatch(/✔ TLS established: TLSv1\.[23], /);
    expect(text).toMatch(/names: +DNS:localhost/);
    expect(text).toMatch(/✔ certificate matches localhost/);
    expect(text).toMatch(/✔ certificate valid until \d{4}-\d\d-\d\d \(\d+ days left\)/);
    expect(text).toMatch(/✔ certificate chain trusted \(by --ca\)/);
    expect(text).toMatch(/✔ EHLO \(over TLS\): \d+ extensions/);
    expect(text).toMatch(/AUTH PLAIN LOGIN/);
    expect(text.match(/✔ AUTH PLAIN as alice@local\.test: 235 /g)).toHaveLength(2);
    expect(text.match(/✔ logged in as alice@local\.test: 2 messages/g)).toHaveLength(2);
    expect(text.match(/✔ STAT: 2 messages, \d+ octets \(nothing is deleted\)/g)).toHaveLength(2);
    expect(text).toMatch(/✔ QUIT: \+OK .*\(0 messages deleted\)/);
    expect(text).toMatch(/plaintext login offered before STLS: this connection comes from loopback/);
    expect(lines.at(-1)).toBe("✔ no problems found");

    expect(text).not.toContain(PASSWORD);
    expect((await box.list()).map((m) => [m.uid, m.size])).toEqual(before);
  });

  it("reports a self-signed certificate as a warning with the --ca hint when no CA is given", async () => {
    const s = await servers();
    const { ok, text } = await doctor({ targets: [s.target("pop3s")], expectedHostname: "localhost" });
    expect(ok).toBe(true);
    expect(text).toMatch(/ {2}! certificate is self-signed\n {6}→ pass --ca FILE/);
    expect(text).toMatch(/✔ no problems found, 1 warning/);
  });

  it("reports a closed port as connection refused", async () => {
    const port = await closedPort();
    const { ok, text, lines } = await doctor({ targets: [{ name: "pop3", host: "127.0.0.1", port, implicitTls: false }] });
    expect(ok).toBe(false);
    expect(lines).toContain(`  ✘ connection refused by 127.0.0.1:${port}`);
    expect(text).toMatch(/→ port closed: nothing listens on 127\.0\.0\.1:\d+/);
    expect(lines.at(-1)).toBe("✘ 1 problem");
  });

  it("flags a certificate whose name does not match the expected host name", async () => {
    const wrong = selfSigned("wrong.example");
    const s = await servers(wrong);
    const { ok, text } = await doctor({ targets: [s.target("submission"), s.target("pop3s")], expectedHostname: "localhost", ca: wrong.cert });
    expect(ok).toBe(false);
    expect(text.match(/✘ certificate name mismatch: it does not cover localhost/g)).toHaveLength(2);
    expect(text).toMatch(/names: +DNS:wrong\.example/);
    expect(text).toMatch(/→ clients connecting to localhost will refuse it/);
  });

  it("says wrong password or unknown user, never the password, and does not retry elsewhere", async () => {
    const s = await servers();
    const wrong = "not-the-Password-42";
    const { ok, text } = await doctor({
      targets: [s.target("pop3"), s.target("submission"), s.target("pop3s")],
      expectedHostname: "localhost",
      ca: LOCALHOST.cert,
      account: { address: ADDRESS, password: wrong },
    });
    expect(ok).toBe(false);
    expect(text).toMatch(/✘ login as alice@local\.test failed: -ERR \[AUTH\] invalid user name or password\n {6}→ wrong password or unknown user \(the server does not say which, by design\)/);
    expect(text.match(/! login skipped: the password was already refused on pop3/g)).toHaveLength(2);
    expect(text).not.toContain(wrong);
    expect(text).not.toContain(Buffer.from(`\0${ADDRESS}\0${wrong}`).toString("base64"));
  });

  it("reports [IN-USE] while another POP3 session holds the mailbox", async () => {
    const s = await servers();
    const held = await holdPop3Session(s.target("pop3").port);
    try {
      const { ok, text } = await doctor({ targets: [s.target("pop3s")], expectedHostname: "localhost", ca: LOCALHOST.cert, account: { address: ADDRESS, password: PASSWORD } });
      expect(ok).toBe(false);
      expect(text).toMatch(/✘ login as alice@local\.test failed: -ERR \[IN-USE\] mailbox is in use by another session\n {6}→ mailbox in use by another session/);
      expect(text).not.toContain(PASSWORD);
    } finally {
      await held.quit();
    }
  });

  it("reports [SYS/TEMP] and a temporary AUTH failure when the store is unavailable", async () => {
    const s = await servers(LOCALHOST, { storeDown: true });
    const { ok, text } = await doctor({
      targets: [s.target("pop3s"), s.target("submissions")],
      expectedHostname: "localhost",
      ca: LOCALHOST.cert,
      account: { address: ADDRESS, password: PASSWORD },
    });
    expect(ok).toBe(false);
    expect(text).toMatch(/✘ login as alice@local\.test failed: -ERR \[SYS\/TEMP\][^\n]*\n {6}→ store unavailable or server busy/);
    expect(text).toMatch(/✘ AUTH PLAIN as alice@local\.test: temporary failure: 454 4\.7\.0[^\n]*\n {6}→ store unavailable/);
    expect(text).not.toContain(PASSWORD);
  });

  it("notes that plaintext login is refused before STLS for a remote client, then logs in after STLS", async () => {
    const s = await servers(LOCALHOST, { pop3Remote: true });
    const { ok, text } = await doctor({ targets: [s.target("pop3")], expectedHostname: "localhost", ca: LOCALHOST.cert, account: { address: ADDRESS, password: PASSWORD } });
    expect(ok).toBe(true);
    expect(text).toMatch(/✔ plaintext login refused before STLS \(expected on non-loopback connections\)/);
    expect(text).toMatch(/✔ logged in as alice@local\.test/);
  });

  it("recognises the wrong protocol on a port", async () => {
    const s = await servers();
    const { ok, text } = await doctor({ targets: [{ ...s.target("smtp"), name: "pop3" }, { ...s.target("pop3"), name: "smtp" }] });
    expect(ok).toBe(false);
    expect(text).toMatch(/✘ wrong protocol: an SMTP server answered \(220 localhost ESMTP/);
    expect(text).toMatch(/✘ wrong protocol: a POP3 server answered \(\+OK /);
  });

  it("points at the port when implicit TLS meets a plain listener", async () => {
    const s = await servers();
    const { ok, text } = await doctor({ targets: [{ ...s.target("pop3"), name: "pop3s", implicitTls: true }] });
    expect(ok).toBe(false);
    expect(text).toMatch(/✘ TLS handshake failed: [^\n]*\n {6}→ wrong port for implicit TLS\?/);
  });

  it("reports a silent port as a greeting timeout with the implicit-TLS hint", async () => {
    const silent = await silentServer();
    try {
      const { ok, text } = await doctor({ targets: [{ name: "submission", host: "127.0.0.1", port: silent.port, implicitTls: false }], timeoutMs: 300 });
      expect(ok).toBe(false);
      expect(text).toMatch(/✘ no SMTP greeting: no reply within 0\.3 s\n {6}→ if \d+ is an implicit-TLS port/);
    } finally {
      await silent.close();
    }
  });

  /**
   * A server that greets, answers the first command with `answer`, then sends `flood` without end
   * (as fast as the doctor takes it), and the doctor's report on it.
   */
  async function doctorAgainstFlood(name: "submission" | "pop3", greeting: string, answer: string, flood: string) {
    const hostile = createServer((socket) => {
      socket.on("error", () => {});
      socket.write(greeting);
      socket.once("data", () => {
        socket.write(answer);
        const more = (): void => {
          while (socket.writable && socket.write(flood));
          if (socket.writable) socket.once("drain", more);
        };
        more();
      });
    });
    await new Promise<void>((resolve) => hostile.listen(0, "127.0.0.1", resolve));
    try {
      const port = (hostile.address() as AddressInfo).port;
      return await doctor({ targets: [{ name, host: "127.0.0.1", port, implicitTls: false }], timeoutMs: 5_000 });
    } finally {
      hostile.close();
    }
  }

  it("shows a hostile server's escape codes as '?' and gives up on a line without end", async () => {
    // A greeting that would clear the operator's screen, then an EHLO reply line that never ends.
    const { ok, text } = await doctorAgainstFlood("submission", "220 evil\u001b[2J\u001b[H ESMTP\r\n", "", "x".repeat(16_384));
    expect(ok).toBe(false);
    expect(text).not.toContain("\u001b");
    expect(text).toContain("220 evil?[2J?[H ESMTP");
    expect(text).toMatch(/line longer than 65536 octets/);
  });

  it("gives up on a POP3 server whose CAPA answer never ends", async () => {
    const { ok, text } = await doctorAgainstFlood("pop3", "+OK ready\r\n", "+OK capabilities follow\r\n", "X-MORE\r\n".repeat(2_000));
    expect(ok).toBe(false);
    expect(text).toMatch(/reply of more than 200 lines/);
  });

  const expired = expiredCertificate("localhost");
  it.skipIf(expired === null)("flags an expired certificate", async () => {
    const s = await servers(expired!);
    const { ok, text } = await doctor({ targets: [s.target("pop3s")], expectedHostname: "localhost", ca: expired!.cert });
    expect(ok).toBe(false);
    expect(text).toMatch(/✘ certificate expired on 2020-02-01 \(\d+ days ago\)\n {6}→ renew the certificate/);
    expect(text).toMatch(/✔ certificate chain trusted \(by --ca\)/);
  });
});

describe("targetsFromConfig", () => {
  it("maps every listener and reaches wildcard addresses over loopback", () => {
    const targets = targetsFromConfig({
      smtp: {
        listen: [{ host: "0.0.0.0", port: 25 }],
        submission: [{ host: "::", port: 587 }],
        submissions: [{ host: "192.0.2.7", port: 465 }],
        maxMessageSize: 1, maxRecipients: 1, allowLoopbackPlaintextAuth: false, bareLineEndings: "reject", maxSessionSeconds: 1800,
      },
      pop3: {
        listen: [{ host: "127.0.0.1", port: 110 }, { host: "127.0.0.1", port: 0 }],
        pop3s: [{ host: "0.0.0.0", port: 995 }],
        allowPlaintextAuth: false, expireDays: null, idleTimeoutSeconds: 600, loginTimeoutSeconds: 180, leaseTtlSeconds: 60, loginDelaySeconds: 0,
      },
    });
    expect(targets).toEqual([
      { name: "smtp", host: "127.0.0.1", port: 25, implicitTls: false },
      { name: "submission", host: "::1", port: 587, implicitTls: false },
      { name: "submissions", host: "192.0.2.7", port: 465, implicitTls: true },
      { name: "pop3", host: "127.0.0.1", port: 110, implicitTls: false },
      { name: "pop3s", host: "127.0.0.1", port: 995, implicitTls: true },
    ]);
  });
});
