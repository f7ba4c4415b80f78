import { describe, expect, it } from "vitest";
import { LineReader, parseCommand, type Command } from "../src/index.js";

const path = (address: string, local: string, domain: string, utf8 = false) => ({ address, local, domain, utf8 });

const good: [string, Command][] = [
  ["EHLO client.example", { verb: "EHLO", domain: "client.example" }],
  ["ehlo [127.0.0.1]", { verb: "EHLO", domain: "[127.0.0.1]" }],
  ["HELO client", { verb: "HELO", domain: "client" }],
  ["MAIL FROM:<a@b.example>", { verb: "MAIL", path: path("a@b.example", "a", "b.example"), params: new Map() }],
  ["mail from: <a@b.example>", { verb: "MAIL", path: path("a@b.example", "a", "b.example"), params: new Map() }],
  ["MAIL FROM:<>", { verb: "MAIL", path: path("", "", ""), params: new Map() }],
  [
    "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME SMTPUTF8",
    { verb: "MAIL", path: path("a@b.example", "a", "b.example"), params: new Map<string, string | true>([["SIZE", "1000"], ["BODY", "8BITMIME"], ["SMTPUTF8", true]]) },
  ],
  ["MAIL FROM:<jörg@bücher.example> SMTPUTF8", { verb: "MAIL", path: path("jörg@bücher.example", "jörg", "bücher.example", true), params: new Map([["SMTPUTF8", true]]) }],
  ["RCPT TO:<bob@local.test>", { verb: "RCPT", path: path("bob@local.test", "bob", "local.test"), params: new Map() }],
  ["RCPT TO:<@a.example,@b.example:bob@c.example>", { verb: "RCPT", path: path("bob@c.example", "bob", "c.example"), params: new Map() }],
  ['RCPT TO:<"bob@other.test"@local.test>', { verb: "RCPT", path: path('"bob@other.test"@local.test', '"bob@other.test"', "local.test"), params: new Map() }],
  ['RCPT TO:<"a\\"b"@local.test>', { verb: "RCPT", path: path('"a\\"b"@local.test', '"a\\"b"', "local.test"), params: new Map() }],
  ["RCPT TO:<bob%other.test@local.test>", { verb: "RCPT", path: path("bob%other.test@local.test", "bob%other.test", "local.test"), params: new Map() }],
  ["RCPT TO:<other.test!bob@local.test>", { verb: "RCPT", path: path("other.test!bob@local.test", "other.test!bob", "local.test"), params: new Map() }],
  ["RCPT TO:<bob@[192.0.2.1]>", { verb: "RCPT", path: path("bob@[192.0.2.1]", "bob", "[192.0.2.1]"), params: new Map() }],
  ["RCPT TO:<Postmaster>", { verb: "RCPT", path: path("Postmaster", "Postmaster", ""), params: new Map() }],
  ['RCPT TO:<"PostMaster">', { verb: "RCPT", path: path('"PostMaster"', '"PostMaster"', ""), params: new Map() }],
  ["DATA", { verb: "DATA" }],
  ["RSET", { verb: "RSET" }],
  ["NOOP", { verb: "NOOP" }],
  ["NOOP anything", { verb: "NOOP" }],
  ["QUIT", { verb: "QUIT" }],
  ["STARTTLS", { verb: "STARTTLS" }],
  ["VRFY bob", { verb: "VRFY", argument: "bob" }],
  ["HELP", { verb: "HELP", argument: "" }],
  ["HELP MAIL", { verb: "HELP", argument: "MAIL" }],
  ["EXPN list", { verb: "EXPN" }],
  ["AUTH PLAIN", { verb: "AUTH", mechanism: "PLAIN", initial: null }],
  ["auth plain AGEAYg==", { verb: "AUTH", mechanism: "PLAIN", initial: "AGEAYg==" }],
  ["AUTH LOGIN =", { verb: "AUTH", mechanism: "LOGIN", initial: "=" }],
  ["BDAT 100", { verb: "BDAT", size: 100, last: false }],
  ["BDAT 0 LAST", { verb: "BDAT", size: 0, last: true }],
  ["bdat 7 last", { verb: "BDAT", size: 7, last: true }],
];

const bad: [string, "unknown" | "syntax"][] = [
  ["", "unknown"],
  ["FROB", "unknown"],
  ["MAILFROM:<a@b>", "unknown"],
  ["EHLO", "syntax"],
  ["MAIL FROM:a@b.example", "syntax"],
  ["MAIL FROM:<a@b.example", "syntax"],
  ["MAIL FROM:<a@b.example>SIZE=1", "syntax"],
  ["MAIL FROM:<a@b.example> SIZE=", "syntax"],
  ["MAIL FROM:<a@b.example> =1", "syntax"],
  ["MAIL TO:<a@b.example>", "syntax"],
  ["RCPT TO:<>", "syntax"],
  ["RCPT TO:<a>", "syntax"],
  ['RCPT TO:<"post master">', "syntax"],
  ["RCPT TO:<a@>", "syntax"],
  ["RCPT TO:<@b.example>", "syntax"],
  ["RCPT TO:<a@b..example>", "syntax"],
  ["RCPT TO:<a@b.example.>", "syntax"],
  ["RCPT TO:<a@b@c.example>", "syntax"],
  ['RCPT TO:<"unterminated@b.example>', "syntax"],
  ["RCPT TO:<a@[1.2.3.4>", "syntax"],
  ["RCPT TO:<a b@c.example>", "syntax"],
  ["DATA x", "syntax"],
  ["QUIT now", "syntax"],
  ["STARTTLS x", "syntax"],
  ["VRFY", "syntax"],
  ["AUTH", "syntax"],
  ["AUTH PLAIN a b", "syntax"],
  ["BDAT", "syntax"],
  ["BDAT -1", "syntax"],
  ["BDAT 1 FIRST", "syntax"],
  ["BDAT 1234567890123456", "syntax"],
  ["NOOP \u0000", "syntax"],
];

describe("parseCommand", () => {
  it.each(good)("%s", (line, command) => {
    expect(parseCommand(line)).toEqual({ ok: true, command });
  });
  it.each(bad)("refuses %j as %s", (line, error) => {
    const result = parseCommand(line);
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.error).toBe(error);
  });
});

describe("LineReader", () => {
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);

  function feed(reader: LineReader, parts: Uint8Array[]): (string | null)[] {
    const lines: (string | null)[] = [];
    for (const part of parts) {
      let rest = part;
      while (rest.length > 0) {
        const { line, used } = reader.take(rest);
        rest = rest.subarray(used);
        if (line === "too-long") lines.push("<too-long>");
        else if (line !== null) lines.push(decode(line));
      }
    }
    return lines;
  }

  it.each(good.map(([line]) => [line]))("%s split at every byte boundary parses the same", (line) => {
    const bytes = new TextEncoder().encode(`${line}\r\n`);
    for (let cut = 0; cut <= bytes.length; cut++) {
      const reader = new LineReader(512);
      const first = feed(reader, [bytes.subarray(0, cut)]);
      // Nothing comes out before the LF arrived.
      expect(first).toEqual(cut === bytes.length ? [line] : []);
      const all = [...first, ...feed(reader, [bytes.subarray(cut)])];
      expect(all).toEqual([line]);
      expect(parseCommand(all[0]!)).toEqual(parseCommand(line));
    }
    // And one byte at a time.
    const reader = new LineReader(512);
    expect(feed(reader, Array.from(bytes, (b) => Uint8Array.of(b)))).toEqual([line]);
  });

  it("accepts a bare LF as command line end and strips one CR", () => {
    expect(feed(new LineReader(512), [new TextEncoder().encode("NOOP\nQUIT\r\n")])).toEqual(["NOOP", "QUIT"]);
  });

  it("allows exactly maxLine octets including CRLF and swallows longer lines whole", () => {
    const reader = new LineReader(10);
    const enc = new TextEncoder();
    expect(feed(reader, [enc.encode("12345678\r\n")])).toEqual(["12345678"]);
    expect(feed(reader, [enc.encode("123456789\r\nNOOP\r\n")])).toEqual(["<too-long>", "NOOP"]);
    // A huge line in many pieces keeps nothing in memory and is reported once.
    const parts = Array.from({ length: 100 }, () => enc.encode("x".repeat(1000)));
    expect(feed(reader, [...parts, enc.encode("\r\nQUIT\r\n")])).toEqual(["<too-long>", "QUIT"]);
    expect(reader.pending).toBe(0);
  });

  it("tells whether the line being read starts with a word, in any letter case, wherever it was split", () => {
    const enc = new TextEncoder();
    const bytes = enc.encode("mAiL FROM:<a@b>\r\n");
    for (let cut = 0; cut < bytes.length; cut++) {
      const reader = new LineReader(512);
      expect(reader.take(bytes.subarray(0, cut)).line).toBeNull();
      expect(reader.startsWith(bytes.subarray(cut), "MAIL ")).toBe(true);
      expect(reader.startsWith(bytes.subarray(cut), "RCPT ")).toBe(false);
    }
    const reader = new LineReader(512);
    expect(reader.startsWith(enc.encode("MAIL"), "MAIL ")).toBe(false);
    expect(reader.startsWith(enc.encode("MAIL\0"), "MAIL ")).toBe(false);
    expect(reader.startsWith(enc.encode("MAILX"), "MAIL ")).toBe(false);
  });
});
