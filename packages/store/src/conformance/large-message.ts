import { createHash, type Hash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { bytes, text, useHarness, type ConformanceOptions } from "./harness.js";

const TOTAL = 50 * 1024 * 1024;
const CHUNK = 64 * 1024;
/** Growth of heap + array buffers allowed while 50 MB stream through a bounded-memory store. */
const MEMORY_BUDGET = 32 * 1024 * 1024;
const HEADER = "From: big@remote.test\r\nTo: alice@example.test\r\nSubject: fifty megabytes\r\n\r\n";

type Gc = () => void;

/**
 * A collector to call before sampling, so that garbage not yet collected does not count as growth.
 * `--expose-gc` gives one directly; on Node it can also be switched on at run time.
 */
async function findGc(): Promise<Gc | undefined> {
  const exposed = (globalThis as { gc?: unknown }).gc;
  if (typeof exposed === "function") return exposed as Gc;
  try {
    const v8 = await import("node:v8");
    const vm = await import("node:vm");
    v8.setFlagsFromString("--expose-gc");
    const gc = vm.runInNewContext("gc") as unknown;
    return typeof gc === "function" ? (gc as Gc) : undefined;
  } catch {
    return undefined;
  }
}

function used(): number {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Tracks the highest memory use seen, collecting every few megabytes when a collector exists. */
class MemoryProbe {
  peak = 0;
  baseline = 0;
  #sinceGc = 0;
  constructor(private readonly gc: Gc | undefined) {}
  start(): void {
    this.gc?.();
    this.baseline = used();
    this.peak = this.baseline;
    this.#sinceGc = 0;
  }
  sample(octets: number): void {
    this.#sinceGc += octets;
    if (this.gc && this.#sinceGc >= 4 * 1024 * 1024) {
      this.gc();
      this.#sinceGc = 0;
    }
    this.peak = Math.max(this.peak, used());
  }
  get growth(): number {
    return this.peak - this.baseline;
  }
}

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
        const probe = bounded ? new MemoryProbe(await findGc()) : undefined;
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
          const mb = (n: number) => `${(n / 1024 / 1024).toFixed(1)} MB`;
          expect(appendGrowth, `memory growth during append: ${mb(appendGrowth)}`).toBeLessThan(MEMORY_BUDGET);
          expect(readGrowth, `memory growth during read: ${mb(readGrowth)}`).toBeLessThan(MEMORY_BUDGET);
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
  });
}
