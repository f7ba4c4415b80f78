import { afterAll, describe, expect, it } from "vitest";
import { fromBytes, processStamp, readAll, type ProcessStamp, type Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schemas: string[] = [];
const stores: Store[] = [];

async function open(options: { poolSize?: number; connectTimeoutMs?: number } = {}, schema = uniqueSchema("staging")) {
  if (!schemas.includes(schema)) schemas.push(schema);
  const store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4, ...options });
  stores.push(store);
  return { store, schema };
}

afterAll(async () => {
  for (const store of stores) await store.close();
  if (available && schemas.length > 0) await dropSchemas(...schemas);
});

const count = async (sql: string): Promise<number> => Number((await adminQuery<{ n: string }>(sql))[0]!.n);

/** A sender that sends more than one chunk (256 KiB), then goes quiet until told to finish or to vanish. */
function stallingSender() {
  let finish!: (ok: boolean) => void;
  const told = new Promise<boolean>((resolve) => (finish = resolve));
  let stalled!: () => void;
  const quiet = new Promise<void>((resolve) => (stalled = resolve));
  async function* source(): AsyncGenerator<Uint8Array> {
    yield new Uint8Array(300 * 1024).fill(65);
    // The next pull comes only once the first chunk is stored.
    stalled();
    if (!(await told)) throw new Error("client went away");
    yield new Uint8Array(100).fill(66);
  }
  return { source: source(), quiet, finish };
}

describe.skipIf(!available)("postgres: message bodies staged outside any transaction", () => {
  it("refuses to publish a staged body that lost a chunk (a database crash between two), by every way in", async () => {
    const { store, schema } = await open();
    const CHUNK = 256 * 1024;
    /** Four chunks; before the fourth, the second one vanishes, as an unflushed commit would in a crash. */
    async function* holed(): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < 4; i++) {
        if (i === 3) {
          const removed = await adminQuery(
            `DELETE FROM "${schema}".body_chunks WHERE seq = 1 AND body_id IN (SELECT id FROM "${schema}".bodies WHERE staged_at IS NOT NULL) RETURNING seq`,
          );
          expect(removed).toHaveLength(1);
        }
        yield new Uint8Array(CHUNK).fill(65 + i);
      }
    }
    const attempts = [
      () => store.mailbox("hole@example.test").append(holed()),
      () => store.deliver(["hole@example.test", "other@example.test"], holed()),
      () => store.queue.enqueue({ sender: "a@example.test", recipients: ["x@remote.test"] }, holed()),
    ];
    for (const attempt of attempts) {
      // Temporary: SMTP answers 451 and the client sends it again, whole.
      await expect(attempt()).rejects.toMatchObject({ code: "temporary" });
    }
    expect(await store.mailbox("hole@example.test").list()).toEqual([]);
    expect(await store.mailbox("other@example.test").list()).toEqual([]);
    expect(await store.queue.list()).toEqual([]);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies`)).toBe(0);
  });

  it("holds no pooled connection while big messages wait for their senders", async () => {
    const { store, schema } = await open({ poolSize: 2, connectTimeoutMs: 2000 });
    await store.directory.addDomain("example.test");
    await store.directory.addAccount({ address: "alice@example.test", passwordHash: "$scrypt$x" });
    // Three times as many stalled senders as connections, by every way octets come in.
    const senders = Array.from({ length: 6 }, () => stallingSender());
    const pending = [
      store.deliver(["a@example.test", "b@example.test"], senders[0]!.source),
      store.deliver(["c@example.test"], senders[1]!.source),
      store.queue.enqueue({ sender: "a@example.test", recipients: ["x@remote.test"] }, senders[2]!.source),
      store.queue.enqueue({ sender: "a@example.test", recipients: ["y@remote.test"] }, senders[3]!.source),
      store.mailbox("d@example.test").append(senders[4]!.source, { uid: "imported-1" }),
      store.mailbox("e@example.test").append(senders[5]!.source),
    ].map((p) => p.then((value) => ({ value }), (error: unknown) => ({ error })));
    await Promise.all(senders.map((s) => s.quiet));

    // Everyone else still gets answers (with the pool held, these waited 2 s and failed "unavailable").
    expect(await store.directory.getAccount("alice@example.test")).toMatchObject({ address: "alice@example.test" });
    await Promise.all([store.ping(), store.mailbox("alice@example.test").list(), store.queue.list()]);
    // Nothing of the unfinished messages is visible yet.
    for (const box of ["a", "b", "c", "d", "e"]) expect(await store.mailbox(`${box}@example.test`).list()).toEqual([]);
    expect(await store.queue.list()).toEqual([]);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies WHERE staged_at IS NOT NULL`)).toBe(6);

    // Half of them finish, the others vanish.
    senders.forEach((s, i) => s.finish(i % 2 === 0));
    const outcomes = await Promise.all(pending);
    expect(outcomes.map((o) => ("error" in o ? String(o.error) : "ok"))).toEqual([
      "ok",
      "Error: client went away",
      "ok",
      "Error: client went away",
      "ok",
      "Error: client went away",
    ]);
    const body = "A".repeat(300 * 1024) + "B".repeat(100);
    for (const box of ["a", "b"]) {
      const [message] = await store.mailbox(`${box}@example.test`).list();
      expect(new TextDecoder().decode(await readAll(await store.mailbox(`${box}@example.test`).read(message!.uid)))).toBe(body);
    }
    expect((await store.mailbox("d@example.test").list()).map((m) => m.uid)).toEqual(["imported-1"]);
    expect((await store.queue.list()).map((item) => item.recipients[0]!.address)).toEqual(["x@remote.test"]);
    expect(await store.mailbox("c@example.test").list()).toEqual([]);
    expect(await store.mailbox("e@example.test").list()).toEqual([]);
    // One body for the two mailboxes, one each for the import and the queue item; no staged leftovers.
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies`)).toBe(3);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies WHERE staged_at IS NOT NULL`)).toBe(0);
  });

  it("publishes a big delivery to several mailboxes all or none, and drops its staged body when that fails", async () => {
    const { store, schema } = await open();
    await adminQuery(`ALTER TABLE "${schema}".messages ADD CONSTRAINT no_blocked CHECK (mailbox <> 'blocked@example.test')`);
    const big = "x".repeat(600 * 1024);
    await expect(store.deliver(["ok@example.test", "blocked@example.test"], fromBytes(big, 64 * 1024))).rejects.toMatchObject({
      code: "permanent",
    });
    expect(await store.mailbox("ok@example.test").list()).toEqual([]);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies`)).toBe(0);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".body_chunks`)).toBe(0);
  });

  it("drops the staged body when the database refuses a chunk midway", async () => {
    const { store, schema } = await open();
    // The third chunk of the message is refused; the first two are committed by then.
    await adminQuery(`ALTER TABLE "${schema}".body_chunks ADD CONSTRAINT two_chunks CHECK (seq < 2)`);
    await expect(store.deliver(["ok@example.test"], fromBytes("y".repeat(700 * 1024), 64 * 1024))).rejects.toMatchObject({
      code: "permanent",
    });
    await expect(store.queue.enqueue({ sender: "", recipients: ["x@remote.test"] }, fromBytes("y".repeat(700 * 1024)))).rejects.toMatchObject({
      code: "permanent",
    });
    expect(await store.mailbox("ok@example.test").list()).toEqual([]);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".bodies`)).toBe(0);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".body_chunks`)).toBe(0);
  });

  it("sweeps staged bodies a crash left behind, at open, and keeps those still arriving", async () => {
    const { store, schema } = await open();
    await store.close();
    // What a process killed mid-delivery leaves: staged bodies with chunks that nothing references.
    const staged = async (age: string, by: ProcessStamp | null): Promise<string> => {
      const [row] = await adminQuery<{ id: string }>(
        `INSERT INTO "${schema}".bodies (staged_at, staged_by) VALUES (now() - $1::interval, $2) RETURNING id::text AS id`,
        [age, by && JSON.stringify(by)],
      );
      await adminQuery(`INSERT INTO "${schema}".body_chunks (body_id, seq, data) VALUES ($1, 0, '\\x41')`, [row!.id]);
      return row!.id;
    };
    const me = processStamp();
    const kept: string[] = [];
    // On another machine, or by a process that cannot be judged: only its age tells.
    await staged("7 hours", null);
    kept.push(await staged("10 minutes", null));
    if (me) {
      // By a process on this machine that has ended (same pid, other start time: the pid was reused).
      await staged("1 minute", { ...me, start: `${me.start}0` });
      // By a process still running (this one).
      kept.push(await staged("1 minute", me));
    }
    await open({}, schema);
    const left = await adminQuery<{ id: string }>(`SELECT b.id::text AS id FROM "${schema}".bodies b ORDER BY b.id`);
    expect(left.map((row) => row.id)).toEqual(kept);
    expect(await count(`SELECT count(*) AS n FROM "${schema}".body_chunks`)).toBe(kept.length);
  });
});
