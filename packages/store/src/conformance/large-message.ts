import { createHash, type Hash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { bytes, text, useHarness, type ConformanceOptions } from "./harness.js";
import { MemoryProbe, megabytes } from "./memory-probe.js";

const TOTAL = 50 * 1024 * 1024;
const CHUNK = 64 * 1024;
/** Memory a bounded-memory store may keep while 50 MB stream through it (see memory-probe.ts). */
const MEMORY_BUDGET = 16 * 1024 * 1024;
const HEADER = "From: big@remote.test\r\nTo: alice@example.test\r\nSubject: fifty megabytes\r\n\r\n";

/**
 * 50 MB of CRLF text made on the fly: every chunk is new (a store may keep chunks it was given), and
 * carries its own number so that a store mixing chunks up changes the hash.
 */
async function* generate(hash: Hash, probe: MemoryProbe | undefined): AsyncGenerator<Uint8Array> {
  const line = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#$%&*+-/=?^_\r\n";
  const template = bytes(line.repeat(Math.ceil(CHUNK / line.length)).slice(0, CHUNK));
  const header = bytes(HEADER);
  let sent = 0;
  let index = 0;
  while (sent < TOTAL) {
    let chunk: Uint8Array;
    if (index === 0) {
      chunk = new Uint8Array(CHUNK);
      chunk.set(header);
      chunk.set(template.subarray(0, CHUNK - header.length), header.length);
    } else {
      chunk = template.slice(0, Math.min(CHUNK, TOTAL - sent));
      const stamp = bytes(index.toString(16).padStart(8, "0"));
      chunk.set(stamp, 0);
    }
    hash.update(chunk);
    sent += chunk.length;
    index++;
    probe?.sample(chunk.length);
    yield chunk;
  }
}

export function largeMessageTests(options: ConformanceOptions): void {
  describe("large messages", () => {
    const h = useHarness(options);

    it(
      "appends and reads back a 50 MB message intact (bounded memory when the store claims it)",
      async () => {
        const { store } = await h.fresh();
        const bounded = store.capabilities.boundedMemory;
        const probe = bounded ? await MemoryProbe.create() : undefined;
        const box = store.mailbox("alice@example.test");

        const sourceHash = createHash("sha256");
        probe?.start();
        const info = await box.append(generate(sourceHash, probe));
        const appendGrowth = probe?.growth ?? 0;
        expect(info.size).toBe(TOTAL);
        expect((await box.list()).find((m) => m.uid === info.uid)?.size).toBe(TOTAL);

        const readHash = createHash("sha256");
        let octets = 0;
        probe?.start();
        for await (const chunk of await box.read(info.uid)) {
          readHash.update(chunk);
          octets += chunk.length;
          probe?.sample(chunk.length);
        }
        const readGrowth = probe?.growth ?? 0;
        expect(octets).toBe(TOTAL);
        expect(readHash.digest("hex")).toBe(sourceHash.digest("hex"));

        if (bounded) {
          expect(appendGrowth, `memory growth during append: ${megabytes(appendGrowth)}`).toBeLessThan(MEMORY_BUDGET);
          expect(readGrowth, `memory growth during read: ${megabytes(readGrowth)}`).toBeLessThan(MEMORY_BUDGET);
        }

        // TOP of a huge message must not need the whole body.
        const started = Date.now();
        let top = "";
        for await (const chunk of await box.read(info.uid, { bodyLines: 1 })) top += text(chunk);
        expect(top.startsWith(HEADER)).toBe(true);
        expect(top.length).toBeLessThan(HEADER.length + 200);
        expect(Date.now() - started).toBeLessThan(10_000);
      },
      240_000,
    );

    it(
      "delivers a 50 MB message to two mailboxes intact (bounded memory when the store claims it)",
      async () => {
        // SMTP hands every message to deliver, often for several recipients: the path that must stream
        // the most, and usually not the one append takes.
        const { store } = await h.fresh();
        const bounded = store.capabilities.boundedMemory;
        const probe = bounded ? await MemoryProbe.create() : undefined;
        const ids = ["alice@example.test", "bob@example.test"];

        const sourceHash = createHash("sha256");
        probe?.start();
        const delivered = await store.deliver(ids, generate(sourceHash, probe));
        const deliverGrowth = probe?.growth ?? 0;
        const expected = sourceHash.digest("hex");
        expect(delivered.map((d) => [d.mailbox, d.message.size])).toEqual(ids.map((id) => [id, TOTAL]));

        for (const d of delivered) {
          const box = store.mailbox(d.mailbox);
          expect((await box.list()).map((m) => [m.uid, m.size])).toEqual([[d.message.uid, TOTAL]]);
          const readHash = createHash("sha256");
          let octets = 0;
          for await (const chunk of await box.read(d.message.uid)) {
            readHash.update(chunk);
            octets += chunk.length;
          }
          expect(octets, d.mailbox).toBe(TOTAL);
          expect(readHash.digest("hex"), d.mailbox).toBe(expected);
        }
        if (bounded) {
          expect(deliverGrowth, `memory growth during deliver: ${megabytes(deliverGrowth)}`).toBeLessThan(MEMORY_BUDGET);
        }
      },
      240_000,
    );
  });
}
