// The same scenario under Node, Bun and Deno, on every store: start `mailroom serve`, deliver one
// message over SMTP with STARTTLS, fetch it over POP3 after STLS, compare bytes, stop with SIGTERM.
// Also per runtime: a server killed while a POP3 session holds a mailbox, and the restarted server
// giving that mailbox to the next login at once (the process check behind lease takeover).
// A failure names the runtime, the store and the step.
import { randomBytes } from "node:crypto";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { admin, dropStoreData, killAll, makeCertificate, runtimes, serve, step, storeLines, writeConfig, type StoreKind } from "../../support/server.js";
import { LineClient } from "../../support/wire.js";

const run = promisify(execFile);
let dir: string;
let tls: { cert: string; key: string };
let ca: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mailroom-runtimes-"));
  tls = makeCertificate(dir);
  ca = readFileSync(tls.cert, "utf8");
});

afterAll(() => {
  killAll();
  rmSync(dir, { recursive: true, force: true });
});

const stores: StoreKind[] = ["fs", "postgres", "redis"];

describe.each(Object.keys(runtimes))("runtime %s", (runtime) => {
  it(`${runtime}: store-fs makes small deliveries on its file thread, reuses its retired log file, and the program then ends by itself`, async () => {
    const [command, ...args] = runtimes[runtime]!;
    const fixture = fileURLToPath(new URL("./fixtures/file-thread.mjs", import.meta.url));
    const mail = join(dir, `file-thread-${runtime}`);
    const { stdout } = await run(command!, [...args, fixture, mail], { timeout: 60_000, cwd: fileURLToPath(new URL("..", import.meta.url)) });
    expect(JSON.parse(stdout.trim())).toEqual({ count: 40, reused: true });
    const files = readdirSync(join(mail, "example.test", "alice", "new"));
    expect(files).toHaveLength(40);
    const bodies = files.map((name) => readFileSync(join(mail, "example.test", "alice", "new", name), "latin1"));
    expect(bodies.filter((body) => /^Subject: (\d+)\r\n\r\nmessage \1\r\n$/.test(body))).toHaveLength(40);
  });

  it.runIf(process.platform === "linux")(`${runtime}: store-fs's one-write messages are opened with O_SYNC as the kernel sees it`, async () => {
    const [command, ...args] = runtimes[runtime]!;
    const fixture = fileURLToPath(new URL("./fixtures/sync-writes.mjs", import.meta.url));
    const work = mkdtempSync(join(dir, `sync-writes-${runtime}-`));
    const { stdout } = await run(command!, [...args, fixture, work], { timeout: 60_000, cwd: fileURLToPath(new URL("..", import.meta.url)) });
    expect(JSON.parse(stdout.trim())).toEqual({ syncFlag: true, intact: true });
  });

  it(`${runtime}: a POP3 mailbox held by a killed server is free again as soon as it restarts`, async () => {
    const tag = `rt_kill_${runtime}_${randomBytes(3).toString("hex")}`;
    const config = writeConfig({ dir, name: tag, store: storeLines("fs", dir, tag), tls, extra: ["allow_plaintext_auth = true"] });
    const password = "runtime-kill-pw";
    admin(config, ["domain", "add", "example.test"]);
    admin(config, ["user", "add", "held@example.test", "--password-stdin"], `${password}\n`);
    const login = async (port: number): Promise<LineClient> => {
      const pop = await LineClient.open("127.0.0.1", port);
      await pop.reply(/^\+OK/, "greeting");
      await pop.expect("USER held@example.test", /^\+OK/, "USER");
      await pop.expect(`PASS ${password}`, /^\+OK/, "PASS");
      return pop;
    };
    const first = await step(`[${runtime}] start the server`, () => serve(config, runtime));
    const holder = await step(`[${runtime}] log in`, () => login(first.ports.pop3!));
    const exited = new Promise((resolve) => first.child.once("exit", resolve));
    first.child.kill("SIGKILL");
    await exited;
    holder.close();
    // The lease (default TTL 60 s) names the killed process: the restarted server sees it gone.
    const second = await step(`[${runtime}] restart the server`, () => serve(config, runtime));
    try {
      const pop = await step(`[${runtime}] log in again at once`, () => login(second.ports.pop3!));
      await pop.expect("QUIT", /^\+OK/, "QUIT");
      pop.close();
    } finally {
      await second.stop();
      dropStoreData("fs", tag);
    }
  });

  it(`${runtime}: answers a client that sends its whole session and then shuts down its side`, async () => {
    const tag = `rt_half_${runtime}_${randomBytes(3).toString("hex")}`;
    const config = writeConfig({ dir, name: tag, store: storeLines("fs", dir, tag), tls, extra: ["allow_plaintext_auth = true"] });
    admin(config, ["domain", "add", "example.test"]);
    admin(config, ["user", "add", "half@example.test", "--password-stdin"], "half-pw\n");
    const server = await step(`[${runtime}] start the server`, () => serve(config, runtime));
    // Everything in one write, then a half-close (as `printf … | nc -N` does); read until the server closes.
    const session = (port: number, script: string): Promise<string> =>
      new Promise((resolve, reject) => {
        const socket = connect({ host: "127.0.0.1", port }, () => {
          socket.write(script);
          socket.end();
        });
        let got = "";
        socket.setEncoding("latin1");
        socket.on("data", (d: string) => (got += d));
        socket.on("error", reject);
        socket.on("close", () => resolve(got));
        socket.setTimeout(10_000, () => socket.destroy(new Error(`no close; got ${JSON.stringify(got)}`)));
      });
    try {
      const smtp = await step(`[${runtime}] SMTP, half-closed`, () =>
        session(
          server.ports.smtp!,
          "EHLO client.test\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<half@example.test>\r\nDATA\r\nSubject: half\r\n\r\nin one go\r\n.\r\nQUIT\r\n",
        ),
      );
      expect(smtp).toMatch(/\r\n250 2\.0\.0 OK: message accepted as \S+\r\n221 [^\r]*\r\n$/);
      const pop = await step(`[${runtime}] POP3, half-closed`, () =>
        session(server.ports.pop3!, "USER half@example.test\r\nPASS half-pw\r\nSTAT\r\nDELE 1\r\nQUIT\r\n"),
      );
      expect(pop).toMatch(/\r\n\+OK 1 \d+\r\n\+OK message 1 deleted\r\n\+OK [^\r]*signing off \(1 message deleted\)\r\n$/);
    } finally {
      await server.stop();
      dropStoreData("fs", tag);
    }
  });

  it.each(stores)(`${runtime}: delivers over SMTP+STARTTLS and retrieves over POP3+STLS on store %s`, async (store) => {
    const tag = `rt_${runtime}_${store}_${randomBytes(3).toString("hex")}`;
    const config = writeConfig({ dir, name: tag, store: storeLines(store, dir, tag), tls });
    const password = "runtime-smoke-pw";
    await step("set up domain and user", async () => {
      admin(config, ["domain", "add", "example.test"]);
      admin(config, ["user", "add", "smoke@example.test", "--password-stdin"], `${password}\n`);
    });
    const server = await step(`[${runtime}/${store}] start the server`, () => serve(config, runtime));
    const label = `[${runtime}/${store}]`;
    // About 1.7 MB of numbered lines: the message spans many socket reads, and the server holds some of
    // them while the store writes, so a runtime that reused its read buffers would garble it.
    const lines = Array.from({ length: 20_000 }, (_, i) => `line ${String(i).padStart(6, "0")} ${"x".repeat(70)}\r\n`).join("");
    const body = `Subject: smoke ${tag}\r\nFrom: a@client.test\r\nTo: smoke@example.test\r\n\r\nhello from ${runtime}\r\n.dot line\r\n${lines}`;
    const small = `Subject: small ${tag}\r\n\r\n.a dot line\r\nsmall from ${runtime}\r\n`;
    try {
      await step(`${label} SMTP with STARTTLS`, async () => {
        const smtp = await LineClient.open("127.0.0.1", server.ports.smtp!);
        await smtp.reply(/^220 /, "greeting");
        await smtp.expect("EHLO client.test", /STARTTLS/, "EHLO");
        await smtp.expect("STARTTLS", /^220 /, "STARTTLS");
        await smtp.upgrade("localhost", ca);
        await smtp.expect("EHLO client.test", /^250/, "EHLO after TLS");
        await smtp.expect("MAIL FROM:<a@client.test>", /^250 /, "MAIL");
        await smtp.expect("RCPT TO:<smoke@example.test>", /^250 /, "RCPT");
        await smtp.expect("DATA", /^354 /, "DATA");
        smtp.send(`${body.replace(/\r\n\./g, "\r\n..")}.`);
        await smtp.reply(/^250 /, "end of data");
        // A small second message: read back through the store's synchronous path for small files.
        await smtp.expect("MAIL FROM:<a@client.test>", /^250 /, "MAIL (small)");
        await smtp.expect("RCPT TO:<smoke@example.test>", /^250 /, "RCPT (small)");
        await smtp.expect("DATA", /^354 /, "DATA (small)");
        smtp.send(`${small.replace(/\r\n\./g, "\r\n..")}.`);
        await smtp.reply(/^250 /, "end of data (small)");
        await smtp.expect("QUIT", /^221 /, "QUIT");
        smtp.close();
      });
      await step(`${label} POP3 with STLS`, async () => {
        const pop = await LineClient.open("127.0.0.1", server.ports.pop3!);
        await pop.reply(/^\+OK/, "greeting");
        await pop.expect("STLS", /^\+OK/, "STLS");
        await pop.upgrade("localhost", ca);
        await pop.expect("USER smoke@example.test", /^\+OK/, "USER");
        await pop.expect(`PASS ${password}`, /^\+OK/, "PASS");
        await pop.expect("STAT", /^\+OK 2 /, "STAT");
        await pop.expect("RETR 1", /^\+OK/, "RETR");
        const message = (await pop.multiline("RETR body")).toString("utf8");
        expect(message.endsWith(body)).toBe(true);
        expect(message).toMatch(/^Return-Path: <a@client\.test>\r\n/);
        await pop.expect("RETR 2", /^\+OK/, "RETR (small)");
        const second = (await pop.multiline("RETR body (small)")).toString("utf8");
        expect(second.endsWith(small)).toBe(true);
        await pop.expect("QUIT", /^\+OK/, "QUIT");
        pop.close();
      });
      await step(`${label} stop with SIGTERM`, async () => {
        const code = await server.stop();
        if (code !== 0) throw new Error(`exit code ${String(code)}`);
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}\n--- server output ---\n${server.output().slice(-4000)}`);
    } finally {
      await server.stop();
      dropStoreData(store, tag);
    }
  });
});
