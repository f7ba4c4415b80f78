import { afterAll, beforeAll, describe, expect, it } from "vitest";
import pg from "pg";
import { fromBytes, readAll, silentLogger, type Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { createDb, type Db } from "../src/db.js";
import { deliverySql } from "../src/delivery.js";
import { runMigrations } from "../src/migrations.js";
import { quoteIdent } from "../src/schema.js";
import { UidBlocks } from "../src/uids.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schema = uniqueSchema("uids");
let pool: pg.Pool;
let db: Db;

/** A clock the test moves by hand. */
function clock(start = 1_000_000): { now: () => number; advance: (ms: number) => void } {
  let t = start;
  return { now: () => t, advance: (ms) => (t += ms) };
}

async function counter(mailbox: string): Promise<number> {
  const rows = await adminQuery<{ next_uid: string }>(`SELECT next_uid FROM ${quoteIdent(schema)}.mailboxes WHERE id = $1`, [mailbox]);
  return Number(rows[0]?.next_uid ?? 0);
}

beforeAll(async () => {
  if (!available) return;
  pool = new pg.Pool({ connectionString: PG_URL, max: 4 });
  await runMigrations(pool, schema);
  db = createDb(pool, silentLogger);
});

const stores: Store[] = [];

afterAll(async () => {
  for (const store of stores) await store.close();
  await pool?.end();
  if (available) await dropSchemas(schema);
});

describe.skipIf(!available)("generated UIDs", () => {
  it("gives a quiet mailbox one counter step per delivery, nothing taken ahead", async () => {
    const time = clock();
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)), time.now);
    for (const expected of ["u1", "u2", "u3"]) {
      expect(await blocks.take(["quiet@example.test"])).toEqual([expected]);
      time.advance(5000);
    }
    expect(await counter("quiet@example.test")).toBe(4);
  });

  it("takes UIDs ahead for a busy mailbox, doubling up to 64, and hands them out without a statement", async () => {
    const time = clock();
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)), time.now);
    const box = "busy@example.test";
    const seen: string[] = [];
    const counters: number[] = [];
    for (let i = 0; i < 200; i++) {
      seen.push(...(await blocks.take([box])));
      counters.push(await counter(box));
      time.advance(1);
    }
    // One process delivering one at a time still counts up without gaps.
    expect(seen).toEqual(Array.from({ length: 200 }, (_, i) => `u${i + 1}`));
    // Refills: 1, then 1 + 1, 1 + 2, 1 + 4, … up to 1 + 63 at a time.
    const refills = counters.filter((c, i) => i === 0 || c !== counters[i - 1]);
    expect(refills.slice(0, 8)).toEqual([2, 4, 7, 12, 21, 38, 71, 135]);
    expect(new Set(counters).size).toBeLessThan(12);
    // What it took ahead is used up first, quiet or not; then a quiet mailbox takes only what it needs.
    const taken = await counter(box);
    time.advance(5000);
    for (let n = 201; n < taken; n++) expect(await blocks.take([box])).toEqual([`u${n}`]);
    expect(await counter(box)).toBe(taken);
    time.advance(5000);
    expect(await blocks.take([box])).toEqual([`u${taken}`]);
    expect(await counter(box)).toBe(taken + 1);
  });

  it("commits a counter step that takes UIDs ahead synchronously, a step of exact need without waiting", async () => {
    // Spares live on in memory: a step lost in a database crash this process survived would let them
    // be handed out here and again from the counter. A step without spares is made durable by the
    // synchronous commit of the message that carries its UID.
    const settings: unknown[] = [];
    const watched = new Proxy(db, {
      get(target, key) {
        if (key !== "query") return Reflect.get(target, key, target) as unknown;
        return (name: string, text: string, params: unknown[]) => {
          if (name === "take uids") settings.push(params[2]);
          return target.query(name, text, params);
        };
      },
    });
    const time = clock();
    const blocks = new UidBlocks(watched, deliverySql(quoteIdent(schema)), time.now);
    await blocks.take(["steps@example.test"]);
    time.advance(5000);
    await blocks.take(["steps@example.test"]);
    time.advance(1);
    await blocks.take(["steps@example.test"]);
    expect(settings).toEqual(["off", "off", "on"]);
    const rows = await adminQuery<{ n: string }>(`SELECT next_uid::text AS n FROM ${quoteIdent(schema)}.mailboxes WHERE id = $1`, ["steps@example.test"]);
    expect(rows[0]?.n).toBe("5");
  });

  it("takes UIDs fresh from the counter when asked not to use or take any ahead", async () => {
    const time = clock();
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)), time.now);
    const box = "fresh@example.test";
    for (let i = 0; i < 4; i++) await blocks.take([box]);
    const taken = await counter(box);
    expect(taken).toBeGreaterThan(5);
    expect(await blocks.take([box], { ahead: false })).toEqual([`u${taken}`]);
    expect(await counter(box)).toBe(taken + 1);
    // What was taken ahead before is still handed out afterwards.
    expect(await blocks.take([box])).toEqual(["u5"]);
  });

  it("never hands one UID out twice, across stores delivering into one mailbox at once", async () => {
    const sql = deliverySql(quoteIdent(schema));
    const stores = [new UidBlocks(db, sql), new UidBlocks(db, sql), new UidBlocks(db, sql)];
    const box = "shared@example.test";
    const all = (
      await Promise.all(
        stores.map(async (blocks) => {
          const mine: string[] = [];
          const lanes = Array.from({ length: 4 }, async () => {
            for (let i = 0; i < 50; i++) mine.push(...(await blocks.take([box, box])));
          });
          await Promise.all(lanes);
          return mine;
        }),
      )
    ).flat();
    expect(all).toHaveLength(3 * 4 * 50 * 2);
    expect(new Set(all).size).toBe(all.length);
    // A store opened later (a restart) starts past everything the others took, used or not.
    const later = await new UidBlocks(db, sql).take([box]);
    const highest = Math.max(...all.map((u) => Number(u.slice(1))));
    expect(Number(later[0]!.slice(1))).toBeGreaterThan(highest);
    expect(Number(later[0]!.slice(1))).toBe((await counter(box)) - 1);
  });

  it("gives each mailbox of a delivery its own UIDs, two for a mailbox named twice", async () => {
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)));
    expect(await blocks.take(["a@example.test", "b@example.test", "a@example.test"])).toEqual(["u1", "u1", "u2"]);
  });

  describe("when an import names a UID taken ahead", () => {
    const open = async (): Promise<Store> => {
      const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4 });
      stores.push(store);
      return store;
    };

    /** Delivers in a quick burst until the store holds UIDs ahead; returns the first of them. */
    async function spareOf(store: Store, box: string): Promise<number> {
      let last = 0;
      for (let i = 0; i < 10; i++) {
        const [delivered] = await store.deliver([box], fromBytes(`Subject: ${i}\r\n\r\n`));
        last = Number(delivered!.message.uid.slice(1));
      }
      expect(await counter(box)).toBeGreaterThan(last + 1);
      return last + 1;
    }

    it("in this process: the next delivery gets a UID past it", async () => {
      const store = await open();
      const box = "import-here@example.test";
      const spare = await spareOf(store, box);
      await store.mailbox(box).append(fromBytes("Subject: imported\r\n\r\n"), { uid: `u${spare}` });
      const [next] = await store.deliver([box], fromBytes("Subject: after\r\n\r\n"));
      expect(Number(next!.message.uid.slice(1))).toBeGreaterThan(spare);
    });

    for (const [what, size] of [
      ["a small message", 100],
      ["a message streamed in chunks", 600 * 1024],
    ] as const) {
      it(`in another process: ${what} is stored under a fresh UID, the imported one kept`, async () => {
        const server = await open();
        const migrator = await open();
        const box = `import-there-${size}@example.test`;
        const spare = await spareOf(server, box);
        await migrator.mailbox(box).append(fromBytes("Subject: imported\r\n\r\n"), { uid: `u${spare}` });
        const body = "Subject: after\r\n\r\n" + "x".repeat(size);
        const [next] = await server.deliver([box], fromBytes(body, 64 * 1024));
        expect(next!.message.uid).not.toBe(`u${spare}`);
        const listed = await server.mailbox(box).list();
        expect(new Set(listed.map((m) => m.uid)).size).toBe(listed.length);
        expect(listed.map((m) => m.uid)).toContain(`u${spare}`);
        const text = new TextDecoder().decode(await readAll(await server.mailbox(box).read(next!.message.uid)));
        expect(text).toBe(body);
        const imported = new TextDecoder().decode(await readAll(await server.mailbox(box).read(`u${spare}`)));
        expect(imported).toBe("Subject: imported\r\n\r\n");
      });
    }
  });
});
