import { Buffer } from "node:buffer";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MAX_COMMAND_OCTETS, parseCommand, takeLine, type LineResult } from "../../src/parser.js";
import { DotStuffer } from "../../src/replies.js";

/**
 * Property tests over the pure layers a hostile client reaches first: line framing, the command
 * parser and the RETR/TOP dot-stuffer. Runs are seeded, so a failure prints a seed and path that
 * replay it exactly (`HOSTILE_SEED=<seed>` overrides the default).
 */
const SEED = Number(process.env.HOSTILE_SEED ?? 20261127);
const params = (numRuns: number): fc.Parameters<unknown> => ({ seed: SEED, numRuns, verbose: 1 });

const encoder = new TextEncoder();

/** Hostile byte strings: random bytes, with CR, LF, NUL, "." and invalid UTF-8 made common. */
const hostileBytes = (maxLength: number): fc.Arbitrary<Uint8Array> =>
  fc
    .array(
      fc.oneof(
        { weight: 4, arbitrary: fc.integer({ min: 0, max: 255 }) },
        { weight: 2, arbitrary: fc.constantFrom(0x0d, 0x0a, 0x00, 0x2e, 0x20) },
        { weight: 1, arbitrary: fc.constantFrom(0xc3, 0x28, 0xff, 0xfe, 0x80, 0xed, 0xa0) },
        { weight: 4, arbitrary: fc.integer({ min: 0x41, max: 0x5a }) },
      ),
      { maxLength },
    )
    .map((bytes) => Uint8Array.from(bytes));

/** Sorted, distinct cut positions inside [1, length). */
const cutsOf = (length: number): fc.Arbitrary<number[]> =>
  length < 2
    ? fc.constant([])
    : fc.uniqueArray(fc.integer({ min: 1, max: length - 1 }), { maxLength: 12 }).map((cuts) => cuts.sort((a, b) => a - b));

function split(bytes: Uint8Array, cuts: readonly number[]): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  for (const cut of cuts) {
    out.push(bytes.subarray(at, cut));
    at = cut;
  }
  out.push(bytes.subarray(at));
  return out;
}

type Framed = { kind: "line"; text: string } | { kind: "too-long" };

/** What the session does with its input: append each chunk, take lines until more is needed; too-long ends it. */
function frame(chunks: readonly Uint8Array[]): Framed[] {
  const out: Framed[] = [];
  let buffer = new Uint8Array(0);
  for (const chunk of chunks) {
    const joined = new Uint8Array(buffer.length + chunk.length);
    joined.set(buffer);
    joined.set(chunk, buffer.length);
    buffer = joined;
    for (;;) {
      const result: LineResult = takeLine(buffer);
      if (result.kind === "needs-more") break;
      if (result.kind === "too-long") {
        out.push({ kind: "too-long" });
        return out;
      }
      out.push({ kind: "line", text: result.text });
      buffer = buffer.subarray(result.consumed);
    }
  }
  return out;
}

describe("POP3 line framing (takeLine) under hostile bytes", () => {
  it("never throws, never hands out a line longer than 255 octets, and never buffers an endless line", () => {
    fc.assert(
      fc.property(hostileBytes(600), (bytes) => {
        const result = takeLine(bytes);
        const lf = bytes.indexOf(0x0a);
        if (result.kind === "line") {
          expect(result.consumed).toBe(lf + 1);
          expect(result.consumed).toBeLessThanOrEqual(MAX_COMMAND_OCTETS);
          expect(result.text.includes("\n")).toBe(false);
        } else if (result.kind === "needs-more") {
          expect(lf).toBe(-1);
          expect(bytes.length).toBeLessThan(MAX_COMMAND_OCTETS);
        } else {
          expect(lf === -1 ? bytes.length >= MAX_COMMAND_OCTETS : lf + 1 > MAX_COMMAND_OCTETS).toBe(true);
        }
      }),
      params(3000),
    );
  });

  it("gives the same commands whether the input comes whole or split at random positions", () => {
    fc.assert(
      fc.property(
        hostileBytes(700).chain((bytes) => fc.tuple(fc.constant(bytes), cutsOf(bytes.length))),
        ([bytes, cuts]) => {
          expect(frame(split(bytes, cuts))).toEqual(frame([bytes]));
        },
      ),
      params(2000),
    );
  });

  it("gives the same commands when split at every single position", () => {
    fc.assert(
      fc.property(hostileBytes(120), (bytes) => {
        const whole = frame([bytes]);
        for (let cut = 1; cut < bytes.length; cut++) expect(frame(split(bytes, [cut]))).toEqual(whole);
        // And one byte at a time, the way a slow client sends.
        expect(frame(split(bytes, Array.from({ length: Math.max(0, bytes.length - 1) }, (_, i) => i + 1)))).toEqual(whole);
      }),
      params(300),
    );
  });

  it("cuts a line without LF at the limit however long it is", () => {
    for (const size of [MAX_COMMAND_OCTETS, 10_000, 5 * 1024 * 1024]) {
      expect(takeLine(new Uint8Array(size).fill(0x41))).toEqual({ kind: "too-long" });
    }
    expect(takeLine(new Uint8Array(MAX_COMMAND_OCTETS - 1).fill(0x41))).toEqual({ kind: "needs-more" });
  });
});

describe("POP3 command parser under hostile text", () => {
  it("never throws on any decoded line and always answers with a command or an error message", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.string({ unit: "binary", maxLength: 300 }),
          hostileBytes(300).map((bytes) => new TextDecoder().decode(bytes)),
        ),
        (line) => {
          const result = parseCommand(line);
          if (result.kind === "error") {
            expect(result.message.length).toBeGreaterThan(0);
            // The message goes into an -ERR line; it must not break the reply framing.
            expect(/[\r\n]/.test(result.message)).toBe(false);
          } else {
            expect(typeof result.command.name).toBe("string");
          }
        },
      ),
      params(5000),
    );
  });

  const keywordCase = (keyword: string): fc.Arbitrary<string> =>
    fc.array(fc.boolean(), { minLength: keyword.length, maxLength: keyword.length }).map((upper) =>
      [...keyword].map((c, i) => (upper[i] ? c.toUpperCase() : c.toLowerCase())).join(""),
    );
  const msgNumber = fc.integer({ min: 0, max: 999_999_999 });
  const word = fc.string({ unit: fc.integer({ min: 0x21, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 60 });

  it("parses valid commands with random arguments in any letter case", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.tuple(keywordCase("RETR"), msgNumber).map(([k, n]) => ({ line: `${k} ${n}`, command: { name: "RETR", msg: n } })),
          fc.tuple(keywordCase("DELE"), msgNumber).map(([k, n]) => ({ line: `${k} ${n}`, command: { name: "DELE", msg: n } })),
          fc.tuple(keywordCase("LIST"), msgNumber).map(([k, n]) => ({ line: `${k} ${n}`, command: { name: "LIST", msg: n } })),
          fc.tuple(keywordCase("UIDL"), msgNumber).map(([k, n]) => ({ line: `${k} ${n}`, command: { name: "UIDL", msg: n } })),
          fc.tuple(keywordCase("TOP"), msgNumber, msgNumber).map(([k, m, n]) => ({ line: `${k} ${m} ${n}`, command: { name: "TOP", msg: m, lines: n } })),
          fc.tuple(keywordCase("USER"), word).map(([k, user]) => ({ line: `${k} ${user}`, command: { name: "USER", user } })),
          // PASS keeps the rest of the line verbatim, spaces and all.
          fc
            .tuple(keywordCase("PASS"), fc.string({ unit: fc.integer({ min: 0x20, max: 0x7e }).map((c) => String.fromCharCode(c)), minLength: 1, maxLength: 200 }))
            .map(([k, password]) => ({ line: `${k} ${password}`, command: { name: "PASS", password } })),
          fc
            .tuple(fc.constantFrom("CAPA", "STLS", "QUIT", "STAT", "NOOP", "RSET").chain((k) => fc.tuple(fc.constant(k), keywordCase(k))))
            .map(([[name, k]]) => ({ line: k, command: { name } })),
        ),
        ({ line, command }) => {
          expect(parseCommand(line)).toEqual({ kind: "command", command });
        },
      ),
      params(3000),
    );
  });

  it("refuses numbers that do not fit, and out-of-range arguments, instead of misreading them", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("RETR", "DELE", "LIST", "UIDL"),
        fc.oneof(
          fc.bigInt({ min: 1_000_000_000n, max: 10n ** 40n }).map(String),
          fc.integer({ min: -1_000_000, max: -1 }).map(String),
          fc.constantFrom("1e3", "0x10", "+1", "1.0", "١", "NaN", "Infinity"),
        ),
        (keyword, arg) => {
          expect(parseCommand(`${keyword} ${arg}`).kind).toBe("error");
        },
      ),
      params(1000),
    );
  });
});

// ---- dot-stuffing ------------------------------------------------------------------------------

const CRLF_DOT_CRLF = Buffer.from("\r\n.\r\n");

function stuff(message: Uint8Array, cuts: readonly number[]): Buffer {
  const stuffer = new DotStuffer();
  const pieces: Uint8Array[] = [];
  for (const chunk of split(message, cuts)) pieces.push(...stuffer.push(chunk));
  pieces.push(stuffer.end());
  return Buffer.concat(pieces);
}

/**
 * A client's reading of a multi-line reply body, like Python's poplib: a line ends at LF (CRLF or bare),
 * the line "." ends the reply, and a leading "." is removed from any other line. Returns the body and
 * the octets left after the terminator.
 */
function unstuff(wire: Buffer): { body: Buffer; after: number } {
  const parts: Buffer[] = [];
  let at = 0;
  while (at < wire.length) {
    const lf = wire.indexOf(0x0a, at);
    const end = lf === -1 ? wire.length : lf + 1;
    const line = wire.subarray(at, end);
    if (line.equals(Buffer.from(".\r\n"))) return { body: Buffer.concat(parts), after: wire.length - end };
    parts.push(line[0] === 0x2e ? line.subarray(1) : line);
    at = end;
  }
  throw new Error("no terminator");
}

const messageBytes = fc.oneof(
  hostileBytes(400),
  // Text made of lines, many of them starting with dots: the case stuffing exists for.
  fc
    .array(fc.oneof(fc.constantFrom(".", "..", ".\r", "", " .", "From x"), fc.string({ maxLength: 20 })), { maxLength: 30 })
    .chain((lines) => fc.tuple(fc.constant(lines), fc.constantFrom("\r\n", "\n")))
    .map(([lines, eol]) => encoder.encode(lines.join(eol) + (lines.length % 2 ? eol : ""))),
);

describe("POP3 dot-stuffing (RETR/TOP bodies)", () => {
  it("unstuff(stuff(M)) is M (plus the CRLF a last line without one gets), for any chunking", () => {
    fc.assert(
      fc.property(
        messageBytes.chain((m) => fc.tuple(fc.constant(m), cutsOf(m.length))),
        ([message, cuts]) => {
          const wire = stuff(message, cuts);
          expect(wire.equals(stuff(message, []))).toBe(true);
          const { body, after } = unstuff(wire);
          expect(after).toBe(0);
          const m = Buffer.from(message);
          const endsWithCrlf = m.length >= 2 && m[m.length - 2] === 0x0d && m[m.length - 1] === 0x0a;
          const expected = m.length === 0 || endsWithCrlf ? m : Buffer.concat([m, Buffer.from("\r\n")]);
          expect(body.equals(expected)).toBe(true);
        },
      ),
      params(3000),
    );
  });

  it("never lets <CRLF>.<CRLF> (or a lone '.' line) appear before the terminator", () => {
    fc.assert(
      fc.property(
        messageBytes.chain((m) => fc.tuple(fc.constant(m), cutsOf(m.length))),
        ([message, cuts]) => {
          // The body starts right after the status line's CRLF.
          const wire = Buffer.concat([Buffer.from("\r\n"), stuff(message, cuts)]);
          expect(wire.indexOf(CRLF_DOT_CRLF)).toBe(wire.length - CRLF_DOT_CRLF.length);
          // LF-reading clients: no line is a bare "." before the end either.
          const body = wire.subarray(0, wire.length - 3);
          expect(body.includes(Buffer.from("\n.\n"))).toBe(false);
          expect(body.includes(Buffer.from("\n.\r\n"))).toBe(false);
        },
      ),
      params(3000),
    );
  });
});
