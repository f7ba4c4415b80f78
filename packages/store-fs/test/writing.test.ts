import { closeSync, readFileSync, statSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openNewSyncing, SYNC_WRITES } from "../src/fdio.js";
import { writeMessageFile } from "../src/writing.js";
import { tempRoot } from "./helpers.js";

const BATCH = 128 * 1024;
const durable = { fsync: true };

/** `total` octets of CRLF text in chunks of `chunk`, from one buffer the source reuses for each. */
async function* reused(total: number, chunk: number): AsyncGenerator<Uint8Array> {
  const buffer = new Uint8Array(chunk);
  for (let at = 0; at < total; at += chunk) {
    const n = Math.min(chunk, total - at);
    for (let i = 0; i < n; i++) buffer[i] = expected(at + i);
    yield buffer.subarray(0, n);
  }
}

/** The octet at `i`: lines of 78 letters and CRLF, so the contents show any shift or overwrite. */
function expected(i: number): number {
  const column = i % 80;
  if (column === 78) return 0x0d;
  if (column === 79) return 0x0a;
  return 0x41 + ((Math.floor(i / 80) + column) % 26);
}

function isExpected(data: Uint8Array, total: number): boolean {
  if (data.length !== total) return false;
  for (let i = 0; i < total; i++) if (data[i] !== expected(i)) return false;
  return true;
}

describe("writeMessageFile", () => {
  // Around the batch (the single syncing write below it, the switch to a plain descriptor at and
  // above it), with chunks that do and do not divide it.
  const sizes = [0, 1, 4_000, BATCH - 1, BATCH, BATCH + 1, 2 * BATCH + 17, 1_000_000];
  for (const total of sizes) {
    it(`writes ${total} octets durably and intact, stamped with the time it reports`, async () => {
      const root = await tempRoot("writing");
      for (const chunk of [4_096, 65_536, 100_000]) {
        const path = join(root, `m-${total}-${chunk}`);
        const result = await writeMessageFile(path, reused(total, chunk), durable, undefined);
        expect(result.size).toBe(total);
        expect(result.crlfSize).toBe(total);
        expect(isExpected(readFileSync(path), total)).toBe(true);
        expect(result.receivedAt).toBe(Math.round(statSync(path).mtimeMs));
      }
    });
  }

  it("stamps an explicit receivedAt (an import) on a message of one batch and of several", async () => {
    const root = await tempRoot("writing-stamp");
    const when = Date.UTC(2024, 0, 2, 3, 4, 5);
    for (const total of [5_000, 3 * BATCH]) {
      const path = join(root, `m-${total}`);
      const result = await writeMessageFile(path, reused(total, 8_192), durable, when);
      expect(result.receivedAt).toBe(when);
      expect(statSync(path).mtimeMs).toBe(when);
      expect(isExpected(readFileSync(path), total)).toBe(true);
    }
  });

  it("leaves no file behind when the source fails before or after the first batch", async () => {
    const root = await tempRoot("writing-fail");
    for (const before of [10_000, BATCH + 10_000]) {
      async function* failing(): AsyncGenerator<Uint8Array> {
        yield* reused(before, 4_096);
        throw new Error("client went away");
      }
      await expect(writeMessageFile(join(root, `m-${before}`), failing(), durable, undefined)).rejects.toThrow("client went away");
    }
    expect(await readdir(root)).toEqual([]);
  });

  it("counts bare LFs for the CRLF size", async () => {
    const root = await tempRoot("writing-lf");
    const path = join(root, "m");
    const source = (async function* () {
      yield new TextEncoder().encode("a\nb\r\nc\n");
    })();
    const result = await writeMessageFile(path, source, durable, undefined);
    expect(result).toMatchObject({ size: 7, crlfSize: 9 });
    expect(await readFile(path, "utf8")).toBe("a\nb\r\nc\n");
  });

  // The flag must reach open(2): a runtime that dropped it would acknowledge mail before it is on disk.
  it.runIf(process.platform === "linux" && SYNC_WRITES !== null)("opens with O_SYNC as the kernel sees it", async () => {
    const root = await tempRoot("writing-flag");
    const fd = await openNewSyncing(join(root, "f"));
    try {
      const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))?.[1];
      expect(flags).toBeDefined();
      expect(Number.parseInt(flags!, 8) & SYNC_WRITES!).toBe(SYNC_WRITES);
    } finally {
      closeSync(fd);
    }
  });
});
