import { Readable } from "node:stream";
import { describe, expect, it } from "vitest";
import { fromBytes } from "../streams.js";
import {
  CLOCK_SLACK_MS,
  appendBytes,
  bytes,
  expectSameBytes,
  expectStoreError,
  failingSource,
  message,
  oneReusedBuffer,
  readBytes,
  sleep,
  text,
  uidsOf,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";

/** Every octet value, several times, including bare CR, bare LF, NUL and a lone dot line. */
function binaryMessage(): Uint8Array {
  const head = bytes("Content-Type: application/octet-stream\r\n\r\n");
  const body = new Uint8Array(256 * 4 + 7);
  for (let i = 0; i < 256 * 4; i++) body[i] = (i * 7) % 256;
  body.set(bytes("\r\n.\r\n\n"), 256 * 4);
  const out = new Uint8Array(head.length + body.length);
  out.set(head);
  out.set(body, head.length);
  return out;
}

async function* oneByteAtATime(data: Uint8Array): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i++) yield data.slice(i, i + 1);
}

/**
 * Chunks that are views into the middle of larger buffers, as Node's pooled Buffers are: a store that
 * uses `chunk.buffer` without `byteOffset`/`byteLength` stores the neighbours' bytes.
 */
async function* offsetViews(data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let offset = 0; offset < data.length; offset += size) {
    const part = data.subarray(offset, Math.min(offset + size, data.length));
    const backing = new Uint8Array(part.length + 64).fill(0x58);
    backing.set(part, 32);
    yield backing.subarray(32, 32 + part.length);
  }
}

export function appendListReadTests(options: ConformanceOptions): void {
  describe("append, list, read", () => {
    const h = useHarness(options);

    const samples: Array<[string, Uint8Array]> = [
      ["CRLF text", message("crlf", "second line\r\n\r\nafter an empty line\r\n")],
      ["8-bit binary octets", binaryMessage()],
      ["headers and an empty body", bytes("Subject: empty\r\nFrom: a@b.test\r\n\r\n")],
      ["a message without an empty line", bytes("Subject: only headers\r\nX-No-Body: yes\r\n")],
      ["a message without a final line break", bytes("Subject: no eol\r\n\r\nlast line without CRLF")],
      ["bare-LF text", bytes("Subject: unix\nFrom: a@b.test\n\nline 1\nline 2\n")],
      ["UTF-8 headers", bytes("Subject: Grüße aus 例え\r\nFrom: ü@例え.jp\r\n\r\nÄÖÜ\r\n")],
      ["an empty message (no octets at all)", new Uint8Array(0)],
    ];

    for (const [what, data] of samples) {
      it(`keeps ${what} byte for byte, with size = octets read`, async () => {
        const { store } = await h.fresh();
        const box = store.mailbox("alice@example.test");
        const info = await appendBytes(box, data);
        expect(info.size).toBe(data.length);
        const read = await readBytes(box, info.uid);
        expectSameBytes(read, data);
        const listed = await box.list();
        expect(listed).toHaveLength(1);
        expect(listed[0]!.uid).toBe(info.uid);
        expect(listed[0]!.size).toBe(read.length);
      });
    }

    it("takes the source in any chunking: one octet at a time and one big chunk", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = message("chunks", "x".repeat(300_000) + "\r\n");
      const small = await box.append(oneByteAtATime(data.subarray(0, 5_000)));
      const big = await box.append(fromBytes(data, data.length));
      expectSameBytes(await readBytes(box, small.uid), data.subarray(0, 5_000));
      expectSameBytes(await readBytes(box, big.uid), data);
      expect(big.size).toBe(data.length);
    });

    it("keeps the octets of each chunk, not the chunk: a source may reuse its buffer for the next one", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      let body = "";
      for (let i = 0; body.length < 600_000; i++) body += `line ${i} ${"r".repeat(i % 90)}\r\n`;
      const data = message("reused", body);
      // Small and large messages, whole chunks and single octets: every way a store may gather.
      const cases = [
        [data.subarray(0, 3_000), 1],
        [data.subarray(0, 40_000), 1],
        [data, 7 * 1024],
        [data, 64 * 1024 + 3],
      ] as const;
      for (const [part, size] of cases) {
        const info = await box.append(oneReusedBuffer(part, size));
        expect(info.size).toBe(part.length);
        expectSameBytes(await readBytes(box, info.uid), part);
      }
    });

    it("takes chunks that are views into larger buffers, Node streams and web streams", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = message("views", "v".repeat(10_000) + "\r\n");
      const viaViews = await box.append(offsetViews(data, 777));
      const viaNode = await box.append(Readable.from([Buffer.from(data.subarray(0, 100)), Buffer.from(data.subarray(100))]));
      const web = new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(data.subarray(0, 5000));
          controller.enqueue(data.subarray(5000));
          controller.close();
        },
      });
      const viaWeb = await box.append(web as unknown as AsyncIterable<Uint8Array>);
      for (const info of [viaViews, viaNode, viaWeb]) {
        expect(info.size).toBe(data.length);
        expectSameBytes(await readBytes(box, info.uid), data);
      }
    });

    it("copes with readers that stop early, and keeps working afterwards", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = message("abandoned", "w".repeat(2_000_000));
      const { uid } = await box.append(fromBytes(data));
      // More abandoned reads than a typical connection pool has connections.
      for (let i = 0; i < 25; i++) {
        for await (const chunk of await box.read(uid)) {
          expect(chunk.length).toBeGreaterThan(0);
          break;
        }
      }
      for (let i = 0; i < 5; i++) await box.read(uid, { bodyLines: 0 });
      const next = await appendBytes(box, message("after abandoned reads"));
      expect(await uidsOf(box)).toEqual([uid, next.uid]);
      expectSameBytes(await readBytes(box, uid), data);
    });

    it("reads the same message more than once, also concurrently", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = message("twice", "y".repeat(200_000));
      const { uid } = await appendBytes(box, data);
      const [a, b] = await Promise.all([readBytes(box, uid), readBytes(box, uid)]);
      expectSameBytes(a, data);
      expectSameBytes(b, data);
      expectSameBytes(await readBytes(box, uid), data);
    });

    it("returns the append's info in list(), with receivedAt now and retrievedAt null", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const before = Date.now();
      const info = await appendBytes(box, message("info"));
      const after = Date.now();
      expect(info.receivedAt).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
      expect(info.receivedAt).toBeLessThanOrEqual(after + CLOCK_SLACK_MS);
      expect(info.retrievedAt).toBeNull();
      const [listed] = await box.list();
      expect(listed).toMatchObject({ uid: info.uid, size: info.size, receivedAt: info.receivedAt, retrievedAt: null });
    });

    it("lists messages in arrival order, and sees appends from another instance", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const box = store.mailbox("alice@example.test");
      const expected: string[] = [];
      for (let i = 0; i < 6; i++) {
        const target = i % 2 === 0 ? box : other.mailbox("alice@example.test");
        expected.push((await appendBytes(target, message(`order-${i}`))).uid);
        // Stores may order by a clock; keep arrivals apart by more than a tick.
        await sleep(3);
      }
      expect(await uidsOf(box)).toEqual(expected);
      expect(await uidsOf(other.mailbox("alice@example.test"))).toEqual(expected);
    });

    it("lists an untouched mailbox as empty", async () => {
      const { store } = await h.fresh();
      expect(await store.mailbox("never@example.test").list()).toEqual([]);
    });

    it('fails a read of a missing UID with "not-found"', async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      await expectStoreError(box.read("no-such-uid"), "not-found");
      const { uid } = await appendBytes(box, message("present"));
      await expectStoreError(box.read(`${uid}x`), "not-found");
      await expectStoreError(store.mailbox("bob@example.test").read(uid), "not-found");
    });

    it("keeps mailboxes apart", async () => {
      const { store } = await h.fresh();
      const a = await appendBytes(store.mailbox("alice@example.test"), message("for-alice"));
      const b = await appendBytes(store.mailbox("bob@example.test"), message("for-bob"));
      expect(await uidsOf(store.mailbox("alice@example.test"))).toEqual([a.uid]);
      expect(await uidsOf(store.mailbox("bob@example.test"))).toEqual([b.uid]);
      expect(text(await readBytes(store.mailbox("bob@example.test"), b.uid))).toContain("for-bob");
    });
  });

  describe("read with bodyLines (POP3 TOP)", () => {
    const h = useHarness(options);
    const head = "Subject: top\r\nFrom: a@b.test\r\n\r\n";
    const body = "one\r\ntwo\r\n\r\nfour\r\nfive\r\n";

    const cases: Array<[string, string, number, string]> = [
      ["k=0 gives the headers and the empty line", head + body, 0, head],
      ["k=2 gives two body lines", head + body, 2, head + "one\r\ntwo\r\n"],
      ["an empty body line counts as a line", head + body, 3, head + "one\r\ntwo\r\n\r\n"],
      ["k larger than the body gives the whole message", head + body, 50, head + body],
      ["k equal to the body's lines gives the whole message", head + body, 5, head + body],
      ["a last line without line break is included", head + "a\r\nb", 5, head + "a\r\nb"],
      ["bare-LF text, k=0", "Subject: lf\nX: y\n\nl1\nl2\n", 0, "Subject: lf\nX: y\n\n"],
      ["bare-LF text, k=1", "Subject: lf\nX: y\n\nl1\nl2\n", 1, "Subject: lf\nX: y\n\nl1\n"],
      ["a message without an empty line comes back whole", "Subject: x\r\nY: z\r\n", 0, "Subject: x\r\nY: z\r\n"],
    ];

    for (const [what, data, k, expected] of cases) {
      it(what, async () => {
        const { store } = await h.fresh();
        const box = store.mailbox("alice@example.test");
        const { uid } = await appendBytes(box, data);
        expect(text(await readBytes(box, uid, k))).toBe(expected);
      });
    }

    it("splits the header from the body even when chunks break inside CRLF CRLF", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = bytes(`${"X-Filler: " + "f".repeat(70) + "\r\n"}`.repeat(2000) + "\r\nbody 1\r\nbody 2\r\n");
      const { uid } = await box.append(fromBytes(data, 4093));
      const top = text(await readBytes(box, uid, 1));
      expect(top.endsWith("\r\n\r\nbody 1\r\n")).toBe(true);
      expect(top.length).toBe(data.length - "body 2\r\n".length);
    });

    it('fails TOP of a missing UID with "not-found"', async () => {
      const { store } = await h.fresh();
      await expectStoreError(store.mailbox("alice@example.test").read("missing", { bodyLines: 0 }), "not-found");
    });
  });

  describe("failed appends leave nothing", () => {
    const h = useHarness(options);

    it("keeps nothing of a source that fails midway, also after a restart", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const kept = await appendBytes(box, message("kept"));
      await expect(box.append(failingSource(message("broken", "z".repeat(100_000))))).rejects.toThrow();
      expect(await uidsOf(box)).toEqual([kept.uid]);
      await store.close();
      const reopened = await h.open(ns);
      expect(await uidsOf(reopened.mailbox("alice@example.test"))).toEqual([kept.uid]);
      const next = await appendBytes(reopened.mailbox("alice@example.test"), message("after"));
      expect(await uidsOf(reopened.mailbox("alice@example.test"))).toEqual([kept.uid, next.uid]);
    });

    it('refuses more than maxBytes with "too-big" and keeps nothing; exactly maxBytes is fine', async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const data = message("big", "b".repeat(50_000));
      await expectStoreError(box.append(fromBytes(data, 4096), { maxBytes: data.length - 1 }), "too-big");
      await expectStoreError(box.append(fromBytes(data, data.length), { maxBytes: 10 }), "too-big");
      expect(await box.list()).toEqual([]);
      const ok = await box.append(fromBytes(data, 4096), { maxBytes: data.length });
      expect(ok.size).toBe(data.length);
      const reopened = await h.open(ns);
      expect(await uidsOf(reopened.mailbox("alice@example.test"))).toEqual([ok.uid]);
    });

    it("keeps nothing when the signal aborts midway or was aborted before", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const controller = new AbortController();
      const data = message("aborted", "a".repeat(100_000));
      async function* source(): AsyncGenerator<Uint8Array> {
        yield data.subarray(0, 10_000);
        controller.abort(new Error("client went away"));
        await sleep(1);
        yield data.subarray(10_000);
      }
      await expect(box.append(source(), { signal: controller.signal })).rejects.toThrow();
      await expect(box.append(fromBytes(data), { signal: AbortSignal.abort() })).rejects.toThrow();
      expect(await box.list()).toEqual([]);
      await store.close();
      const reopened = await h.open(ns);
      expect(await reopened.mailbox("alice@example.test").list()).toEqual([]);
      expect(await reopened.listMailboxes()).not.toContain("alice@example.test");
    });
  });

  describe("store lifecycle", () => {
    const h = useHarness(options);

    it("lists every mailbox that got mail, exactly as named", async () => {
      const { ns, store } = await h.fresh();
      expect(await store.listMailboxes()).toEqual([]);
      await appendBytes(store.mailbox("alice@example.test"), message("a"));
      await store.deliver(["Bob@Example.test", "carol"], fromBytes(message("b")));
      const listed = [...(await store.listMailboxes())].sort();
      expect(listed).toEqual(["Bob@Example.test", "alice@example.test", "carol"].sort());
      const reopened = await h.open(ns);
      expect([...(await reopened.listMailboxes())].sort()).toEqual(listed);
    });

    it("answers ping, and closes idempotently", async () => {
      const { store } = await h.fresh();
      await expect(store.ping()).resolves.toBeUndefined();
      expect(typeof store.kind).toBe("string");
      expect(typeof store.capabilities.boundedMemory).toBe("boolean");
      // Every adapter but the in-memory reference must stream (the contract's rule): declaring false
      // would also skip the memory checks of the large-message and queue tests.
      if (store.kind !== "memory") expect(store.capabilities.boundedMemory, "capabilities.boundedMemory").toBe(true);
      expect(typeof store.capabilities.sharedAcrossProcesses).toBe("boolean");
      await store.close();
      await store.close();
    });

    it("survives closing one instance while another on the same namespace stays in use", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const { uid } = await appendBytes(store.mailbox("alice@example.test"), message("shared"));
      await store.close();
      await expect(other.ping()).resolves.toBeUndefined();
      expect(await uidsOf(other.mailbox("alice@example.test"))).toEqual([uid]);
    });
  });
}
