import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createLoginThrottle, StoreError } from "@mailroom/store";
import { createSmtpServer, type SmtpServerOptions } from "../src/index.js";
import { HOST, makeCertificate, RawClient, seededStore, storedMessages, tlsContext } from "./helpers.js";

/**
 * Runs every test/transcripts/*.txt against a fresh server and memory store over loopback TCP.
 *
 * Header lines:   `@listen mx|submission [implicit-tls]`, `@options {json SmtpServerOptions subset}`,
 *                 `@room <octets>|throw` (the store gets `hasRoomFor`: room for at most that many
 *                 octets, or an error).
 * Conversation:   `C: line` (sent with CRLF; consecutive C: lines go out together, i.e. pipelined),
 *                 `C~: raw` (sent as is after decoding \r \n \t \\ \xNN escapes, no CRLF added),
 *                 `S: line` (one server line, exact; {ID} {DATE} {TLS} {*} are placeholders),
 *                 `!starttls` (client TLS handshake), `!closed` (server must have closed),
 *                 `!reconnect` (a second connection to the same server and store).
 * Store checks:   `=== mailbox <id> <n>` … `=== end` (message n, 1-based, line by line exact),
 *                 `=== count <id> <n>`.
 */
const dir = join(import.meta.dirname, "transcripts");
const files = readdirSync(dir).filter((f) => f.endsWith(".txt")).sort();

let cert: ReturnType<typeof makeCertificate>;
beforeAll(() => {
  cert = makeCertificate();
});
afterAll(() => cert.cleanup());

function pattern(expected: string): RegExp {
  const escaped = expected.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const withHoles = escaped
    .replace(/\\\{ID\\\}/g, "[A-Z0-9]+")
    .replace(/\\\{DATE\\\}/g, "(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \\d{1,2} [A-Z][a-z]{2} \\d{4} \\d\\d:\\d\\d:\\d\\d \\+0000")
    .replace(/\\\{TLS\\\}/g, "\\(using TLSv1\\.[23] with cipher [A-Za-z0-9_-]+\\)")
    .replace(/\\\{\\\*\\\}/g, ".*");
  return new RegExp(`^${withHoles}$`);
}

function unescape(text: string): string {
  return text.replace(/\\(r|n|t|\\|x([0-9a-fA-F]{2}))/g, (_m, c: string, hex?: string) =>
    hex ? String.fromCharCode(parseInt(hex, 16)) : c === "r" ? "\r" : c === "n" ? "\n" : c === "t" ? "\t" : "\\",
  );
}

describe("transcripts", () => {
  for (const file of files) {
    it(file.replace(/\.txt$/, ""), async () => {
      const lines = readFileSync(join(dir, file), "utf8").split("\n");
      let mode: "mx" | "submission" = "mx";
      let implicitTls = false;
      let extra: Partial<SmtpServerOptions> = {};
      let room: string | null = null;
      for (const line of lines) {
        if (line.startsWith("@listen ")) {
          const parts = line.split(" ");
          mode = parts[1] === "submission" ? "submission" : "mx";
          implicitTls = parts[2] === "implicit-tls";
        } else if (line.startsWith("@options ")) extra = JSON.parse(line.slice(9)) as Partial<SmtpServerOptions>;
        else if (line.startsWith("@room ")) room = line.slice(6).trim();
      }
      const store = await seededStore();
      if (room !== null) {
        const limit = room;
        // A store with a soft limit of its own (store-fs's free-space reserve), as the contract allows.
        store.hasRoomFor = (octets: number): Promise<boolean> =>
          limit === "throw" ? Promise.reject(new StoreError("unavailable", "cannot tell")) : Promise.resolve(octets <= Number(limit));
      }
      const server = createSmtpServer({
        store,
        hostname: HOST,
        tls: tlsContext(cert),
        loginThrottle: createLoginThrottle(),
        ...extra,
      });
      const listener = await server.listen({ host: "127.0.0.1", port: 0, mode, implicitTls });
      let client = await RawClient.connect(listener.port, { tls: implicitTls });
      const seen: string[] = [];
      const fail = (message: string): never => {
        throw new Error(`${file}: ${message}\n--- transcript so far ---\n${seen.join("\n")}`);
      };
      let outgoing = "";
      const flush = (): void => {
        if (outgoing) client.write(outgoing);
        outgoing = "";
      };
      try {
        for (let i = 0; i < lines.length; i++) {
          const raw = lines[i]!;
          const line = raw === "C:" ? "C: " : raw === "S:" ? "S: " : raw;
          if (line.startsWith("C: ")) {
            outgoing += `${line.slice(3)}\r\n`;
            seen.push(line);
          } else if (line.startsWith("C~: ")) {
            outgoing += unescape(line.slice(4));
            seen.push(line);
          } else if (line.startsWith("S: ")) {
            flush();
            const got = await client.line().catch((e: Error) => fail(e.message));
            seen.push(`S: ${got ?? "<closed>"}`);
            if (got === null || !pattern(line.slice(3)).test(got)) fail(`expected ${JSON.stringify(line)}, got ${JSON.stringify(got)}`);
          } else if (line === "!starttls") {
            flush();
            await client.startTls();
            seen.push(line);
          } else if (line === "!closed") {
            flush();
            await client.waitClosed().catch((e: Error) => fail(e.message));
            seen.push(line);
          } else if (line === "!reconnect") {
            flush();
            client.close();
            client = await RawClient.connect(listener.port, { tls: implicitTls });
            seen.push(line);
          } else if (line.startsWith("=== count ")) {
            flush();
            const [, , id, n] = line.split(" ");
            expect((await storedMessages(store, id!)).length, `${file}: ${line}`).toBe(Number(n));
          } else if (line.startsWith("=== mailbox ")) {
            flush();
            const [, , id, n] = line.split(" ");
            const expected: string[] = [];
            for (i++; lines[i] !== "=== end"; i++) {
              if (i >= lines.length) fail("=== mailbox without === end");
              expected.push(lines[i]!);
            }
            const messages = await storedMessages(store, id!);
            const message = messages[Number(n) - 1];
            if (message === undefined) fail(`${id} has ${messages.length} messages, wanted #${n}`);
            expect(message!.endsWith("\r\n"), `${file}: stored message ends with CRLF`).toBe(true);
            const got = message!.slice(0, -2).split("\r\n");
            for (let k = 0; k < Math.max(got.length, expected.length); k++) {
              const want = expected[k];
              if (want === undefined || got[k] === undefined || !pattern(want).test(got[k]!)) {
                fail(`stored ${id} #${n} line ${k + 1}: expected ${JSON.stringify(want)}, got ${JSON.stringify(got[k])}\nwhole message:\n${message}`);
              }
            }
          }
        }
        if (outgoing) fail("transcript ends with unsent C: lines; add the expected S: lines");
      } finally {
        client.close();
        await server.close({ deadlineMs: 1000 });
      }
    });
  }
});
