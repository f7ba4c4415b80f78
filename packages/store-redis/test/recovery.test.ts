import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Redis } from "ioredis";
import { fromBytes, isStoreError, type Store } from "@mailroom/store";
import { createRedisStore } from "../src/index.js";
import { adminClient, deletePrefix, redisUrl, requireRedis } from "./services.js";

const available = await requireRedis();

const prefix = `mrtest:recovery_${process.pid}_${Date.now().toString(36)}:`;
// Unique, so that we only ever kill our own connection on a shared Redis.
const connectionName = `mailroom-recovery-test-${randomBytes(6).toString("hex")}`;

async function connectionId(admin: Redis): Promise<string | undefined> {
  const list = String(await admin.call("CLIENT", "LIST"));
  const line = list.split("\n").find((l) => l.includes(` name=${connectionName} `));
  return line === undefined ? undefined : /\bid=(\d+)/.exec(line)?.[1];
}

async function eventually<T>(action: () => Promise<T>, withinMs: number): Promise<T> {
  const until = Date.now() + withinMs;
  for (;;) {
    try {
      return await action();
    } catch (error) {
      if (Date.now() > until) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

describe.skipIf(!available)("recovery", () => {
  let store: Store;
  let admin: Redis;

  beforeAll(async () => {
    store = await createRedisStore({ url: redisUrl, prefix, connectionName });
    admin = adminClient();
    await admin.connect();
  });

  afterAll(async () => {
    await store?.close();
    await admin?.quit();
    await deletePrefix(prefix);
  });

  it("answers again after its connection was killed", async () => {
    const box = store.mailbox("alice@example.test");
    const before = await box.append(fromBytes("Subject: before\r\n\r\n"));

    for (let round = 0; round < 2; round++) {
      const id = await connectionId(admin);
      expect(id, "the store's named connection is in CLIENT LIST").toBeDefined();
      expect(await admin.call("CLIENT", "KILL", "ID", id!)).toBe(1);

      // Right after the kill a call may fail, but only with a temporary StoreError, never hang or crash.
      try {
        await store.ping();
      } catch (error) {
        expect(isStoreError(error) && error.temporary, String(error)).toBe(true);
      }
      await eventually(() => store.ping(), 5_000);
    }

    const after = await eventually(() => box.append(fromBytes("Subject: after\r\n\r\n")), 5_000);
    expect((await box.list()).map((m) => m.uid)).toEqual([before.uid, after.uid]);
    expect(await connectionId(admin)).toBeDefined();
  });

  it("refuses calls after close with \"unavailable\"", async () => {
    const other = await createRedisStore({ url: redisUrl, prefix });
    await other.close();
    await expect(other.mailbox("bob@example.test").list()).rejects.toMatchObject({ code: "unavailable" });
    await expect(other.ping()).rejects.toMatchObject({ code: "unavailable" });
  });
});
