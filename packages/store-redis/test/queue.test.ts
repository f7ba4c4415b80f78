import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Redis } from "ioredis";
import { fromBytes, processStamp, readAll, type Store } from "@mailroom/store";
import { createRedisStore } from "../src/index.js";
import { adminClient, deletePrefix, keysUnder, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();
const prefix = `mrtest:queue_${process.pid}_${Date.now().toString(36)}:`;

async function* failing(): AsyncGenerator<Uint8Array> {
  yield new Uint8Array(40).fill(65);
  throw new Error("client went away");
}

describe.skipIf(!available)("redis outbound queue layout", () => {
  let store: Store;
  let admin: Redis;

  beforeAll(async () => {
    store = await createRedisStore({ url: redisUrl, prefix, chunkBytes: 16 });
    admin = adminClient();
    await admin.connect();
  });

  afterAll(async () => {
    await store?.close();
    await admin?.quit();
    await deletePrefix(prefix);
  });

  it("keeps every queue key under the {queue} hash tag, and the body in chunks", async () => {
    const item = await store.queue.enqueue(
      { sender: "a@example.test", recipients: ["b@remote.test"] },
      fromBytes("Subject: queued\r\n\r\nlonger than one sixteen-octet chunk\r\n"),
    );
    const [claim] = await store.queue.claim({ holder: "layout test with spaces", ttlMs: 30_000 });
    expect(claim?.item.id).toBe(item.id);
    const keys = (await keysUnder(admin, prefix)).map((k) => k.slice(prefix.length)).sort();
    const owners = processStamp() ? ["{queue}:claim-owners"] : [];
    expect(keys).toEqual(["{queue}:body:" + item.id, ...owners, "{queue}:claims", "{queue}:due", "{queue}:items"]);
    expect(await admin.llen(`${prefix}{queue}:body:${item.id}`)).toBe(Math.ceil(item.size / 16));
    expect(await admin.hget(`${prefix}{queue}:claims`, item.id)).toMatch(/^\S+ \d+ 30000 layout test with spaces$/);
    const renewed = await store.queue.renew(claim!);
    expect(renewed.token).toBe(claim!.token);
    expect(new TextDecoder().decode(await readAll(await store.queue.readMessage(item.id)))).toContain("sixteen-octet");
    await store.queue.finish(renewed);
    expect(await keysUnder(admin, prefix)).toEqual([]);
  });

  it("stores a message of one chunk as one piece, sent with the commit, and an empty one as no list", async () => {
    const small = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("Subject: s\r\n\r\n", 4));
    expect((await admin.lrangeBuffer(`${prefix}{queue}:body:${small.id}`, 0, -1)).map((p) => p.toString())).toEqual(["Subject: s\r\n\r\n"]);
    expect(new TextDecoder().decode(await readAll(await store.queue.readMessage(small.id)))).toBe("Subject: s\r\n\r\n");
    const empty = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes(""));
    expect(empty.size).toBe(0);
    expect(await admin.exists(`${prefix}{queue}:body:${empty.id}`)).toBe(0);
    expect(await readAll(await store.queue.readMessage(empty.id))).toHaveLength(0);
    expect((await keysUnder(admin, prefix)).filter((k) => k.includes(":stage:"))).toEqual([]);
    await store.queue.remove(small.id);
    await store.queue.remove(empty.id);
    expect(await keysUnder(admin, prefix)).toEqual([]);
  });

  it("leaves no staging list behind after a failed enqueue", async () => {
    await expect(store.queue.enqueue({ sender: "", recipients: ["b@remote.test"] }, failing())).rejects.toThrow("client went away");
    expect(await keysUnder(admin, prefix)).toEqual([]);
  });

  it("takes a dead item out of the due set, and retry puts it back", async () => {
    const item = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("x"));
    const [claim] = await store.queue.claim({ holder: "t", ttlMs: 30_000 });
    await store.queue.deadLetter(claim!, { error: "gave up" });
    expect(await admin.zscore(`${prefix}{queue}:due`, item.id)).toBeNull();
    expect(await admin.hexists(`${prefix}{queue}:claims`, item.id)).toBe(0);
    await store.queue.retry(item.id);
    expect(await admin.zscore(`${prefix}{queue}:due`, item.id)).not.toBeNull();
    await store.queue.remove(item.id);
    expect(await keysUnder(admin, prefix)).toEqual([]);
  });
});
