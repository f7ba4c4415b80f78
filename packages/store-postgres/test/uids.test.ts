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

async function counter(mailbox: string): Promise<bigint> {
  const rows = await adminQuery<{ next_uid: string }>(`SELECT next_uid::text AS next_uid FROM ${quoteIdent(schema)}.mailboxes WHERE id = $1`, [mailbox]);
  return BigInt(rows[0]?.next_uid ?? 0);
}

async function setCounter(mailbox: string, next: bigint): Promise<void> {
  await adminQuery(
    `INSERT INTO ${quoteIdent(schema)}.mailboxes (id, next_uid) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET next_uid = EXCLUDED.next_uid`,
    [mailbox, String(next)],
  );
}

/** The database server's clock in µs, as the UID counter reads it. */
async function dbClock(): Promise<bigint> {
  const rows = await adminQuery<{ us: string }>("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text AS us");
  return BigInt(rows[0]!.us);
}

const num = (uid: string): bigint => BigInt(uid.slice(1));

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
    const box = "quiet@example.test";
    let last = 0n;
    for (let i = 0; i < 3; i++) {
      const [uid] = await blocks.take([box]);
      expect(uid).toMatch(/^u[1-9][0-9]*$/);
      expect(num(uid!)).toBeGreaterThan(last);
      last = num(uid!);
      expect(await counter(box)).toBe(last + 1n);
      time.advance(5000);
    }
  });

  it("takes UIDs ahead for a busy mailbox, doubling up to 64, and hands them out without a statement", async () => {
    const time = clock();
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)), time.now);
    const box = "busy@example.test";
    const seen: bigint[] = [];
    const counters: bigint[] = [];
    for (let i = 0; i < 200; i++) {
      seen.push(num((await blocks.take([box]))[0]!));
      counters.push(await counter(box));
      time.advance(1);
    }
    expect(new Set(seen).size).toBe(200);
    const refills = counters.flatMap((c, i) => (i === 0 || c !== counters[i - 1] ? [i] : []));
    // Refills take 1, then 1 + 1, 1 + 2, 1 + 4, … up to 1 + 63 at a time, each starting at or past
    // where the counter stood; in between, what was taken ahead comes in order without a statement.
    expect(refills.slice(0, 8).map((i) => counters[i]! - seen[i]!)).toEqual([1n, 2n, 3n, 5n, 9n, 17n, 33n, 64n]);
    for (const i of refills.slice(1)) expect(seen[i]).toBeGreaterThanOrEqual(counters[i - 1]!);
    for (let i = 1; i < 200; i++) if (!refills.includes(i)) expect(seen[i]).toBe(seen[i - 1]! + 1n);
    expect(refills.length).toBeLessThan(12);
    // What it took ahead is used up first, quiet or not; then a quiet mailbox takes only what it needs.
    const taken = await counter(box);
    time.advance(5000);
    for (let n = seen.at(-1)! + 1n; n < taken; n++) expect(await blocks.take([box])).toEqual([`u${n}`]);
    expect(await counter(box)).toBe(taken);
    time.advance(5000);
    const [quiet] = await blocks.take([box]);
    expect(num(quiet!)).toBeGreaterThanOrEqual(taken);
    expect(await counter(box)).toBe(num(quiet!) + 1n);
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
    const [busy] = await blocks.take(["steps@example.test"]);
    expect(settings).toEqual(["off", "off", "on"]);
    // The busy step took one more than it handed out.
    expect(await counter("steps@example.test")).toBe(num(busy!) + 2n);
  });

  it("takes UIDs fresh from the counter when asked not to use or take any ahead", async () => {
    const time = clock();
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)), time.now);
    const box = "fresh@example.test";
    let last = 0n;
    for (let i = 0; i < 4; i++) last = num((await blocks.take([box]))[0]!);
    const taken = await counter(box);
    expect(taken).toBeGreaterThan(last + 1n);
    const [fresh] = await blocks.take([box], { ahead: false });
    expect(num(fresh!)).toBeGreaterThanOrEqual(taken);
    expect(await counter(box)).toBe(num(fresh!) + 1n);
    // What was taken ahead before is still handed out afterwards.
    expect(await blocks.take([box])).toEqual([`u${last + 1n}`]);
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
    const later = num((await new UidBlocks(db, sql).take([box]))[0]!);
    const highest = all.map(num).reduce((a, b) => (a > b ? a : b));
    expect(later).toBeGreaterThan(highest);
    expect(later).toBe((await counter(box)) - 1n);
  });

  it("gives each mailbox of a delivery its own UIDs, two for a mailbox named twice", async () => {
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)));
    const [a1, b1, a2] = await blocks.take(["a@example.test", "b@example.test", "a@example.test"]);
    expect(num(a2!)).toBe(num(a1!) + 1n);
    expect(await counter("a@example.test")).toBe(num(a2!) + 1n);
    expect(await counter("b@example.test")).toBe(num(b1!) + 1n);
  });

  it("starts a counter step at the database clock in µs when the counter is behind it, and never moves a counter back", async () => {
    const blocks = new UidBlocks(db, deliverySql(quoteIdent(schema)));
    const box = "forward@example.test";
    // A mailbox whose counter is behind the clock (one from before the clock floor): it jumps forward.
    await setCounter(box, 4n);
    const before = await dbClock();
    const [jumped] = await blocks.take([box], { ahead: false });
    expect(num(jumped!)).toBeGreaterThanOrEqual(before);
    expect(num(jumped!)).toBeLessThanOrEqual(await dbClock());
    expect(await counter(box)).toBe(num(jumped!) + 1n);
    // A counter ahead of the clock (an imported u<n> far ahead) is kept, not pulled back to the clock.
    const ahead = before + 10n ** 12n;
    await setCounter(box, ahead);
    expect(await blocks.take([box], { ahead: false })).toEqual([`u${ahead}`]);
    expect(await counter(box)).toBe(ahead + 1n);
    // Quiet or busy, every step leaves the counter past every UID handed out.
    let last = ahead;
    for (let i = 0; i < 100; i++) {
      const [uid] = await blocks.take([box]);
      expect(num(uid!)).toBeGreaterThan(last);
      last = num(uid!);
      expect(await counter(box)).toBeGreaterThan(last);
    }
    // An import or a mark below the counter leaves it where it is.
    const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 2 });
    stores.push(store);
    const held = await counter(box);
    await store.mailbox(box).append(fromBytes("Subject: imported\r\n\r\n"), { uid: "u5" });
    await store.mailbox(box).skipUids!("postgres:7");
    expect(await counter(box)).toBe(held);
  });

  it("never hands a UID out again after lost commits took the counter back (a failover to an asynchronous replica)", async () => {
    const open = async (): Promise<Store> => {
      const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4 });
      stores.push(store);
      return store;
    };
    const box = "failover@example.test";
    const seen = new Set<string>();
    const deliver = async (store: Store, count: number): Promise<string[]> => {
      const uids: string[] = [];
      for (let i = 0; i < count; i++) {
        const [delivered] = await store.deliver([box], fromBytes(`Subject: ${seen.size}\r\n\r\n`));
        const uid = delivered!.message.uid;
        expect(seen.has(uid), `${uid} was handed out before`).toBe(false);
        seen.add(uid);
        uids.push(uid);
      }
      return uids;
    };
    const server = await open();
    const kept = await deliver(server, 3);
    const counterThen = await counter(box);
    // Delivered in a burst (so the server also holds UIDs taken ahead) and seen by a POP3 client, then
    // lost with the counter steps that named them: the replica that took over never got them.
    const lost = await deliver(server, 10);
    const l = await server.mailbox(box).acquireLease({ holder: "test", ttlMs: 30_000 });
    expect(await server.mailbox(box).expunge(lost, l)).toBe(lost.length);
    await l.release();
    await setCounter(box, counterThen);
    expect(await counter(box)).toBeLessThanOrEqual(num(lost[0]!));
    // A server started on the promoted replica, and the one that ran on with what it took ahead.
    const restarted = await open();
    await deliver(restarted, 10);
    await deliver(server, 70);
    await deliver(restarted, 1);
    // Earlier UIDs are unchanged.
    expect((await restarted.mailbox(box).list()).slice(0, 3).map((m) => m.uid)).toEqual(kept);
  });

  describe("when an import names a UID taken ahead", () => {
    const open = async (): Promise<Store> => {
      const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4 });
      stores.push(store);
      return store;
    };

    /** Delivers in a quick burst until the store holds UIDs ahead; returns the first of them. */
    async function spareOf(store: Store, box: string): Promise<bigint> {
      let last = 0n;
      for (let i = 0; i < 10; i++) {
        const [delivered] = await store.deliver([box], fromBytes(`Subject: ${i}\r\n\r\n`));
        last = num(delivered!.message.uid);
      }
      expect(await counter(box)).toBeGreaterThan(last + 1n);
      return last + 1n;
    }

    it("in this process: the next delivery gets a UID past it", async () => {
      const store = await open();
      const box = "import-here@example.test";
      const spare = await spareOf(store, box);
      await store.mailbox(box).append(fromBytes("Subject: imported\r\n\r\n"), { uid: `u${spare}` });
      const [next] = await store.deliver([box], fromBytes("Subject: after\r\n\r\n"));
      expect(num(next!.message.uid)).toBeGreaterThan(spare);
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
