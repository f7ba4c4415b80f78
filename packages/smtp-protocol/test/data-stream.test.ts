import { describe, expect, it } from "vitest";
import { DataDecoder, type DataDecoderOptions } from "../src/index.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

function decoder(options: Partial<DataDecoderOptions> = {}): DataDecoder {
  return new DataDecoder({ mode: "dot", bareLineEndings: "reject", maxLineLength: 1000, maxBytes: 1_000_000, ...options });
}

/** Feeds the pieces; returns the message, whether it ended, what follows, and the problem. */
function run(pieces: string[], options: Partial<DataDecoderOptions> = {}) {
  const d = decoder(options);
  let out = "";
  let rest = "";
  let done = false;
  for (const piece of pieces) {
    if (done) {
      rest += piece;
      continue;
    }
    const r = d.push(enc.encode(piece));
    out += dec.decode(r.output);
    if (r.done) {
      done = true;
      rest += dec.decode(r.rest);
    }
  }
  return { out, done, rest, problem: d.problem, size: d.size };
}

describe("DataDecoder (DATA)", () => {
  it("passes lines through and ends at <CRLF>.<CRLF>", () => {
    expect(run(["Subject: a\r\n\r\nbody\r\n.\r\nQUIT\r\n"])).toEqual({ out: "Subject: a\r\n\r\nbody\r\n", done: true, rest: "QUIT\r\n", problem: null, size: 20 });
  });

  it("an empty message is a lone dot right away", () => {
    expect(run([".\r\n"])).toMatchObject({ out: "", done: true });
  });

  it("removes one leading dot: '..' → '.', '..x' → '.x', '.x' → 'x'", () => {
    expect(run(["..\r\n..x\r\n.x\r\n...\r\na.b\r\n.\r\n"]).out).toBe(".\r\n.x\r\nx\r\n..\r\na.b\r\n");
  });

  it("finds the end marker split across chunks at every position", () => {
    const whole = "line one\r\n..two\r\nthree\r\n.\r\nNOOP\r\n";
    for (let cut = 0; cut <= whole.length; cut++) {
      for (let cut2 = cut; cut2 <= whole.length; cut2++) {
        const r = run([whole.slice(0, cut), whole.slice(cut, cut2), whole.slice(cut2)]);
        expect(r.out, `cuts ${cut},${cut2}`).toBe("line one\r\n.two\r\nthree\r\n");
        expect(r.rest).toBe("NOOP\r\n");
      }
    }
  });

  it("byte by byte", () => {
    const whole = "a\r\n.\r\n";
    expect(run(Array.from(whole))).toMatchObject({ out: "a\r\n", done: true, rest: "" });
  });

  const smuggling: [string, string][] = [
    ["\\n.\\n", "a\n.\nb\r\n.\r\n"],
    ["\\n.\\r\\n", "a\n.\r\nb\r\n.\r\n"],
    ["\\r.\\r\\n", "a\r.\r\nb\r\n.\r\n"],
    ["\\r\\n.\\n", "a\r\n.\nb\r\n.\r\n"],
    ["\\r\\n.\\r", "a\r\n.\rb\r\n.\r\n"],
  ];

  it.each(smuggling)("%s does not end the message (reject mode)", (_name, input) => {
    for (let cut = 0; cut <= input.length; cut++) {
      const r = run([input.slice(0, cut), input.slice(cut)]);
      expect(r.done).toBe(true);
      expect(r.rest).toBe("");
      expect(r.problem).toBe("bare-line-ending");
      expect(r.out.includes("b")).toBe(false);
    }
  });

  it.each(smuggling)("%s does not end the message (normalize mode)", (_name, input) => {
    for (let cut = 0; cut <= input.length; cut++) {
      const r = run([input.slice(0, cut), input.slice(cut)], { bareLineEndings: "normalize" });
      expect(r).toMatchObject({ done: true, rest: "", problem: null });
      expect(r.out).toBe("a\r\n.\r\nb\r\n");
    }
  });

  it("a second end marker after a smuggled one belongs to the next command stream, not a second message", () => {
    const r = run(["x\n.\nMAIL FROM:<e@x>\r\n.\r\nRSET\r\n"]);
    expect(r).toMatchObject({ done: true, rest: "RSET\r\n", problem: "bare-line-ending" });
  });

  it("normalises bare LF and bare CR to CRLF", () => {
    expect(run(["a\nb\rc\r\r\n.\r\n"], { bareLineEndings: "normalize" }).out).toBe("a\r\nb\r\nc\r\n\r\n");
  });

  it("stops giving out octets after a problem but keeps looking for the end", () => {
    const r = run(["ok\r\nbad\nmore text\r\n", "and more\r\n.\r\nNOOP\r\n"]);
    expect(r.problem).toBe("bare-line-ending");
    expect(r.out).toBe("ok\r\nbad"); // nothing after the bare LF
    expect(r.rest).toBe("NOOP\r\n");
  });

  it("line length: 998 octets plus CRLF is fine, 999 is a problem; the dot-stuffing dot does not count", () => {
    expect(run([`${"x".repeat(998)}\r\n.\r\n`]).problem).toBe(null);
    expect(run([`.${".".repeat(998)}\r\n.\r\n`]).problem).toBe(null);
    const long = run([`${"x".repeat(999)}\r\n`, ".\r\n"]);
    expect(long).toMatchObject({ problem: "line-too-long", done: true });
  });

  it("size cap counts message octets and still finds the end", () => {
    const r = run(["0123456789\r\n", "0123456789\r\n.\r\n"], { maxBytes: 15 });
    expect(r).toMatchObject({ problem: "too-big", done: true });
    expect(r.size).toBe(24);
    expect(run(["0123456789\r\n.\r\n"], { maxBytes: 12 }).problem).toBe(null);
  });
});

describe("DataDecoder (BDAT, raw)", () => {
  it("keeps dots and never ends on its own", () => {
    const d = decoder({ mode: "raw" });
    const r = d.push(enc.encode("a\r\n.\r\n..\r\n"));
    expect(dec.decode(r.output)).toBe("a\r\n.\r\n..\r\n");
    expect(r.done).toBe(false);
    expect(d.finish().length).toBe(0);
  });

  it("a CR split from its LF across chunks is one line ending", () => {
    const d = decoder({ mode: "raw" });
    const a = d.push(enc.encode("a\r"));
    const b = d.push(enc.encode("\nb\r\n"));
    expect(dec.decode(a.output) + dec.decode(b.output)).toBe("a\r\nb\r\n");
    expect(d.problem).toBe(null);
  });

  it("a trailing CR at the last chunk is a bare CR", () => {
    const d = decoder({ mode: "raw" });
    d.push(enc.encode("a\r"));
    d.finish();
    expect(d.problem).toBe("bare-line-ending");
    const n = decoder({ mode: "raw", bareLineEndings: "normalize" });
    const out = dec.decode(n.push(enc.encode("a\r")).output) + dec.decode(n.finish());
    expect(out).toBe("a\r\n");
  });
});
