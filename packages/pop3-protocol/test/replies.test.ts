import { describe, expect, it } from "vitest";
import { DotStuffer, multiline, searchLineEnds, searchPair, type LineDotSearch } from "../src/replies.js";
import { storeErrorReply } from "../src/replies.js";
import { StoreError } from "@mailroom/store";

const enc = new TextEncoder();
const dec = new TextDecoder();

function stuff(chunks: string[], find?: LineDotSearch): string {
  const stuffer = new DotStuffer(find);
  let out = "";
  for (const chunk of chunks) for (const piece of stuffer.push(enc.encode(chunk))) out += dec.decode(piece);
  return out + dec.decode(stuffer.end());
}

/** The same transform written the slow, obvious way, to compare against. */
function reference(text: string): string {
  const stuffed = text.replace(/(^|\n)\./g, "$1..");
  return stuffed + (text === "" || text.endsWith("\r\n") ? ".\r\n" : "\r\n.\r\n");
}

// Each runtime uses one of the two searches (see findLineDot); both are checked here.
describe.each([
  ["the two-octet search", searchPair],
  ["the line-end search", searchLineEnds],
])("DotStuffer with %s", (_name, find) => {
  it.each([
    ["", ".\r\n"],
    ["a\r\n", "a\r\n.\r\n"],
    ["a", "a\r\n.\r\n"],
    ["a\n", "a\n\r\n.\r\n"],
    [".\r\n", "..\r\n.\r\n"],
    ["x\r\n.y\r\n..z\r\n.", "x\r\n..y\r\n...z\r\n..\r\n.\r\n"],
    ["x\n.bare lf", "x\n..bare lf\r\n.\r\n"],
    ["no.dot\r\n", "no.dot\r\n.\r\n"],
  ])("%j", (input, expected) => {
    expect(stuff([input], find)).toBe(expected);
  });

  it("gives the same bytes however the message is chunked", () => {
    const text = ".start\r\nmid.dle\r\n.\r\n..\r\n\r\n.x\n.y\r\nend.";
    const expected = reference(text);
    for (let a = 0; a <= text.length; a++) {
      for (let b = a; b <= text.length; b++) {
        expect(stuff([text.slice(0, a), text.slice(a, b), text.slice(b)], find)).toBe(expected);
      }
    }
  });

  it("does not copy chunks without dots", () => {
    const chunk = enc.encode("plain text\r\n");
    const pieces = new DotStuffer(find).push(chunk);
    expect(pieces).toHaveLength(1);
    expect(pieces[0]).toBe(chunk);
  });
});

describe("multiline", () => {
  it("stuffs and terminates", () => {
    expect(multiline("+OK\r\n", ["a", ".b"])).toBe("+OK\r\na\r\n..b\r\n.\r\n");
  });
});

describe("storeErrorReply", () => {
  it("maps codes to response codes and keeps details out", () => {
    expect(storeErrorReply(new StoreError("in-use", "held by x"), "cannot open")).toBe(
      "-ERR [IN-USE] mailbox is in use by another session\r\n",
    );
    expect(storeErrorReply(new StoreError("unavailable", "pg down at 10.0.0.1"), "cannot open")).toBe(
      "-ERR [SYS/TEMP] cannot open, try again later\r\n",
    );
    expect(storeErrorReply(new StoreError("lease-lost", "x"), "cannot open")).toMatch(/^-ERR \[SYS\/TEMP\]/);
    expect(storeErrorReply(new StoreError("not-found", "secret path"), "cannot read")).toBe("-ERR [SYS/PERM] cannot read\r\n");
    expect(storeErrorReply(new Error("driver exploded"), "cannot read")).toMatch(/^-ERR \[SYS\/TEMP\] cannot read/);
  });
});
