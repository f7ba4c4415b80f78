import { randomBytes } from "node:crypto";
import { createServer } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { fromBytes, isStoreError, type Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schema = uniqueSchema("recovery");
const appName = `mailroom-test-${randomBytes(6).toString("hex")}`;
let store: Store | undefined;

afterAll(async () => {
  await store?.close();
  if (available) await dropSchemas(schema);
});

/** Ends only the connections of this test's own store, found by the application_name we gave it. */
async function killOurConnections(): Promise<number> {
  const rows = await adminQuery<{ killed: boolean }>(
    "SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
    [appName],
  );
  return rows.filter((r) => r.killed).length;
}

/** The first call after a kill may still meet a dead connection; it must fail as "unavailable", not crash. */
async function eventually<T>(fn: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (error) {
      expect(isStoreError(error) && error.code).toBe("unavailable");
      if (attempt >= 5) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === "string") throw new Error("no port");
  return address.port;
}

describe.skipIf(!available)("postgres store recovery", () => {
  it("answers again after its connections were terminated", async () => {
    store = await createPostgresStore({ url: PG_URL, schema, applicationName: appName, poolSize: 3 });
    const box = store.mailbox("r@example.test");
    await box.append(fromBytes("before"));
    await Promise.all([store.ping(), box.list(), store.directory.listDomains()]);
    expect(await killOurConnections()).toBeGreaterThan(0);
    await eventually(() => store!.ping());
    expect((await eventually(() => box.list())).map((m) => m.uid)).toEqual(["u1"]);
  });

  it("rolls back an append whose connection dies midway, and keeps working", async () => {
    const box = store!.mailbox("r@example.test");
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let started!: () => void;
    const streaming = new Promise<void>((resolve) => (started = resolve));
    async function* source(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(400_000);
      started();
      await gate;
      yield new Uint8Array(400_000);
    }
    const append = box.append(source());
    await streaming;
    expect(await killOurConnections()).toBeGreaterThan(0);
    release();
    await expect(append).rejects.toMatchObject({ name: "StoreError", code: "unavailable" });
    expect((await eventually(() => box.list())).map((m) => m.uid)).toEqual(["u1"]);
    // A big append takes its UID before streaming, so the failed one may leave a gap, never a reuse.
    const after = (await box.append(fromBytes("after"))).uid;
    expect(after).not.toBe("u1");
    expect((await box.list()).map((m) => m.uid)).toEqual(["u1", after]);
  });

  it("reports a database that is not listening as unavailable", async () => {
    const port = await freePort();
    await expect(
      createPostgresStore({ url: `postgres://postgres@127.0.0.1:${port}/postgres`, connectTimeoutMs: 2000 }),
    ).rejects.toMatchObject({ name: "StoreError", code: "unavailable" });
  });
});
