import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLoginThrottle, fromBytes } from "@mailroom/store";
import type { Pop3ServerOptions } from "../src/index.js";
import { LineClient, makeCert, removeCert, startServer, type Cert, type Running } from "./helpers.js";

/**
 * Runs every test/transcripts/*.txt over real loopback TCP against a fresh server and fixture store.
 *
 *   # comment                  ! option [value]   (before the first exchange: server options)
 *   = name                     switch to connection `name`, opening it (and reading nothing) if new
 *   C: text                    client line; consecutive C: lines go out in one write (pipelining)
 *   S: text                    the exact next server line
 *   + mailbox text             append a message now (\r \n \t \\ escapes)
 *   ~ closed | drop | starttls | wait MS | count MAILBOX N
 *
 * Options: remote (the peer counts as non-loopback), tls, implicitTls, idleTimeoutMs N, maxBadCommands N,
 * loginDelaySeconds N, expireDays N, allowPlaintextAuth, throttle (a strict, fast login throttle).
 */

const dir = join(import.meta.dirname, "transcripts");
const files = readdirSync(dir).filter((f) => f.endsWith(".txt")).sort();

const unescape = (text: string): string =>
  text.replace(/\\([rnt\\])/g, (_, c: string) => ({ r: "\r", n: "\n", t: "\t", "\\": "\\" })[c]!);

let cert: Cert;
beforeAll(async () => {
  cert = await makeCert();
});
afterAll(() => removeCert(cert));

async function run(file: string): Promise<void> {
  const lines = readFileSync(join(dir, file), "utf8").replace(/\r?\n$/, "").split(/\r?\n/);
  const options: { -readonly [K in keyof Pop3ServerOptions]?: Pop3ServerOptions[K] } & { implicitTls?: boolean } = {};
  let body = 0;
  for (; body < lines.length; body++) {
    const line = lines[body]!;
    if (line.startsWith("#") || line.trim() === "") continue;
    if (!line.startsWith("! ")) break;
    const [key, value] = line.slice(2).trim().split(/\s+/) as [string, string | undefined];
    switch (key) {
      case "remote":
        options.isLocalAddress = () => false;
        break;
      case "tls":
        options.tls = cert.context;
        break;
      case "implicitTls":
        options.tls = cert.context;
        options.implicitTls = true;
        break;
      case "allowPlaintextAuth":
        options.allowPlaintextAuth = true;
        break;
      case "throttle":
        options.loginThrottle = createLoginThrottle({ freeFailures: 1, baseDelayMs: 20, refuseAfter: 3 });
        break;
      case "idleTimeoutMs":
      case "maxBadCommands":
      case "loginDelaySeconds":
      case "expireDays":
        options[key] = Number(value);
        break;
      default:
        throw new Error(`${file}: unknown option ${key}`);
    }
  }

  const running: Running = await startServer(options);
  const clients = new Map<string, LineClient>();
  let current = "main";
  const seen: string[] = [];
  let outgoing: string[] = [];
  const fail = (why: string): never => {
    throw new Error(`${file}: ${why}\n--- transcript so far ---\n${seen.join("\n")}\n---`);
  };
  const client = async (): Promise<LineClient> => {
    let c = clients.get(current);
    if (!c) {
      c = await LineClient.connect(running.port, options.implicitTls ? { ca: cert.cert } : undefined);
      clients.set(current, c);
    }
    return c;
  };
  const flush = async (): Promise<void> => {
    if (outgoing.length === 0) return;
    (await client()).write(outgoing.map((l) => `${l}\r\n`).join(""));
    outgoing = [];
  };

  try {
    for (const line of lines.slice(body)) {
      if (line.startsWith("#") || line.trim() === "") continue;
      if (line.startsWith("C: ")) {
        await client();
        outgoing.push(line.slice(3));
        seen.push(clients.size > 1 || current !== "main" ? `[${current}] ${line}` : line);
        continue;
      }
      await flush();
      if (line.startsWith("S: ")) {
        const expected = line.slice(3);
        let actual: string | null;
        try {
          actual = await (await client()).line();
        } catch (error) {
          return fail(`expected ${JSON.stringify(expected)}, got nothing (${(error as Error).message})`);
        }
        if (actual !== expected) fail(`expected ${JSON.stringify(expected)}\n          got ${JSON.stringify(actual)}`);
        seen.push(clients.size > 1 || current !== "main" ? `[${current}] ${line}` : line);
      } else if (line.startsWith("= ")) {
        current = line.slice(2).trim();
        await client();
      } else if (line.startsWith("+ ")) {
        const [, mailbox, text] = /^\+ (\S+) (.*)$/.exec(line) ?? fail(`bad append line ${line}`);
        await running.store.mailbox(mailbox!).append(fromBytes(unescape(text!)));
        seen.push(line);
      } else if (line.startsWith("~ ")) {
        const [what, ...args] = line.slice(2).trim().split(/\s+/);
        const c = what === "closed" || what === "drop" || what === "starttls" ? await client() : undefined;
        seen.push(line);
        if (what === "closed") {
          const next = await c!.line().catch(() => fail("server did not close the connection"));
          if (next !== null) fail(`expected the server to close, got ${JSON.stringify(next)}`);
        } else if (what === "drop") {
          c!.destroy();
          clients.delete(current);
        } else if (what === "starttls") {
          await c!.startTls(cert.cert);
        } else if (what === "wait") {
          await new Promise((resolve) => setTimeout(resolve, Number(args[0])));
        } else if (what === "count") {
          // Give the server a moment to notice a dropped client and release its lease.
          await new Promise((resolve) => setTimeout(resolve, 50));
          const count = (await running.store.mailbox(args[0]!).list()).length;
          if (count !== Number(args[1])) fail(`expected ${args[1]} messages in ${args[0]}, found ${count}`);
        } else {
          fail(`unknown directive ${line}`);
        }
      } else {
        fail(`cannot read line ${JSON.stringify(line)}`);
      }
    }
    await flush();
    for (const [name, c] of clients) {
      if (c.pending !== "") fail(`[${name}] unexpected server output: ${JSON.stringify(c.pending)}`);
    }
  } finally {
    for (const c of clients.values()) c.destroy();
    await running.close();
  }
}

describe("POP3 transcripts", () => {
  it("has fixtures", () => expect(files.length).toBeGreaterThan(10));
  for (const file of files) it(file.replace(/\.txt$/, ""), () => run(file));
});
