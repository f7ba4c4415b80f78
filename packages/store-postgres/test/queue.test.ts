import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { fromBytes, readAll, type QueueItem, type Store } from "@mailroom/store";
import { createPostgresStore } from "../src/index.js";
import { PG_URL, adminQuery, dropSchemas, postgresAvailable, uniqueSchema } from "./pg-env.js";

const available = await postgresAvailable();
const schema = uniqueSchema("queue");

async function* failing(): AsyncGenerator<Uint8Array> {
  yield new Uint8Array(300_000).fill(65);
  throw new Error("client went away");
}

describe.skipIf(!available)("postgres outbound queue", () => {
  let store: Store;

  beforeAll(async () => {
    store = await createPostgresStore({ url: PG_URL, schema, poolSize: 4 });
  });

  afterAll(async () => {
    await store?.close();
    if (available) await dropSchemas(schema);
  });

  it("stores the claim on the row and the octets in the shared body tables", async () => {
    const item = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("Subject: q\r\n\r\nbody\r\n"));
    const [claim] = await store.queue.claim({ holder: "worker on host-a", ttlMs: 30_000 });
    const rows = await adminQuery<{ claim_token: string; claim_holder: string; live: boolean; refs: number; size: string }>(
      `SELECT q.claim_token, q.claim_holder, q.claim_expires_at > now() AS live, b.refs, b.size
       FROM "${schema}".queue_items q JOIN "${schema}".bodies b ON b.id = q.body_id WHERE q.id = $1`,
      [item.id],
    );
    expect(rows).toEqual([{ claim_token: claim!.token, claim_holder: "worker on host-a", live: true, refs: 1, size: String(item.size) }]);
    await store.queue.reschedule(claim!, { nextAttemptAt: Date.now() + 60_000, error: "451 later" });
    const released = await adminQuery<{ claim_token: string | null }>(`SELECT claim_token FROM "${schema}".queue_items WHERE id = $1`, [item.id]);
    expect(released).toEqual([{ claim_token: null }]);
    await store.queue.remove(item.id);
    expect(await adminQuery(`SELECT 1 FROM "${schema}".queue_items`)).toEqual([]);
    expect(await adminQuery(`SELECT 1 FROM "${schema}".bodies`)).toEqual([]);
  });

  it("leaves no body chunks behind after an enqueue whose source fails after a full chunk", async () => {
    await expect(store.queue.enqueue({ sender: "", recipients: ["b@remote.test"] }, failing())).rejects.toThrow("client went away");
    expect(await adminQuery(`SELECT 1 FROM "${schema}".body_chunks`)).toEqual([]);
    expect(await store.queue.list()).toEqual([]);
  });

  it("keeps a reply with a NUL byte or a lone surrogate as U+FFFD instead of failing the reschedule", async () => {
    // A remote server's reply is outside text: PostgreSQL refuses NUL in text and jsonb (22021), and
    // a refused reschedule left the item to be retried and bounced again after every claim.
    const item = await store.queue.enqueue(
      { sender: "a@example.test", recipients: ["bad@remote.test", "good@remote.test"], meta: { "env\u0000id": "x\u0000y" } },
      fromBytes("Subject: q\r\n\r\nbody\r\n"),
    );
    expect((await store.queue.get(item.id))?.meta).toEqual({ "env\uFFFDid": "x\uFFFDy" });
    const [first] = await store.queue.claim({ holder: "t", ttlMs: 30_000 });
    await store.queue.reschedule(first!, {
      nextAttemptAt: Date.now() - 1,
      error: "<good@remote.test>: 451 4.3.0 try\u0000 later",
      recipients: [
        { address: "bad@remote.test", status: "failed", diagnostic: "550 5.1.1 no\u0000 such \ud800user", notified: true },
        { address: "good@remote.test", status: "pending", diagnostic: "451 4.3.0 try\u0000 later" },
      ],
    });
    const rescheduled = await store.queue.get(item.id);
    expect(rescheduled).toMatchObject({ attempts: 1, lastError: "<good@remote.test>: 451 4.3.0 try\uFFFD later" });
    expect(rescheduled?.recipients).toEqual([
      { address: "bad@remote.test", status: "failed", diagnostic: "550 5.1.1 no\uFFFD such \uFFFDuser", notified: true },
      { address: "good@remote.test", status: "pending", diagnostic: "451 4.3.0 try\uFFFD later" },
    ]);
    const [second] = await store.queue.claim({ holder: "t", ttlMs: 30_000 });
    await store.queue.deadLetter(second!, { error: "gave up\u0000", recipients: [{ address: "good@remote.test", status: "failed", diagnostic: "\u0000" }] });
    expect(await store.queue.get(item.id)).toMatchObject({ state: "dead", attempts: 2, lastError: "gave up\uFFFD" });
    await store.queue.remove(item.id);
  });

  it("enqueues a body that fits in one chunk in one statement, never staged, and stages a bigger one", async () => {
    const staged = async (): Promise<number> =>
      Number((await adminQuery<{ n: string }>(`SELECT count(*) AS n FROM "${schema}".bodies WHERE staged_at IS NOT NULL`))[0]!.n);
    /** Sends `text` in 64 KiB parts and notes, at every pull after the first, how many staged bodies there are. */
    function sender(text: string): { source: AsyncGenerator<Uint8Array>; seen: number[] } {
      const seen: number[] = [];
      const bytes = new TextEncoder().encode(text);
      async function* source(): AsyncGenerator<Uint8Array> {
        for (let at = 0; at < bytes.length; at += 64 * 1024) {
          yield bytes.slice(at, at + 64 * 1024);
          seen.push(await staged());
        }
      }
      return { source: source(), seen };
    }
    const small = "Subject: small\r\n\r\n" + "s".repeat(200_000);
    const big = "Subject: big\r\n\r\n" + "b".repeat(600_000);
    const envelope = { sender: "a@example.test", recipients: ["b@remote.test"] };
    const made: QueueItem[] = [];
    try {
      const smallSender = sender(small);
      made.push(await store.queue.enqueue(envelope, smallSender.source));
      expect(smallSender.seen).toEqual([0, 0, 0, 0]);
      const bigSender = sender(big);
      made.push(await store.queue.enqueue(envelope, bigSender.source));
      // The first 256 KiB (four parts) are read before anything is written; then the body is staged.
      expect(bigSender.seen).toEqual([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
      made.push(await store.queue.enqueue(envelope, fromBytes("")));
      expect(await staged()).toBe(0);
      for (const [item, text] of made.map((item, i) => [item, [small, big, ""][i]!] as const)) {
        expect(item.size).toBe(text.length);
        expect(await store.queue.get(item.id)).toEqual(item);
        expect(new TextDecoder().decode(await readAll(await store.queue.readMessage(item.id)))).toBe(text);
      }
    } finally {
      // Also when it failed: the other tests count the bodies left.
      for (const item of made) await store.queue.remove(item.id);
    }
    expect(await adminQuery(`SELECT 1 FROM "${schema}".bodies`)).toEqual([]);
    expect(await adminQuery(`SELECT 1 FROM "${schema}".body_chunks`)).toEqual([]);
  });

  it("deletes the body with the item on finish", async () => {
    await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("x".repeat(600_000)));
    const [claim] = await store.queue.claim({ holder: "t", ttlMs: 30_000 });
    await store.queue.finish(claim!);
    expect(await adminQuery(`SELECT 1 FROM "${schema}".bodies`)).toEqual([]);
    expect(await adminQuery(`SELECT 1 FROM "${schema}".body_chunks`)).toEqual([]);
  });
});
