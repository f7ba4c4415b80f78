import { createHash } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import type { Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schema = uniqueSchema("large");
let store: Store | undefined;

afterAll(async () => {
  await store?.close();
  if (available) await dropSchemas(schema);
});

const MB = 1024 * 1024;
const inUse = (): number => {
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
};

describe.skipIf(!available)("a 100 MB message", () => {
  it("goes in and out without holding it whole in memory", async () => {
    store = await createPostgresStore({ url: PG_URL, schema, poolSize: 2 });
    const box = store.mailbox("huge@example.test");
    const total = 100 * MB;
    // One reused 64 KiB block, so the test's own data adds nothing to the measurement.
    const block = new Uint8Array(64 * 1024);
    const hashIn = createHash("sha256");
    const base = inUse();
    let peak = 0;
    async function* generate(): AsyncGenerator<Uint8Array> {
      for (let sent = 0; sent < total; sent += block.length) {
        block.fill((sent / block.length) % 251);
        hashIn.update(block);
        peak = Math.max(peak, inUse() - base);
        yield block;
      }
    }
    const info = await box.append(generate());
    expect(info.size).toBe(total);

    const hashOut = createHash("sha256");
    let size = 0;
    for await (const chunk of await box.read(info.uid)) {
      hashOut.update(chunk);
      size += chunk.length;
      peak = Math.max(peak, inUse() - base);
    }
    expect(size).toBe(total);
    expect(hashOut.digest("hex")).toBe(hashIn.digest("hex"));
    // Buffers that pg has finished with count until the garbage collector runs, which it does when
    // tens of megabytes of them pile up, whatever the message size. Holding the message whole would
    // need all 100 MB on top of that.
    expect(peak).toBeLessThan(total * 0.9);
  }, 120_000);
});
