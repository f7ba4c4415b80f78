import { createHash } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { fromBytes, readAll, type Store, type StoreErrorCode } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const text = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
const schemas: string[] = [];
const stores: Store[] = [];

async function open(schema = uniqueSchema("store")): Promise<{ store: Store; schema: string }> {
  if (!schemas.includes(schema)) schemas.push(schema);
  const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4 });
  stores.push(store);
  return { store, schema };
}

async function codeOf(promise: Promise<unknown>): Promise<StoreErrorCode | string> {
  try {
    await promise;
  } catch (error) {
    return (error as { code?: StoreErrorCode }).code ?? String(error);
  }
  return "resolved";
}

afterAll(async () => {
  for (const store of stores) await store.close();
  if (available && schemas.length > 0) await dropSchemas(...schemas);
});

describe.skipIf(!available)("postgres store behaviour", () => {
  it("appends, lists and reads back the exact octets", async () => {
    const { store } = await open();
    const box = store.mailbox("alice@example.test");
    const info = await box.append(fromBytes("Subject: hi\r\n\r\nhello\r\n"), { receivedAt: 1_700_000_000_123 });
    expect(info).toEqual({ uid: expect.stringMatching(/^u[1-9][0-9]*$/), size: 22, receivedAt: 1_700_000_000_123, retrievedAt: null });
    expect(await box.list()).toEqual([info]);
    expect(text(await readAll(await box.read(info.uid)))).toBe("Subject: hi\r\n\r\nhello\r\n");
    expect(await codeOf(box.read("u9"))).toBe("not-found");
    expect(await store.listMailboxes()).toEqual(["alice@example.test"]);
  });

  it("keeps explicit UIDs, refuses duplicates and never hands out a UID twice", async () => {
    const { store, schema } = await open();
    const box = store.mailbox("bob@example.test");
    await box.append(fromBytes("a"), { uid: "u5", retrievedAt: 1_600_000_000_000 });
    expect(await codeOf(box.append(fromBytes("b"), { uid: "u5" }))).toBe("exists");
    expect(await codeOf(box.append(fromBytes("b"), { uid: "bad uid" }))).toBe("invalid-name");
    const next = await box.append(fromBytes("c"));
    expect(BigInt(next.uid.slice(1))).toBeGreaterThan(5n);
    const lease = await box.acquireLease({ holder: "test", ttlMs: 10_000 });
    expect(await box.expunge(["u5", next.uid, "gone"], lease)).toBe(2);
    await lease.release();
    await store.close();
    const again = (await open(schema)).store.mailbox("bob@example.test");
    const later = await again.append(fromBytes("d"));
    expect(BigInt(later.uid.slice(1))).toBeGreaterThan(BigInt(next.uid.slice(1)));
    expect((await again.list()).map((m) => m.uid)).toEqual([later.uid]);
  });

  it("returns the header and the first body lines for TOP", async () => {
    const { store } = await open();
    const box = store.mailbox("carol@example.test");
    const { uid } = await box.append(fromBytes("A: 1\r\nB: 2\r\n\r\nline1\r\nline2\r\nline3\r\n"));
    expect(text(await readAll(await box.read(uid, { bodyLines: 0 })))).toBe("A: 1\r\nB: 2\r\n\r\n");
    expect(text(await readAll(await box.read(uid, { bodyLines: 2 })))).toBe("A: 1\r\nB: 2\r\n\r\nline1\r\nline2\r\n");
  });

  it("keeps nothing of an append that is too big, aborted or whose source fails", async () => {
    const { store, schema } = await open();
    const box = store.mailbox("dave@example.test");
    expect(await codeOf(box.append(fromBytes("x".repeat(600_000), 1000), { maxBytes: 500_000 }))).toBe("too-big");
    const controller = new AbortController();
    async function* slow(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(300_000);
      controller.abort(new Error("client went away"));
      yield new Uint8Array(10);
    }
    await expect(box.append(slow(), { signal: controller.signal })).rejects.toThrow("client went away");
    async function* broken(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(300_000);
      throw new Error("socket reset by sender");
    }
    await expect(box.append(broken())).rejects.toThrow("socket reset by sender");
    expect(await box.list()).toEqual([]);
    const [row] = await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".bodies`);
    expect(row?.n).toBe("0");
  });

  it("stores a delivery to several mailboxes once and frees it after the last expunge", async () => {
    const { store, schema } = await open();
    const delivered = await store.deliver(["zed@example.test", "amy@example.test"], fromBytes("shared body\r\n"));
    expect(delivered.map((d) => [d.mailbox, d.message.size])).toEqual([
      ["zed@example.test", 13],
      ["amy@example.test", 13],
    ]);
    const [zedUid, amyUid] = delivered.map((d) => d.message.uid);
    const bodies = async (): Promise<number> =>
      Number((await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".bodies`))[0]!.n);
    expect(await bodies()).toBe(1);
    const amy = store.mailbox("amy@example.test");
    const zed = store.mailbox("zed@example.test");
    const amyLease = await amy.acquireLease({ holder: "t", ttlMs: 5000 });
    expect(await amy.expunge([amyUid!], amyLease)).toBe(1);
    expect(text(await readAll(await zed.read(zedUid!)))).toBe("shared body\r\n");
    expect(await bodies()).toBe(1);
    const zedLease = await zed.acquireLease({ holder: "t", ttlMs: 5000 });
    expect(await zed.expunge([zedUid!], zedLease)).toBe(1);
    expect(await bodies()).toBe(0);
    expect(Number((await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".body_chunks`))[0]!.n)).toBe(0);
  });

  it("fences writes with the lease token", async () => {
    const { store } = await open();
    const box = store.mailbox("erin@example.test");
    const { uid } = await box.append(fromBytes("one"));
    const first = await box.acquireLease({ holder: "first", ttlMs: 1000 });
    expect(await codeOf(box.acquireLease({ holder: "second", ttlMs: 5000 }))).toBe("in-use");
    await first.renew();
    await new Promise((resolve) => setTimeout(resolve, 1200));
    const second = await box.acquireLease({ holder: "second", ttlMs: 5000 });
    expect(await codeOf(first.renew())).toBe("lease-lost");
    expect(await codeOf(box.expunge([uid], first))).toBe("lease-lost");
    expect(await codeOf(box.markRetrieved([uid], first))).toBe("lease-lost");
    await first.release();
    await box.markRetrieved([uid], second);
    const [listed] = await box.list();
    expect(listed!.retrievedAt).toBeGreaterThan(Date.now() - 60_000);
    await second.release();
    await second.release();
    const third = await box.acquireLease({ holder: "third", ttlMs: 5000 });
    expect(third.expiresAt).toBeGreaterThan(Date.now());
    await third.release();
  });

  it("lets exactly one of many racing holders win a lease", async () => {
    const { store, schema } = await open();
    const other = (await open(schema)).store;
    const attempts = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        (i % 2 ? other : store).mailbox("race@example.test").acquireLease({ holder: `h${i}`, ttlMs: 5000 }),
      ),
    );
    expect(attempts.filter((a) => a.status === "fulfilled")).toHaveLength(1);
  });

  it("holds odd mailbox ids as plain data", async () => {
    const { store } = await open();
    const ids = ["../../etc/passwd", "o'brien\"; DROP TABLE messages; --", "ünï@exämple.test", "%s\\x"];
    const uids = new Map<string, string>();
    for (const id of ids) uids.set(id, (await store.mailbox(id).append(fromBytes(id))).uid);
    for (const id of ids) expect(text(await readAll(await store.mailbox(id).read(uids.get(id)!)))).toBe(id);
    expect([...(await store.listMailboxes())].sort()).toEqual([...ids].sort());
    expect(() => store.mailbox("")).toThrow(/mailbox id/);
    expect(() => store.mailbox("a\u0000b")).toThrow(/mailbox id/);
  });

  it("streams a 20 MB message in and out intact", async () => {
    const { store } = await open();
    const box = store.mailbox("big@example.test");
    const total = 20 * 1024 * 1024;
    const hashIn = createHash("sha256");
    async function* generate(): AsyncGenerator<Uint8Array> {
      for (let sent = 0, i = 0; sent < total; i++) {
        const chunk = new Uint8Array(Math.min(65_521, total - sent)).fill(i % 251);
        hashIn.update(chunk);
        sent += chunk.length;
        yield chunk;
      }
    }
    const info = await box.append(generate());
    expect(info.size).toBe(total);
    const hashOut = createHash("sha256");
    let size = 0;
    for await (const chunk of await box.read(info.uid)) {
      hashOut.update(chunk);
      size += chunk.length;
    }
    expect(size).toBe(total);
    expect(hashOut.digest("hex")).toBe(hashIn.digest("hex"));
  });

  it("fails a read with not-found when the message goes after its first chunk was read", async () => {
    const { store } = await open();
    const box = store.mailbox("gone@example.test");
    // Longer than one stored chunk (256 KiB): the first comes with the lookup, the second is read later.
    const info = await box.append(fromBytes("Subject: long\r\n\r\n" + "y".repeat(400_000)));
    const reader = (await box.read(info.uid))[Symbol.asyncIterator]();
    const first = await reader.next();
    expect(first.done).toBe(false);
    const lease = await box.acquireLease({ holder: "t", ttlMs: 5000 });
    expect(await box.expunge([info.uid], lease)).toBe(1);
    await lease.release();
    let code: string | undefined;
    try {
      while (!(await reader.next()).done);
    } catch (error) {
      code = (error as { code?: string }).code;
    }
    expect(code).toBe("not-found");
  });

  it("keeps domains, accounts and aliases", async () => {
    const { store } = await open();
    const dir = store.directory;
    await dir.addDomain("Example.TEST");
    expect(await codeOf(dir.addDomain("example.test"))).toBe("exists");
    expect(await dir.listDomains()).toEqual(["example.test"]);
    expect(await codeOf(dir.addAccount({ address: "x@nowhere.test", passwordHash: "h" }))).toBe("not-found");
    const account = await dir.addAccount({ address: "Alice@Example.test", passwordHash: "h1" });
    expect(account).toEqual({ address: "alice@example.test", mailbox: "alice@example.test", passwordHash: "h1" });
    expect(await codeOf(dir.addAccount({ address: "alice@example.test", passwordHash: "h" }))).toBe("exists");
    await dir.setPasswordHash("alice@example.test", "h2");
    expect((await dir.getAccount("ALICE@example.test"))?.passwordHash).toBe("h2");
    await dir.addAlias({ source: "@example.test", target: "alice@example.test" });
    await dir.addAlias({ source: "team@example.test", target: "alice@example.test" });
    await dir.addAlias({ source: "team@example.test", target: "bob@elsewhere.test" });
    expect(await codeOf(dir.addAlias({ source: "team@example.test", target: "bob@elsewhere.test" }))).toBe("exists");
    expect(await dir.aliasTargets("team@example.test")).toEqual(["alice@example.test", "bob@elsewhere.test"]);
    expect(await codeOf(dir.removeDomain("example.test"))).toBe("exists");
    expect(await codeOf(dir.removeDomain("other.test"))).toBe("not-found");
    await dir.removeAlias("team@example.test", "bob@elsewhere.test");
    await dir.removeAlias("@example.test");
    await dir.removeAlias("team@example.test");
    expect(await codeOf(dir.removeAlias("team@example.test"))).toBe("not-found");
    await dir.removeAccount("alice@example.test");
    expect(await dir.getAccount("alice@example.test")).toBeNull();
    await dir.removeDomain("example.test");
    expect(await dir.hasDomain("example.test")).toBe(false);
  });
});

describe.skipIf(!available)("postgres store lifecycle", () => {
  it("stops an append at once when the signal aborts while the source is silent", async () => {
    const { store } = await open();
    const box = store.mailbox("silent@example.test");
    const controller = new AbortController();
    async function* silent(): AsyncGenerator<Uint8Array> {
      yield new Uint8Array(1000);
      await new Promise(() => undefined);
    }
    const append = box.append(silent(), { signal: controller.signal });
    setTimeout(() => controller.abort(new Error("session timed out")), 50);
    await expect(append).rejects.toThrow("session timed out");
    expect(await box.list()).toEqual([]);
  });

  it("prepares its statements once per connection, or never with preparedStatements false", async () => {
    const pg = (await import("pg")).default;
    for (const prepared of [true, false]) {
      // One connection, so the session that ran the store's statements is the one we ask.
      const pool = new pg.Pool({ connectionString: PG_URL, max: 1 });
      const schema = uniqueSchema("prepared");
      schemas.push(schema);
      try {
        const store = await createPostgresStore({ pool, schema, preparedStatements: prepared });
        await store.directory.addDomain("example.test");
        for (let i = 0; i < 3; i++) await store.deliver(["p@example.test"], fromBytes(`Subject: ${i}\r\n\r\nx\r\n`));
        expect((await store.mailbox("p@example.test").list()).map((m) => m.size)).toEqual([17, 17, 17]);
        const { rows } = await pool.query<{ name: string }>("SELECT name FROM pg_prepared_statements WHERE name LIKE 'mr\\_%'");
        if (prepared) {
          expect(rows.length).toBeGreaterThanOrEqual(3);
          // Three deliveries, but each statement prepared once.
          expect(new Set(rows.map((r) => r.name)).size).toBe(rows.length);
        } else {
          expect(rows).toEqual([]);
        }
        await store.close();
      } finally {
        await pool.end();
      }
    }
  });

  it("answers unavailable once closed, also on a pool it does not own", async () => {
    const pg = (await import("pg")).default;
    const pool = new pg.Pool({ connectionString: PG_URL, max: 2 });
    const schema = uniqueSchema("ownpool");
    schemas.push(schema);
    try {
      const store = await createPostgresStore({ pool, schema });
      await store.ping();
      await store.close();
      await store.close();
      expect(await codeOf(store.ping())).toBe("unavailable");
      expect(await codeOf(store.mailbox("x").list())).toBe("unavailable");
      expect((await pool.query("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    } finally {
      await pool.end();
    }
  });
});
