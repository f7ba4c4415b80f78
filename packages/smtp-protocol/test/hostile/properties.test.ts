import { Buffer } from "node:buffer";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { DataDecoder, LineReader, parseCommand, type DataDecoderOptions } from "../../src/index.js";
import { parseAnyPath, parsePath } from "../../src/parser.js";

/**
 * Property tests over the pure layers a hostile client reaches first: command line framing, the
 * command parser and the DATA/BDAT decoder. Runs are seeded, so a failure prints a seed and path that
 * replay it exactly (`HOSTILE_SEED=<seed>` overrides the default).
 */
const SEED = Number(process.env.HOSTILE_SEED ?? 20261127);
const params = (numRuns: number): fc.Parameters<unknown> => ({ seed: SEED, numRuns, verbose: 1 });

const encoder = new TextEncoder();
const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes).toString("latin1");

/** Hostile byte strings: random bytes, with CR, LF, NUL, "." and invalid UTF-8 made common. */
const hostileBytes = (maxLength: number): fc.Arbitrary<Uint8Array> =>
  fc
    .array(
      fc.oneof(
        { weight: 4, arbitrary: fc.integer({ min: 0, max: 255 }) },
        { weight: 3, arbitrary: fc.constantFrom(0x0d, 0x0a, 0x00, 0x2e, 0x20) },
        { weight: 1, arbitrary: fc.constantFrom(0xc3, 0x28, 0xff, 0xfe, 0x80, 0xed, 0xa0) },
        { weight: 4, arbitrary: fc.integer({ min: 0x41, max: 0x5a }) },
      ),
      { maxLength },
    )
    .map((bytes) => Uint8Array.from(bytes));

const cutsOf = (length: number): fc.Arbitrary<number[]> =>
  length < 2
    ? fc.constant([])
    : fc.uniqueArray(fc.integer({ min: 1, max: length - 1 }), { maxLength: 16 }).map((cuts) => cuts.sort((a, b) => a - b));

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

const withCuts = (bytes: fc.Arbitrary<Uint8Array>): fc.Arbitrary<[Uint8Array, number[]]> =>
  bytes.chain((b) => fc.tuple(fc.constant(b), cutsOf(b.length)));

// ---- command lines -----------------------------------------------------------------------------

/** What the session does: take lines from each chunk until it is used up. Lines as latin1 text. */
function lines(reader: LineReader, chunks: readonly Uint8Array[]): string[] {
  const out: string[] = [];
  for (const chunk of chunks) {
    let rest = chunk;
    while (rest.length > 0) {
      const { line, used } = reader.take(rest);
      expect(used).toBeGreaterThan(0);
      rest = rest.subarray(used);
      if (line === "too-long") out.push("<too-long>");
      else if (line !== null) out.push(latin1(line));
      // Whatever arrives, no more than one line's worth is ever held.
      expect(reader.pending).toBeLessThanOrEqual(reader.maxLine);
    }
  }
  return out;
}

describe("SMTP command line framing (LineReader) under hostile bytes", () => {
  it("gives the same lines whole or split at random positions, and never holds more than one line", () => {
    fc.assert(
      fc.property(withCuts(hostileBytes(900)), fc.integer({ min: 8, max: 300 }), ([bytes, cuts], max) => {
        const whole = lines(new LineReader(max), [bytes]);
        expect(lines(new LineReader(max), split(bytes, cuts))).toEqual(whole);
        for (const line of whole) if (line !== "<too-long>") expect(line.length).toBeLessThanOrEqual(max - 1);
        // Every LF ends exactly one line (or the swallowed end of a reported over-long one).
        const lfs = bytes.filter((b) => b === 0x0a).length;
        expect(whole.filter((l) => l !== "<too-long>").length).toBeLessThanOrEqual(lfs);
      }),
      params(2000),
    );
  });

  it("gives the same lines when split at every position and one byte at a time", () => {
    fc.assert(
      fc.property(hostileBytes(150), (bytes) => {
        const whole = lines(new LineReader(64), [bytes]);
        for (let cut = 1; cut < bytes.length; cut++) expect(lines(new LineReader(64), split(bytes, [cut]))).toEqual(whole);
        expect(lines(new LineReader(64), Array.from(bytes, (b) => Uint8Array.of(b)))).toEqual(whole);
      }),
      params(300),
    );
  });

  it("answers an endless line without LF once, at the limit, and keeps nothing of it", () => {
    const reader = new LineReader(512);
    const junk = new Uint8Array(64 * 1024).fill(0x78);
    const seen: string[] = [];
    for (let i = 0; i < 80; i++) seen.push(...lines(reader, [junk])); // 5 MiB
    expect(seen).toEqual(["<too-long>"]);
    expect(reader.pending).toBe(0);
    expect(reader.discarding).toBeGreaterThan(5 * 1024 * 1024 - 1024);
    // The line's end is swallowed silently and the next command is read normally.
    expect(lines(reader, [encoder.encode("tail\r\nNOOP\r\n")])).toEqual(["NOOP"]);
    expect(reader.discarding).toBe(0);
  });
});

describe("SMTP command parser under hostile text", () => {
  it("never throws, and accepted commands carry no control characters", () => {
    fc.assert(
      fc.property(
        fc.oneof(
          fc.string({ maxLength: 300 }),
          fc.string({ unit: "binary", maxLength: 300 }),
          hostileBytes(300).map((bytes) => new TextDecoder().decode(bytes)),
          // Almost-valid commands with hostile tails.
          fc
            .tuple(fc.constantFrom("MAIL FROM:<", "RCPT TO:<", "EHLO ", "BDAT ", "AUTH PLAIN ", "MAIL FROM:<a@b> SIZE="), fc.string({ unit: "binary", maxLength: 120 }))
            .map(([a, b]) => a + b),
        ),
        (line) => {
          const result = parseCommand(line);
          if (!result.ok) {
            expect(["unknown", "syntax"]).toContain(result.error);
            return;
          }
          // eslint-disable-next-line no-control-regex
          const control = /[\x00-\x1f\x7f]/;
          const c = result.command;
          if (c.verb === "MAIL" || c.verb === "RCPT") {
            expect(control.test(c.path.address)).toBe(false);
            for (const [key, value] of c.params) {
              expect(control.test(key)).toBe(false);
              if (value !== true) expect(control.test(value)).toBe(false);
            }
          }
          if (c.verb === "EHLO" || c.verb === "HELO") expect(control.test(c.domain)).toBe(false);
          if (c.verb === "BDAT") expect(Number.isSafeInteger(c.size) && c.size >= 0).toBe(true);
        },
      ),
      params(5000),
    );
  });

  const atext = fc.string({
    unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"),
    minLength: 1,
    maxLength: 30,
  });
  const label = fc.string({ unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyz0123456789-"), minLength: 1, maxLength: 20 });
  const domain = fc.array(label, { minLength: 1, maxLength: 4 }).map((labels) => labels.join("."));
  const letterCase = (text: string): fc.Arbitrary<string> =>
    fc.array(fc.boolean(), { minLength: text.length, maxLength: text.length }).map((up) =>
      [...text].map((c, i) => (up[i] ? c.toUpperCase() : c.toLowerCase())).join(""),
    );

  it("parses valid MAIL/RCPT/BDAT/EHLO with random arguments exactly", () => {
    fc.assert(
      fc.property(
        letterCase("MAIL FROM:"),
        letterCase("RCPT TO:"),
        atext,
        domain,
        fc.integer({ min: 0, max: 10 ** 15 - 1 }),
        fc.boolean(),
        (mail, rcpt, local, dom, size, last) => {
          const address = `${local}@${dom}`;
          const path = { address, local, domain: dom, utf8: false };
          expect(parseCommand(`${mail}<${address}> SIZE=${size}`)).toEqual({
            ok: true,
            command: { verb: "MAIL", path, params: new Map([["SIZE", String(size)]]) },
          });
          expect(parseCommand(`${rcpt}<${address}>`)).toEqual({ ok: true, command: { verb: "RCPT", path, params: new Map() } });
          expect(parseCommand(`BDAT ${size}${last ? " LAST" : ""}`)).toEqual({ ok: true, command: { verb: "BDAT", size, last } });
          expect(parseCommand(`EHLO ${dom}`)).toEqual({ ok: true, command: { verb: "EHLO", domain: dom } });
        },
      ),
      params(2000),
    );
  });
});

// ---- DATA decoder ------------------------------------------------------------------------------

const roomy = (options: Partial<DataDecoderOptions> = {}): DataDecoder =>
  new DataDecoder({ mode: "dot", bareLineEndings: "reject", maxLineLength: 1 << 30, maxBytes: 1 << 30, ...options });

interface Decoded {
  output: Buffer;
  done: boolean;
  /** Input octets the decoder took (up to and including the end marker). */
  taken: number;
  problem: string | null;
}

/** Feeds chunks the way the session does: stops at the end marker and hands the rest back. */
function decode(decoder: DataDecoder, chunks: readonly Uint8Array[]): Decoded {
  const out: Uint8Array[] = [];
  let taken = 0;
  for (const chunk of chunks) {
    const result = decoder.push(chunk);
    out.push(result.output.slice());
    taken += chunk.length - result.rest.length;
    if (result.done) return { output: Buffer.concat(out), done: true, taken, problem: decoder.problem };
    expect(result.rest.length).toBe(0);
  }
  return { output: Buffer.concat(out), done: false, taken, problem: decoder.problem };
}

/** Message lines without CR or LF; many start with dots, which is what stuffing is for. */
const messageLines = fc.array(
  fc.oneof(
    fc.constantFrom(".", "..", "...", ".x", "", " .", "From me"),
    fc.string({ unit: "binary", maxLength: 40 }).map((s) => s.replace(/[\r\n]/g, "")),
  ),
  { maxLength: 40 },
);

/**
 * A slow, obviously right model of where DATA ends and whether it had a bare line ending: the end is
 * the first <CRLF>.<CRLF>, where the start of the data counts as following a CRLF.
 */
function reference(wire: Uint8Array): { end: number; bare: boolean } {
  const text = latin1(wire);
  const at = ("\r\n" + text).indexOf("\r\n.\r\n");
  const end = at === -1 ? -1 : at + 3;
  const body = end === -1 ? text : text.slice(0, end);
  let bare = false;
  for (let i = 0; i < body.length; i++) {
    // A CR as the very last octet so far may still get its LF.
    if (body[i] === "\r" && body[i + 1] !== "\n" && !(end === -1 && i === body.length - 1)) bare = true;
    if (body[i] === "\n" && body[i - 1] !== "\r") bare = true;
  }
  return { end, bare };
}

const dotStuff = (lines: readonly string[]): string[] => lines.map((l) => (l.startsWith(".") ? `.${l}` : l));

describe("SMTP path parser short cut", () => {
  it("gives exactly what the general parser gives, for paths built from the characters that matter", () => {
    // Every character the short cut or the general parser treats specially, plus plain ones.
    const piece = fc.constantFrom("a", "Z", "0", ".", "..", "@", "<", ">", "[", "]", '"', "\\", "-", "_", "+", "!", "%", ":", ",", " ", "ü", "\u00ff", "x".repeat(250), "PostMaster", "=");
    const path = fc.array(piece, { maxLength: 12 }).map((parts) => `<${parts.join("")}`);
    const tail = fc.constantFrom("", ">", "> SIZE=10", ">>", "@b.example>");
    fc.assert(
      fc.property(path, tail, fc.boolean(), (head, end, allowNull) => {
        const text = head + end;
        expect(parsePath(text, allowNull)).toEqual(parseAnyPath(text, allowNull));
      }),
      params(20000),
    );
    for (const text of ["<a@b.example>", "<a.b+c@sub.example.test> SIZE=5", "<a@.b>", "<a@b.>", "<a@b..c>", "<a@b>"]) {
      expect(parsePath(text, false)).toEqual(parseAnyPath(text, false));
    }
  });
});

describe("SMTP DATA decoder under hostile input", () => {
  it("decodes dot-stuff(M) + <CRLF>.<CRLF>, split anywhere, to exactly M (+ its last CRLF), and leaves the rest", () => {
    fc.assert(
      fc.property(
        messageLines.chain((ls) => {
          const m = Buffer.from(ls.join("\r\n"), "utf8");
          const wire = Buffer.concat([Buffer.from(dotStuff(ls).join("\r\n"), "utf8"), Buffer.from("\r\n.\r\n"), Buffer.from("QUIT\r\n")]);
          return fc.tuple(fc.constant(ls), fc.constant(m), fc.constant(wire), cutsOf(wire.length));
        }),
        ([ls, m, wire, cuts]) => {
          const got = decode(roomy(), split(wire, cuts));
          expect(got.done).toBe(true);
          expect(got.problem).toBeNull();
          // The CRLF before the final dot belongs to the message (RFC 5321 4.1.1.4); an empty M is just that.
          const expected = ls.length === 0 ? Buffer.from("\r\n") : Buffer.concat([m, Buffer.from("\r\n")]);
          expect(got.output.equals(expected)).toBe(true);
          expect(got.taken).toBe(wire.length - "QUIT\r\n".length);
        },
      ),
      params(3000),
    );
  });

  it("random bytes: never throw, decode the same however split, and give nothing for bytes after the end marker", () => {
    fc.assert(
      fc.property(
        withCuts(hostileBytes(600)),
        fc.constantFrom<"reject" | "normalize">("reject", "normalize"),
        fc.integer({ min: 3, max: 2000 }),
        fc.integer({ min: 1, max: 2000 }),
        hostileBytes(100),
        ([bytes, cuts], bare, maxLineLength, maxBytes, trailer) => {
          const options = { bareLineEndings: bare, maxLineLength, maxBytes };
          const whole = decode(roomy(options), [bytes]);
          const pieces = decode(roomy(options), split(bytes, cuts));
          expect(pieces).toEqual(whole);
          const ref = reference(bytes);
          expect(whole.done).toBe(ref.end !== -1);
          if (whole.done) expect(whole.taken).toBe(ref.end);
          if (bare === "reject" && ref.bare) expect(whole.problem).not.toBeNull();
          if (bare === "reject" && whole.problem === null) expect(ref.bare).toBe(false);
          if (whole.problem !== null) expect(whole.output.length).toBeLessThanOrEqual(Math.max(maxBytes, 0) + 2);
          if (whole.done) {
            // Whatever follows the end marker is not message text.
            const followed = decode(roomy(options), [Buffer.concat([bytes.subarray(0, whole.taken), trailer])]);
            expect(followed).toEqual(whole);
            // And pushing more after the end gives nothing more.
            const decoder = roomy(options);
            decoder.push(bytes);
            const after = decoder.push(trailer);
            expect(after.output.length).toBe(0);
            expect(Buffer.from(after.rest).equals(Buffer.from(trailer))).toBe(true);
          }
        },
      ),
      params(3000),
    );
  });

  it("flags every message with a bare CR or LF in reject mode, wherever it sits, and still finds the end", () => {
    fc.assert(
      fc.property(
        messageLines.filter((ls) => ls.length > 0),
        fc.constantFrom("\r", "\n", "\r.\r", "\n.\n", "\n.\r\n", "\r\n.\n", "\r\n.\r"),
        fc.nat(),
        (ls, bare, where) => {
          const body = Buffer.from(dotStuff(ls).join("\r\n"), "utf8");
          const at = where % (body.length + 1);
          const wire = Buffer.concat([body.subarray(0, at), Buffer.from(bare), body.subarray(at), Buffer.from("\r\n.\r\n")]);
          const got = decode(roomy(), split(wire, [Math.floor(wire.length / 2)].filter((c) => c > 0 && c < wire.length)));
          // Smuggled markers do not end the message: only the first real <CRLF>.<CRLF> does (the insert may
          // itself complete one, e.g. "\r" + "\r\n.\r" + "\n"), and the bare CR/LF before it is flagged.
          const ref = reference(wire);
          expect(ref.end).toBeGreaterThan(0);
          expect(got.done).toBe(true);
          expect(got.taken).toBe(ref.end);
          // (An insert between a CR and its LF can complete a clean marker; then there is nothing to flag.)
          expect(got.problem).toBe(ref.bare ? "bare-line-ending" : null);
        },
      ),
      params(3000),
    );
  });

  it("raw (BDAT) mode passes any bytes without bare CR/LF through unchanged, split anywhere", () => {
    fc.assert(
      fc.property(
        withCuts(hostileBytes(500).map((b) => Buffer.from(latin1(b).replace(/\r\n|\r|\n/g, "\r\n"), "latin1"))),
        ([bytes, cuts]) => {
          const decoder = new DataDecoder({ mode: "raw", bareLineEndings: "reject", maxLineLength: 1 << 30, maxBytes: 1 << 30 });
          const out: Uint8Array[] = [];
          for (const chunk of split(bytes, cuts)) out.push(decoder.push(chunk).output.slice());
          out.push(decoder.finish());
          expect(decoder.problem).toBeNull();
          expect(Buffer.concat(out).equals(Buffer.from(bytes))).toBe(true);
        },
      ),
      params(2000),
    );
  });
});
