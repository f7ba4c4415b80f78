import { randomBytes } from "node:crypto";
import { connect, createServer, type Socket } from "node:net";
import { afterAll, describe, expect, it } from "vitest";
import { fromBytes, isStoreError, type Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schema = uniqueSchema("recovery");
const appName = `mailroom-test-${randomBytes(6).toString("hex")}`;
let store: Store | undefined;
/** The UID of the first message appended to r@example.test, which the later tests still see. */
let firstUid = "";

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

/**
 * A TCP proxy in front of the test database that can stop forwarding without closing anything: what
 * a frozen database host or a network that silently drops packets looks like to the client.
 */
async function freezableProxy(): Promise<{ url: string; freeze(): void; close(): Promise<void> }> {
  const target = new URL(PG_URL);
  let frozen = false;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(from);
      from.on("data", (data: Buffer) => {
        if (!frozen) to.write(data);
      });
      from.on("error", () => undefined);
      from.on("close", () => {
        sockets.delete(from);
        if (!frozen) to.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const address = server.address();
  if (address === null || typeof address === "string") throw new Error("no port");
  const url = new URL(PG_URL);
  url.hostname = "127.0.0.1";
  url.port = String(address.port);
  return {
    url: url.toString(),
    freeze: () => {
      frozen = true;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(!available)("postgres store recovery", () => {
  it("answers again after its connections were terminated", async () => {
    store = await createPostgresStore({ url: PG_URL, schema, applicationName: appName, poolSize: 3 });
    const box = store.mailbox("r@example.test");
    firstUid = (await box.append(fromBytes("before"))).uid;
    await Promise.all([store.ping(), box.list(), store.directory.listDomains()]);
    expect(await killOurConnections()).toBeGreaterThan(0);
    await eventually(() => store!.ping());
    expect((await eventually(() => box.list())).map((m) => m.uid)).toEqual([firstUid]);
  });

  it("finishes an append whose connections die while it waits for the sender", async () => {
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
    // The chunks so far are committed and no connection waits for the sender, so nothing is lost.
    expect(await killOurConnections()).toBeGreaterThan(0);
    // Until the pool has noticed, its next statement may still meet a dead connection (see above).
    await eventually(() => store!.ping());
    release();
    const info = await append;
    expect(info.size).toBe(800_000);
    expect((await box.list()).map((m) => m.uid)).toEqual([firstUid, info.uid]);
    const after = (await box.append(fromBytes("after"))).uid;
    expect((await box.list()).map((m) => m.uid)).toEqual([firstUid, info.uid, after]);
  });

  it("gives up on a database that stopped answering after queryTimeoutMs, as unavailable", async () => {
    const proxy = await freezableProxy();
    const frozenSchema = uniqueSchema("frozen");
    const frozen = await createPostgresStore({
      url: proxy.url,
      schema: frozenSchema,
      poolSize: 3,
      queryTimeoutMs: 1000,
      connectTimeoutMs: 1000,
    });
    try {
      const box = frozen.mailbox("f@example.test");
      const { uid } = await box.append(fromBytes("before"));
      const lease = await box.acquireLease({ holder: "t", ttlMs: 60_000 });
      // Three connections in the pool, so the calls below meet open connections, not a new connect.
      await Promise.all([box.list(), box.list(), box.list()]);
      proxy.freeze();
      // One statement on a pooled connection, then a transaction: its ROLLBACK would wait as long again.
      for (const call of [() => box.list(), () => box.expunge([uid], lease)]) {
        const started = Date.now();
        await expect(call()).rejects.toMatchObject({ name: "StoreError", code: "unavailable", message: expect.stringContaining("timeout") });
        expect(Date.now() - started).toBeLessThan(1900);
      }
    } finally {
      await frozen.close();
      await proxy.close();
      await dropSchemas(frozenSchema);
    }
  });

  it("reports a database that is not listening as unavailable", async () => {
    const port = await freePort();
    await expect(
      createPostgresStore({ url: `postgres://postgres@127.0.0.1:${port}/postgres`, connectTimeoutMs: 2000 }),
    ).rejects.toMatchObject({ name: "StoreError", code: "unavailable" });
  });
});
