import { describe, expect, it } from "vitest";
import { isStoreError } from "../src/errors.js";
import { abortable, countBytes, fromBytes, guardAppendSource, limitBytes, readAll, takeTop } from "../src/streams.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

async function* chunks(...parts: Array<string | Uint8Array>): AsyncGenerator<Uint8Array> {
  for (const part of parts) yield typeof part === "string" ? enc.encode(part) : part;
}

async function collect(source: AsyncIterable<Uint8Array>): Promise<string> {
  return dec.decode(await readAll(source));
}

/** The expected TOP result, computed line by line without any streaming. */
function topOf(message: string, bodyLines: number): string {
  const lines = message.match(/[^\n]*\n|[^\n]+$/g) ?? [];
  let out = "";
  let i = 0;
  for (; i < lines.length; i++) {
    out += lines[i];
    if (/^\r?\n$/.test(lines[i]!)) break;
  }
  if (i === lines.length) return out;
  return out + lines.slice(i + 1, i + 1 + bodyLines).join("");
}

describe("takeTop", () => {
  const messages: Array<[string, string]> = [
    ["CRLF", "Subject: a\r\nFrom: b@c.test\r\n\r\nline 1\r\nline 2\r\n\r\nline 4\r\n"],
    ["bare LF", "Subject: a\nFrom: b@c.test\n\nline 1\nline 2\n\nline 4\n"],
    ["mixed", "Subject: a\r\nX: y\n\r\nline 1\nline 2\r\n"],
    ["no empty line", "Subject: a\r\nFrom: b@c.test\r\n"],
    ["no final line break", "Subject: a\r\n\r\nline 1\r\nline 2"],
    ["empty body", "Subject: a\r\n\r\n"],
    ["starts with the empty line", "\r\nbody only\r\nmore\r\n"],
    ["folded header", "Subject: a\r\n b\r\n\tc\r\n\r\nbody\r\n"],
  ];

  for (const [what, message] of messages) {
    it(`cuts a ${what} message right at every chunk split and line count`, async () => {
      const bytes = enc.encode(message);
      for (const k of [0, 1, 2, 3, 100]) {
        const expected = topOf(message, k);
        expect(await collect(takeTop(chunks(bytes), k)), `k=${k}, one chunk`).toBe(expected);
        for (let split = 0; split <= bytes.length; split++) {
          const got = await collect(takeTop(chunks(bytes.subarray(0, split), bytes.subarray(split)), k));
          expect(got, `k=${k}, split at ${split}`).toBe(expected);
        }
        const oneByOne = Array.from(bytes, (b) => Uint8Array.of(b));
        expect(await collect(takeTop(chunks(...oneByOne), k)), `k=${k}, one octet per chunk`).toBe(expected);
      }
    });
  }

  it("stops pulling from the source once it has enough", async () => {
    let pulled = 0;
    async function* endless(): AsyncGenerator<Uint8Array> {
      yield enc.encode("Subject: big\r\n\r\n");
      for (;;) {
        pulled++;
        yield enc.encode("body line\r\n".repeat(1000));
      }
    }
    const top = await collect(takeTop(endless(), 2));
    expect(top).toBe("Subject: big\r\n\r\nbody line\r\nbody line\r\n");
    expect(pulled).toBe(1);
  });

  it("treats negative and fractional line counts as whole non-negative numbers", async () => {
    const message = "S: a\r\n\r\n1\r\n2\r\n3\r\n";
    expect(await collect(takeTop(chunks(message), -5))).toBe("S: a\r\n\r\n");
    expect(await collect(takeTop(chunks(message), 1.9))).toBe("S: a\r\n\r\n1\r\n");
  });
});

describe("limitBytes", () => {
  it("passes exactly maxBytes and refuses one more with too-big", async () => {
    expect(await collect(limitBytes(chunks("abc", "def"), 6))).toBe("abcdef");
    await expect(collect(limitBytes(chunks("abc", "defg"), 6))).rejects.toMatchObject({ code: "too-big" });
  });

  it("fails before handing on the chunk that crosses the limit", async () => {
    const seen: string[] = [];
    try {
      for await (const chunk of limitBytes(chunks("1234", "5678", "9"), 6)) seen.push(dec.decode(chunk));
      expect.fail("should have thrown");
    } catch (error) {
      expect(isStoreError(error) && error.code).toBe("too-big");
    }
    expect(seen).toEqual(["1234"]);
  });

  it("stops pulling from an endless source", async () => {
    async function* endless(): AsyncGenerator<Uint8Array> {
      for (;;) yield new Uint8Array(1000);
    }
    await expect(countBytes(limitBytes(endless(), 10_000))).rejects.toMatchObject({ code: "too-big" });
  });
});

describe("abortable and guardAppendSource", () => {
  it("throws the signal's reason when aborted midway or before", async () => {
    const controller = new AbortController();
    const reason = new Error("client gone");
    async function* source(): AsyncGenerator<Uint8Array> {
      yield enc.encode("a");
      controller.abort(reason);
      yield enc.encode("b");
    }
    await expect(collect(abortable(source(), controller.signal))).rejects.toBe(reason);
    await expect(collect(abortable(chunks("x"), AbortSignal.abort(reason)))).rejects.toBe(reason);
  });

  it("notices an abort after the last chunk", async () => {
    const controller = new AbortController();
    async function* source(): AsyncGenerator<Uint8Array> {
      yield enc.encode("a");
      controller.abort();
    }
    await expect(collect(abortable(source(), controller.signal))).rejects.toThrow();
  });

  it("applies only the options given", async () => {
    const plain = chunks("hello");
    expect(guardAppendSource(plain)).toBe(plain);
    expect(guardAppendSource(plain, {})).toBe(plain);
    expect(await collect(guardAppendSource(chunks("hello"), { maxBytes: 5 }))).toBe("hello");
    await expect(collect(guardAppendSource(chunks("hello!"), { maxBytes: 5 }))).rejects.toMatchObject({ code: "too-big" });
    await expect(
      collect(guardAppendSource(chunks("hello"), { maxBytes: 100, signal: AbortSignal.abort() })),
    ).rejects.toThrow();
    expect(await collect(guardAppendSource(chunks("hi"), { maxBytes: undefined, signal: undefined }))).toBe("hi");
  });
});

describe("fromBytes, readAll, countBytes", () => {
  it("chunks bytes and text, and yields nothing for empty input", async () => {
    const sizes: number[] = [];
    for await (const chunk of fromBytes(new Uint8Array(10), 4)) sizes.push(chunk.length);
    expect(sizes).toEqual([4, 4, 2]);
    expect(await collect(fromBytes("grüße", 1))).toBe("grüße");
    let count = 0;
    for await (const _ of fromBytes("")) count++;
    expect(count).toBe(0);
  });

  it("reads and counts what it is given", async () => {
    expect(await readAll(chunks())).toEqual(new Uint8Array(0));
    expect(Array.from(await readAll(chunks(Uint8Array.of(0, 255), Uint8Array.of(13, 10))))).toEqual([0, 255, 13, 10]);
    expect(await countBytes(fromBytes(new Uint8Array(100_001), 4096))).toBe(100_001);
  });
});
