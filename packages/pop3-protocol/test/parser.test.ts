import { describe, expect, it } from "vitest";
import type { Command } from "../src/commands.js";
import { parseCommand, takeLine } from "../src/parser.js";

const rows: Array<[string, Command]> = [
  ["USER alice@example.test", { name: "USER", user: "alice@example.test" }],
  ["user  alice@example.test ", { name: "USER", user: "alice@example.test" }],
  ["PASS two words ", { name: "PASS", password: "two words " }],
  ["APOP alice digest", { name: "APOP" }],
  ["AUTH", { name: "AUTH", mechanism: null, initialResponse: null }],
  ["auth plain", { name: "AUTH", mechanism: "PLAIN", initialResponse: null }],
  ["AUTH PLAIN AGEAYg==", { name: "AUTH", mechanism: "PLAIN", initialResponse: "AGEAYg==" }],
  ["CAPA", { name: "CAPA" }],
  ["stls", { name: "STLS" }],
  ["QUIT", { name: "QUIT" }],
  ["STAT", { name: "STAT" }],
  ["NOOP", { name: "NOOP" }],
  ["RSET", { name: "RSET" }],
  ["LIST", { name: "LIST", msg: null }],
  [" list  100  ".trim(), { name: "LIST", msg: 100 }],
  ["UIDL", { name: "UIDL", msg: null }],
  ["UIDL 7", { name: "UIDL", msg: 7 }],
  ["RETR 1", { name: "RETR", msg: 1 }],
  ["DELE 0", { name: "DELE", msg: 0 }],
  ["top 8000 1234", { name: "TOP", msg: 8000, lines: 1234 }],
  // Leading zeros are still the number, however many.
  ["RETR 0000000001", { name: "RETR", msg: 1 }],
  ["LIST 000000000000000999999999", { name: "LIST", msg: 999_999_999 }],
  ["TOP 01 000000000010", { name: "TOP", msg: 1, lines: 10 }],
];

describe("parseCommand", () => {
  for (const [input, command] of rows) {
    it(JSON.stringify(input), () => expect(parseCommand(input)).toEqual({ kind: "command", command }));
  }

  it.each([
    ["", "empty command"],
    ["HELO x", "unknown command"],
    ["USER", "usage: USER name"],
    ["USER a b", "usage: USER name"],
    ["PASS", "usage: PASS password"],
    ["STAT 1", "STAT takes no arguments"],
    ["LIST x", "invalid message number"],
    ["LIST 1 2", "usage: LIST [message-number]"],
    ["RETR", "usage: RETR message-number"],
    ["RETR -1", "usage: RETR message-number"],
    ["RETR 1000000000", "usage: RETR message-number"],
    ["LIST 99999999999", "invalid message number"],
    ["RETR 1e3", "usage: RETR message-number"],
    ["RETR " + "1".repeat(65), "usage: RETR message-number"],
    ["TOP 1", "usage: TOP message-number lines"],
    ["AUTH PLAIN a b", "usage: AUTH mechanism [initial-response]"],
  ])("%j is an error", (input, message) => {
    expect(parseCommand(input)).toEqual({ kind: "error", message });
  });
});

describe("takeLine", () => {
  it("needs more until the line ends, at every split point", () => {
    const bytes = new TextEncoder().encode("RETR 12\r\n");
    for (let cut = 0; cut < bytes.length; cut++) {
      expect(takeLine(bytes.subarray(0, cut))).toEqual({ kind: "needs-more" });
    }
    expect(takeLine(bytes)).toEqual({ kind: "line", text: "RETR 12", consumed: 9 });
  });

  it("takes one line of several, and accepts a bare LF", () => {
    const bytes = new TextEncoder().encode("NOOP\nSTAT\r\n");
    expect(takeLine(bytes)).toEqual({ kind: "line", text: "NOOP", consumed: 5 });
    expect(takeLine(bytes.subarray(5))).toEqual({ kind: "line", text: "STAT", consumed: 6 });
  });

  it("allows 255 octets with CRLF and refuses 256, also before the line ends", () => {
    const line = (n: number) => new TextEncoder().encode(`${"x".repeat(n - 2)}\r\n`);
    expect(takeLine(line(255)).kind).toBe("line");
    expect(takeLine(line(256))).toEqual({ kind: "too-long" });
    expect(takeLine(new Uint8Array(255).fill(0x78))).toEqual({ kind: "too-long" });
    expect(takeLine(new Uint8Array(254).fill(0x78))).toEqual({ kind: "needs-more" });
  });

  it("decodes UTF-8 passwords", () => {
    const bytes = new TextEncoder().encode("PASS pässwört\r\n");
    const line = takeLine(bytes);
    expect(line.kind === "line" && parseCommand(line.text)).toEqual({
      kind: "command",
      command: { name: "PASS", password: "pässwört" },
    });
  });
});
