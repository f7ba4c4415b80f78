import { describe, expect, it } from "vitest";
import { isStoreError } from "../src/errors.js";
import {
  assertMailboxId,
  assertUid,
  domainOf,
  isValidUid,
  normalizeAddress,
  normalizeAliasSource,
  normalizeDomain,
  splitAddress,
} from "../src/names.js";

function codeOf(action: () => unknown): string | null {
  try {
    action();
    return null;
  } catch (error) {
    return isStoreError(error) ? error.code : `not a StoreError: ${String(error)}`;
  }
}

describe("normalizeDomain", () => {
  it.each([
    ["Example.TEST", "example.test"],
    ["  example.test  ", "example.test"],
    ["example.test.", "example.test"],
    ["localhost", "localhost"],
    ["例え.JP", "xn--r8jz45g.jp"],
    ["BÜCHER.de", "xn--bcher-kva.de"],
    ["xn--r8jz45g.jp", "xn--r8jz45g.jp"],
    ["a-b.test", "a-b.test"],
    [`${"a".repeat(63)}.test`, `${"a".repeat(63)}.test`],
  ])("%j → %j", (input, expected) => {
    expect(normalizeDomain(input)).toBe(expected);
  });

  it.each([
    "",
    " ",
    ".",
    "a..test",
    "-a.test",
    "a-.test",
    "a_b.test",
    "ex ample.test",
    "[127.0.0.1]",
    "a/b.test",
    "a\0.test",
    "a\r\n.test",
    `${"a".repeat(64)}.test`,
    `${"abcdefghi.".repeat(26)}test`,
    "bad\uD800.test",
  ])("refuses %j with invalid-name", (input) => {
    expect(codeOf(() => normalizeDomain(input))).toBe("invalid-name");
  });
});

describe("normalizeAddress", () => {
  it.each([
    ["Alice@Example.TEST", "alice@example.test"],
    ["  bob@example.test ", "bob@example.test"],
    ["first.last@example.test", "first.last@example.test"],
    ["tag+sub@example.test", "tag+sub@example.test"],
    ["x@example.test.", "x@example.test"],
    ["ü@例え.jp", "ü@xn--r8jz45g.jp"],
    ["Ü@BÜCHER.de", "ü@xn--bcher-kva.de"],
    // Decomposed and composed forms of one name are one account.
    ["e\u0301@example.test", "é@example.test"],
    // A quoted string that spells a plain local part is that local part (RFC 5321 4.1.2).
    ['"q"@example.test', "q@example.test"],
    ['"Bob.Smith"@Example.TEST', "bob.smith@example.test"],
    ['"b\\ob"@example.test', "bob@example.test"],
  ])("%j → %j", (input, expected) => {
    expect(normalizeAddress(input)).toBe(expected);
  });

  it.each([
    ["no at sign", "alice.example.test"],
    ["empty local part", "@example.test"],
    ["empty domain", "alice@"],
    ["percent routing", "user%other@example.test"],
    ["bang path", "a!b@example.test"],
    ["quoted with space", '"a b"@example.test'],
    ["quoted at sign", '"a@b"@example.test'],
    ["quoted percent routing", '"user%other"@example.test'],
    ["quoted double dot", '"a..b"@example.test'],
    ["empty quoted string", '""@example.test'],
    ["two at signs", "a@b@example.test"],
    ["slash", "a/b@example.test"],
    ["backslash", "a\\b@example.test"],
    ["space inside", "a b@example.test"],
    ["angle brackets", "<a>@example.test"],
    ["comma", "a,b@example.test"],
    ["CRLF injection", "a\r\nRCPT TO:<x>@example.test"],
    ["NUL", "a\0@example.test"],
    ["leading dot", ".a@example.test"],
    ["trailing dot", "a.@example.test"],
    ["double dot", "a..b@example.test"],
    ["local part of 65 octets", `${"a".repeat(65)}@example.test`],
    ["local part over 64 octets in UTF-8", `${"ü".repeat(33)}@example.test`],
    ["address over 254 octets", `${"a".repeat(64)}@${"abcdefghi.".repeat(19)}test`],
    ["bad domain", "a@-x.test"],
    ["address literal", "a@[127.0.0.1]"],
    ["lone surrogate", "a\uD800@example.test"],
  ])("refuses %s with invalid-name", (_what, input) => {
    expect(codeOf(() => normalizeAddress(input))).toBe("invalid-name");
  });

  it("is idempotent over every code point with the combining marks case mapping interacts with", () => {
    // Stores keep the normalised address and normalise every lookup again: a second pass that changes
    // it locks the account out. Lower-casing before NFC makes that impossible; the other way round it
    // happened for Greek capitals with tonos, dialytika, perispomeni or ypogegrammeni.
    const greek = normalizeAddress("\u03AA\u0301nna@example.test");
    expect(normalizeAddress(greek)).toBe(greek);
    const marks = ["", "\u0301", "\u0307", "\u0308", "\u0313", "\u0342", "\u0345"];
    const unstable: string[] = [];
    let checked = 0;
    for (let cp = 0x41; cp <= 0x2ffff; cp++) {
      if (cp >= 0xd800 && cp <= 0xdfff) continue;
      const ch = String.fromCodePoint(cp);
      for (const mark of marks) {
        let once: string;
        try {
          once = normalizeAddress(`${ch}${mark}x@example.test`);
        } catch {
          continue;
        }
        checked++;
        if (normalizeAddress(once) !== once) unstable.push(`U+${cp.toString(16).toUpperCase().padStart(4, "0")}${mark}`);
      }
    }
    expect(checked).toBeGreaterThan(700_000);
    expect(unstable).toEqual([]);
  });

  it("accepts exactly 64 octets of local part", () => {
    expect(normalizeAddress(`${"a".repeat(64)}@example.test`)).toBe(`${"a".repeat(64)}@example.test`);
  });

  it("shortens very long input in its error message", () => {
    try {
      normalizeAddress(`${"x".repeat(500)}@example.test`);
      expect.fail("should have thrown");
    } catch (error) {
      expect((error as Error).message.length).toBeLessThan(200);
    }
  });
});

describe("normalizeAliasSource, splitAddress, domainOf", () => {
  it("accepts catch-all sources and addresses", () => {
    expect(normalizeAliasSource("@Example.TEST")).toBe("@example.test");
    expect(normalizeAliasSource(" @例え.jp ")).toBe("@xn--r8jz45g.jp");
    expect(normalizeAliasSource("Info@Example.test")).toBe("info@example.test");
    expect(codeOf(() => normalizeAliasSource("@"))).toBe("invalid-name");
    expect(codeOf(() => normalizeAliasSource("@@example.test"))).toBe("invalid-name");
  });

  it("splits at the last at sign", () => {
    expect(splitAddress("a@b.test")).toEqual({ local: "a", domain: "b.test" });
    expect(splitAddress('"x@y"@b.test')).toEqual({ local: '"x@y"', domain: "b.test" });
    expect(codeOf(() => splitAddress("ab.test"))).toBe("invalid-name");
  });

  it("takes the domain of addresses and catch-alls", () => {
    expect(domainOf("alice@example.test")).toBe("example.test");
    expect(domainOf("@example.test")).toBe("example.test");
  });
});

describe("UIDs and mailbox ids", () => {
  it("accepts 1–70 printable ASCII characters as UID", () => {
    for (const uid of ["a", "!", "~", "x".repeat(70), "1700000000.M1P2.host,S=12"]) {
      expect(isValidUid(uid), uid).toBe(true);
      expect(() => assertUid(uid)).not.toThrow();
    }
    for (const uid of ["", " ", "a b", "x".repeat(71), "ü", "a\tb", "a\0", "a\x7f"]) {
      expect(isValidUid(uid), JSON.stringify(uid)).toBe(false);
      expect(codeOf(() => assertUid(uid))).toBe("invalid-name");
    }
  });

  it("accepts odd but harmless mailbox ids and refuses control characters", () => {
    for (const id of ["../x", "a/b", "..", "%2e%2e", 'q"uote', "back\\slash", "ü@例え.jp", "x".repeat(320)]) {
      expect(() => assertMailboxId(id), id).not.toThrow();
    }
    for (const id of ["", "x".repeat(321), "a\0b", "a\r\nb", "a\tb", "a\x7f", "a\u0085", "a\uDC00"]) {
      expect(codeOf(() => assertMailboxId(id)), JSON.stringify(id)).toBe("invalid-name");
    }
  });
});
