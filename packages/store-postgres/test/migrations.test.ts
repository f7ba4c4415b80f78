import { afterAll, describe, expect, it } from "vitest";
import { fromBytes, readAll, type Store } from "@mailroom/store";
import pg from "pg";
import postgresAdapter, { LATEST_VERSION, createPostgresStore, migrate } from "../src/index.js";
import { runMigrations } from "../src/migrations.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schemas: string[] = [];
const fresh = (label: string): string => {
  const schema = uniqueSchema(label);
  schemas.push(schema);
  return schema;
};

afterAll(async () => {
  if (available && schemas.length > 0) await dropSchemas(...schemas);
});

describe.skipIf(!available)("postgres schema and migrations", () => {
  it("migrates once when four servers start at the same moment", async () => {
    const schema = fresh("race");
    const results = await Promise.all(Array.from({ length: 4 }, () => migrate({ url: PG_URL, schema, poolSize: 2 })));
    expect(results.flatMap((r) => r.applied).sort((a, b) => a - b)).toEqual([1, 2, 3, 4]);
    expect(results.every((r) => r.version === LATEST_VERSION)).toBe(true);
    const again = await migrate({ url: PG_URL, schema });
    expect(again).toEqual({ applied: [], version: LATEST_VERSION });
    const recorded = await adminQuery<{ version: number }>(`SELECT version FROM "${schema}".migrations`);
    expect(recorded).toEqual([{ version: 1 }, { version: 2 }, { version: 3 }, { version: 4 }]);
  });

  it("tries a migration's table lock briefly and again, instead of stalling every server behind it", async () => {
    const schema = fresh("lockwait");
    await migrate({ url: PG_URL, schema });
    // The schema as release 3 left it, so that migration 4 has its ALTER TABLE to do again.
    await adminQuery(
      `DROP INDEX "${schema}".bodies_staged; ALTER TABLE "${schema}".bodies DROP COLUMN staged_at, DROP COLUMN staged_by; DELETE FROM "${schema}".migrations WHERE version = 4`,
    );
    // An older server receiving a big message holds a transaction on bodies for the whole DATA.
    const older = new pg.Client({ connectionString: PG_URL });
    await older.connect();
    const pool = new pg.Pool({ connectionString: PG_URL, max: 2 });
    try {
      await older.query(`BEGIN; SELECT count(*) FROM "${schema}".bodies`);
      const wait = { timeoutMs: 100, attempts: 3, pauseMs: 50 };
      const failed = await runMigrations(pool, schema, wait).catch((e: unknown) => e);
      expect(failed).toMatchObject({ code: "unavailable", message: expect.stringMatching(/migration 4 \(staged bodies\) could not lock its tables in 3 tries.*mailroom migrate/) });
      // Meanwhile the running servers' statements on bodies went on.
      const started = Date.now();
      const reading = pool.query(`SELECT count(*) FROM "${schema}".bodies`);
      const migrating = runMigrations(pool, schema, { timeoutMs: 100, attempts: 50, pauseMs: 50 });
      await reading;
      expect(Date.now() - started).toBeLessThan(2_000);
      // The older transaction ends; the next try goes through.
      setTimeout(() => void older.query("COMMIT"), 300);
      expect(await migrating).toEqual({ applied: [4], version: LATEST_VERSION });
    } finally {
      await older.end();
      await pool.end();
    }
  });

  it("opens a store concurrently from four pools on a new schema", async () => {
    const schema = fresh("open");
    const stores = await Promise.all(Array.from({ length: 4 }, () => createPostgresStore({ url: PG_URL, schema, poolSize: 2 })));
    try {
      const { uid } = await stores[0]!.mailbox("m").append(fromBytes("from the first"));
      for (const store of stores) expect((await store.mailbox("m").list()).map((m) => m.uid)).toEqual([uid]);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  it("keeps everything inside the configured schema", async () => {
    const schema = fresh("tables");
    await migrate({ url: PG_URL, schema });
    const tables = await adminQuery<{ table_name: string }>(
      "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
      [schema],
    );
    expect(tables.map((t) => t.table_name)).toEqual([
      "accounts",
      "aliases",
      "bodies",
      "body_chunks",
      "domains",
      "leases",
      "mailboxes",
      "messages",
      "migrations",
      "queue_items",
    ]);
  });

  it("shows a second store on the same schema the first one's data", async () => {
    const schema = fresh("shared");
    const first = await postgresAdapter.open(PG_URL, { schema, pool_size: 2 });
    const second: Store = await createPostgresStore({ url: PG_URL, schema, migrate: false });
    try {
      expect(first.kind).toBe("postgres");
      expect(first.capabilities).toEqual({ sharedAcrossProcesses: true, boundedMemory: true });
      await first.directory.addDomain("example.test");
      const { uid } = await first.mailbox("a@example.test").append(fromBytes("hello"));
      expect(await second.directory.listDomains()).toEqual(["example.test"]);
      const box = second.mailbox("a@example.test");
      expect(new TextDecoder().decode(await readAll(await box.read(uid)))).toBe("hello");
    } finally {
      await first.close();
      await second.close();
      await first.close();
    }
  });

  it("refuses to run on an unmigrated schema when migrate is off, until `mailroom migrate` ran", async () => {
    const schema = fresh("nomigrate");
    await expect(createPostgresStore({ url: PG_URL, schema, migrate: false })).rejects.toMatchObject({
      code: "permanent",
      message: expect.stringContaining("mailroom migrate"),
    });
    expect(await postgresAdapter.migrate(PG_URL, { schema })).toEqual({ applied: [1, 2, 3, 4], version: LATEST_VERSION });
    const store = await postgresAdapter.open(PG_URL, { schema, migrate: false });
    await store.ping();
    await store.close();
  });

  it("upgrades a version-1 schema to the queue schema, process owners and staged bodies on open", async () => {
    const schema = fresh("upgrade");
    await migrate({ url: PG_URL, schema });
    // Back to what version 1 left behind, as a server of the previous release would have it.
    await adminQuery(`DROP TABLE "${schema}".queue_items`);
    await adminQuery(`ALTER TABLE "${schema}".leases DROP COLUMN owner`);
    await adminQuery(`ALTER TABLE "${schema}".bodies DROP COLUMN staged_at, DROP COLUMN staged_by`);
    await adminQuery(`DELETE FROM "${schema}".migrations WHERE version >= 2`);
    const old = await createPostgresStore({ url: PG_URL, schema, migrate: false }).catch((error: unknown) => error);
    expect(old).toMatchObject({ code: "permanent" });
    const v1 = await createPostgresStore({ url: PG_URL, schema });
    await v1.close();
    expect(await adminQuery<{ version: number }>(`SELECT version FROM "${schema}".migrations ORDER BY version`)).toEqual([
      { version: 1 },
      { version: 2 },
      { version: 3 },
      { version: 4 },
    ]);
    const store = await createPostgresStore({ url: PG_URL, schema, migrate: false });
    try {
      const item = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("queued"));
      expect((await store.queue.list()).map((i) => i.id)).toEqual([item.id]);
    } finally {
      await store.close();
    }
  });

  it.each(["bad-name", 'x"; DROP SCHEMA public; --', "pg_catalog", "", "1abc", "a".repeat(64)])(
    "rejects the schema name %j before connecting",
    async (schema) => {
      await expect(createPostgresStore({ url: "postgres://nobody@127.0.0.1:1/none", schema })).rejects.toMatchObject({
        code: "invalid-name",
      });
    },
  );
});
