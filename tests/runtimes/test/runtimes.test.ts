// The same scenario under Node, Bun and Deno, on every store: start `mailroom serve`, deliver one
// message over SMTP with STARTTLS, fetch it over POP3 after STLS, compare bytes, stop with SIGTERM.
// A failure names the runtime, the store and the step.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { LineClient } from "./wire.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const cli = join(root, "apps/server/bin/mailroom.js");
const runtimes: Record<string, string[]> = {
  node: [process.execPath],
  bun: [join(root, "node_modules/.bin/bun")],
  // The real binary, not the .bin wrapper: killing the wrapper would orphan the server (TOOLCHAIN G13).
  deno: [join(root, "node_modules/deno/deno"), "run", "-A"],
};
const pgUrl = process.env.MAILROOM_TEST_PG ?? "postgres://postgres@127.0.0.1:5432/postgres";
const redisUrl = process.env.MAILROOM_TEST_REDIS ?? "redis://127.0.0.1:6379";

let dir: string;
let ca: string;
const started: ChildProcess[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mailroom-runtimes-"));
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"),
  ], { stdio: "ignore" });
  ca = readFileSync(join(dir, "cert.pem"), "utf8");
});

afterAll(() => {
  for (const child of started) if (child.exitCode === null) child.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

function storeSection(store: string, tag: string): string {
  switch (store) {
    case "fs":
      return `url = "maildir:${join(dir, tag, "mail")}"`;
    case "postgres":
      return `url = "${pgUrl}"\nschema = "mr_rt_${tag}"`;
    default:
      return `url = "${redisUrl}"\nprefix = "mrtest:rt:${tag}:"`;
  }
}

function writeConfig(store: string, tag: string): string {
  const file = join(dir, `${tag}.toml`);
  writeFileSync(
    file,
    [
      `hostname = "localhost"`,
      `[store]`,
      storeSection(store, tag),
      `[smtp]`,
      `listen = ["127.0.0.1:0"]`,
      `submission = []`,
      `submissions = []`,
      `[pop3]`,
      `listen = ["127.0.0.1:0"]`,
      `pop3s = []`,
      `[tls]`,
      `cert = "${join(dir, "cert.pem")}"`,
      `key = "${join(dir, "key.pem")}"`,
      `[log]`,
      `level = "info"`,
      ``,
    ].join("\n"),
  );
  return file;
}

function admin(config: string, args: string[], input?: string): void {
  execFileSync(process.execPath, [cli, ...args, "--config", config], {
    input: input ?? "",
    stdio: ["pipe", "ignore", "pipe"],
    timeout: 30_000,
  });
}

interface Running {
  child: ChildProcess;
  ports: Record<string, number>;
  output: () => string;
}

/** Starts the server and waits until every listener reported its address. */
function serve(runtime: string, config: string): Promise<Running> {
  const [command, ...prefix] = runtimes[runtime]!;
  const child = spawn(command!, [...prefix, cli, "serve", "--config", config], { stdio: ["ignore", "pipe", "pipe"] });
  started.push(child);
  let out = "";
  const ports: Record<string, number> = {};
  return new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${runtime}: server not ready in time:\n${out}`)), 30_000);
    const scan = (chunk: Buffer): void => {
      out += chunk.toString();
      for (const line of out.split("\n")) {
        if (!line.includes("listening")) continue;
        try {
          const entry = JSON.parse(line) as { listener?: string; address?: string };
          if (entry.listener && entry.address) ports[entry.listener] = Number(entry.address.split(":").pop());
        } catch {
          // not a log line
        }
      }
      if (ports.smtp && ports.pop3) {
        clearTimeout(timer);
        resolvePromise({ child, ports, output: () => out });
      }
    };
    child.stdout!.on("data", scan);
    child.stderr!.on("data", scan);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${runtime}: server exited with ${code} before it was ready:\n${out}`));
    });
  });
}

async function step<T>(name: string, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    throw new Error(`step "${name}": ${(error as Error).message}`, { cause: error });
  }
}

const stores = ["fs", "postgres", "redis"];

describe.each(Object.keys(runtimes))("runtime %s", (runtime) => {
  it.each(stores)("delivers over SMTP+STARTTLS and retrieves over POP3+STLS on store %s", async (store) => {
    const tag = `${runtime}_${store}_${randomBytes(3).toString("hex")}`;
    const config = writeConfig(store, tag);
    const password = "runtime-smoke-pw";
    await step("set up domain and user", async () => {
      admin(config, ["domain", "add", "example.test"]);
      admin(config, ["user", "add", "smoke@example.test", "--password-stdin"], `${password}\n`);
    });
    const server = await step("start the server", () => serve(runtime, config));
    const label = `[${runtime}/${store}]`;
    const body = `Subject: smoke ${tag}\r\nFrom: a@client.test\r\nTo: smoke@example.test\r\n\r\nhello from ${runtime}\r\n.dot line\r\n`;
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
        await pop.expect("STAT", /^\+OK 1 /, "STAT");
        await pop.expect("RETR 1", /^\+OK/, "RETR");
        const message = (await pop.multiline("RETR body")).toString("utf8");
        expect(message.endsWith(body)).toBe(true);
        expect(message).toMatch(/^Return-Path: <a@client\.test>\r\n/);
        await pop.expect("QUIT", /^\+OK/, "QUIT");
        pop.close();
      });
      await step(`${label} stop with SIGTERM`, async () => {
        const exited = new Promise<number | null>((done) => server.child.once("exit", (code) => done(code)));
        server.child.kill("SIGTERM");
        const code = await Promise.race([exited, new Promise<string>((done) => setTimeout(() => done("timeout"), 15_000))]);
        if (code !== 0) throw new Error(`exit code ${String(code)}`);
      });
    } catch (error) {
      throw new Error(`${(error as Error).message}\n--- server output ---\n${server.output().slice(-4000)}`);
    }
  });
});
