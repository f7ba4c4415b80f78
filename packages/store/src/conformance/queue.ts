import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { Store } from "../contract.js";
import type { Queue, QueueClaim, QueueItem } from "../queue.js";
import { fromBytes, readAll } from "../streams.js";
import {
  CLOCK_SLACK_MS,
  expectSameBytes,
  expectStoreError,
  failingSource,
  holder,
  listenerCount,
  message,
  oneReusedBuffer,
  sleep,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";
import { MemoryProbe, megabytes } from "./memory-probe.js";

function queueOf(store: Store): Queue {
  const queue = store.queue;
  if (!queue) expect.fail(`the ${store.kind} store has no queue`);
  return queue;
}

function enqueueBytes(
  queue: Queue,
  data: Uint8Array,
  envelope: { sender?: string; recipients?: string[]; meta?: Record<string, string> } = {},
  options: Parameters<Queue["enqueue"]>[2] = {},
): Promise<QueueItem> {
  return queue.enqueue(
    {
      sender: envelope.sender ?? "alice@example.test",
      recipients: envelope.recipients ?? ["bob@remote.test"],
      ...(envelope.meta === undefined ? {} : { meta: envelope.meta }),
    },
    fromBytes(data, 1000),
    options,
  );
}

async function readQueued(queue: Queue, id: string): Promise<Uint8Array> {
  const stream = await queue.readMessage(id);
  async function* checked(): AsyncGenerator<Uint8Array> {
    for await (const chunk of stream) {
      if (!(chunk instanceof Uint8Array)) expect.fail(`readMessage() yielded ${typeof chunk}, not a Uint8Array`);
      yield chunk;
    }
  }
  return readAll(checked());
}

const claimOne = (queue: Queue, who: string, ttlMs = 10_000, now?: number): Promise<readonly QueueClaim[]> =>
  queue.claim({ holder: holder(who), ttlMs, ...(now === undefined ? {} : { now }) });

/** Memory a store that declares `boundedMemory` may keep while 40 MB go through its queue. */
const QUEUE_MEMORY_BUDGET = 16 * 1024 * 1024;

const idsOf = (claims: readonly QueueClaim[]): string[] => claims.map((c) => c.item.id);

export function queueTests(options: ConformanceOptions): void {
  describe("outbound queue", () => {
    const h = useHarness(options);

    it("enqueues a message durably and describes it", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const data = message("queued");
      const before = Date.now();
      const item = await enqueueBytes(
        queue,
        data,
        { sender: "alice@example.test", recipients: ["bob@remote.test", "carol@other.test"], meta: { smtputf8: "1", envid: "x y" } },
      );
      expect(typeof item.id).toBe("string");
      expect(item.id.length).toBeGreaterThan(0);
      expect(item.sender).toBe("alice@example.test");
      expect(item.recipients).toEqual([
        { address: "bob@remote.test", status: "pending" },
        { address: "carol@other.test", status: "pending" },
      ]);
      expect(item.size).toBe(data.length);
      expect(item.createdAt).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
      expect(item.createdAt).toBeLessThanOrEqual(Date.now() + CLOCK_SLACK_MS);
      expect(item.nextAttemptAt).toBeLessThanOrEqual(Date.now() + CLOCK_SLACK_MS);
      expect(item.attempts).toBe(0);
      expect(item.lastError).toBeNull();
      expect(item.state).toBe("queued");
      expect(item.meta).toEqual({ smtputf8: "1", envid: "x y" });
      expect(await queue.get(item.id)).toEqual(item);
      expect(await queue.list()).toEqual([item]);
      expectSameBytes(await readQueued(queue, item.id), data);
    });

    it("keeps the octets of each chunk, not the chunk: a source may reuse its buffer for the next one", async () => {
      const queue = queueOf((await h.fresh()).store);
      let body = "";
      for (let i = 0; body.length < 400_000; i++) body += `line ${i} ${"q".repeat(i % 90)}\r\n`;
      const data = message("reused", body);
      for (const [part, size] of [[data.subarray(0, 2_000), 1], [data, 7 * 1024]] as const) {
        const item = await queue.enqueue({ sender: "alice@example.test", recipients: ["bob@remote.test"] }, oneReusedBuffer(part, size));
        expect(item.size).toBe(part.length);
        expectSameBytes(await readQueued(queue, item.id), part);
      }
    });

    it("keeps the null reverse path and an empty meta", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("bounce"), { sender: "" });
      expect(item.sender).toBe("");
      expect(item.meta).toEqual({});
      expect((await queue.get(item.id))?.sender).toBe("");
    });

    it("takes accepted: true (mail this server already acknowledged, such as a bounce) like any enqueue", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const data = message("a bounce", "b".repeat(5000));
      const item = await enqueueBytes(queue, data, { sender: "" }, { accepted: true });
      expect(item.size).toBe(data.length);
      expectSameBytes(await readQueued(queue, item.id), data);
    });

    it("leaves nothing behind after a failing, too-big or aborted enqueue", async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const data = message("broken", "x".repeat(5000));
      await expect(
        queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, failingSource(data)),
      ).rejects.toThrow();
      await expectStoreError(enqueueBytes(queue, data, {}, { maxBytes: 100 }), "too-big");
      const controller = new AbortController();
      async function* stalled(): AsyncGenerator<Uint8Array> {
        yield data.subarray(0, 100);
        controller.abort(new Error("client went away"));
        await sleep(20);
        yield data.subarray(100);
      }
      await expect(
        queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, stalled(), { signal: controller.signal }),
      ).rejects.toThrow();
      expect(await queue.list()).toEqual([]);
      expect(await claimOne(queue, "after failures")).toEqual([]);
      const reopened = await h.open(ns);
      expect(await queueOf(reopened).list()).toEqual([]);
    });

    it("lets go of a signal when an enqueue settles: one signal can serve many enqueues", async () => {
      // The SMTP session hands the same signal to every transaction of its connection.
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const controller = new AbortController();
      const items: QueueItem[] = [];
      for (let i = 0; i < 20; i++) items.push(await enqueueBytes(queue, message(`shared ${i}`), {}, { signal: controller.signal }));
      await expect(
        queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, failingSource(message("fails", "f".repeat(5000))), {
          signal: controller.signal,
        }),
      ).rejects.toThrow();
      await expectStoreError(enqueueBytes(queue, message("too big", "x".repeat(5000)), {}, { signal: controller.signal, maxBytes: 100 }), "too-big");
      expect(await listenerCount(controller.signal)).toBe(0);
      // A later abort (the client leaves after its last message) touches none of what was queued.
      controller.abort(new Error("client went away"));
      await sleep(5);
      expect((await queue.list()).map((i) => i.id).sort()).toEqual(items.map((i) => i.id).sort());
      for (const item of items.slice(0, 3)) expect((await readQueued(queue, item.id)).length).toBeGreaterThan(0);
    });

    it("streams a 40 MB message in and out intact (in bounded memory when the store claims it)", { timeout: 120_000 }, async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const probe = store.capabilities.boundedMemory ? await MemoryProbe.create() : undefined;
      const total = 40 * 1024 * 1024;
      const line = new TextEncoder().encode("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789\r\n");
      const sourceHash = createHash("sha256");
      async function* big(): AsyncGenerator<Uint8Array> {
        let sent = 0;
        for (let index = 0; sent < total; index++) {
          // A new buffer per chunk, stamped with its number, so that kept or reordered chunks show.
          const chunk = new Uint8Array(Math.min(64 * 1024, total - sent));
          for (let at = 0; at < chunk.length; at += line.length) chunk.set(line.subarray(0, Math.min(line.length, chunk.length - at)), at);
          chunk.set(new TextEncoder().encode(index.toString(16).padStart(8, "0")).subarray(0, chunk.length), 0);
          sourceHash.update(chunk);
          sent += chunk.length;
          probe?.sample(chunk.length);
          yield chunk;
        }
      }
      probe?.start();
      const item = await queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, big());
      const enqueueGrowth = probe?.growth ?? 0;
      expect(item.size).toBe(total);
      expect((await queue.get(item.id))?.size).toBe(total);
      const readHash = createHash("sha256");
      let octets = 0;
      probe?.start();
      for await (const chunk of await queue.readMessage(item.id)) {
        readHash.update(chunk);
        octets += chunk.length;
        probe?.sample(chunk.length);
      }
      const readGrowth = probe?.growth ?? 0;
      expect(octets).toBe(total);
      expect(readHash.digest("hex")).toBe(sourceHash.digest("hex"));
      if (probe) {
        expect(enqueueGrowth, `memory grew by ${megabytes(enqueueGrowth)} during enqueue`).toBeLessThan(QUEUE_MEMORY_BUDGET);
        expect(readGrowth, `memory grew by ${megabytes(readGrowth)} during readMessage`).toBeLessThan(QUEUE_MEMORY_BUDGET);
      }
    });

    it("gives unique ids, also to two instances enqueueing at once", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const items = await Promise.all(
        Array.from({ length: 20 }, (_, i) => enqueueBytes(queueOf(i % 2 === 0 ? store : other), message(`unique ${i}`))),
      );
      expect(new Set(items.map((i) => i.id)).size).toBe(20);
      expect((await queueOf(store).list()).length).toBe(20);
    });

    it("lists oldest first, and sees items of other instances and after a restart", async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const first = await enqueueBytes(queue, message("first"));
      await sleep(15);
      const second = await enqueueBytes(queueOf(await h.open(ns)), message("second"));
      await sleep(15);
      const third = await enqueueBytes(queue, message("third"), {}, { notBefore: Date.now() + 60_000 });
      expect((await queue.list()).map((i) => i.id)).toEqual([first.id, second.id, third.id]);
      await store.close();
      const reopened = queueOf(await h.open(ns));
      expect(await reopened.list()).toEqual([first, second, third]);
      expectSameBytes(await readQueued(reopened, second.id), message("second"));
    });

    it("claims due items only, oldest due first, up to the limit", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const now = Date.now();
      const later = await enqueueBytes(queue, message("later"), {}, { notBefore: now + 60_000 });
      const b = await enqueueBytes(queue, message("b"), {}, { notBefore: now - 1_000 });
      const a = await enqueueBytes(queue, message("a"), {}, { notBefore: now - 3_000 });
      const c = await enqueueBytes(queue, message("c"), {}, { notBefore: now - 2_000 });
      expect(later.nextAttemptAt).toBeGreaterThanOrEqual(now + 60_000 - CLOCK_SLACK_MS);

      const two = await queue.claim({ holder: holder("worker"), ttlMs: 10_000, limit: 2 });
      expect(idsOf(two)).toEqual([a.id, c.id]);
      for (const claim of two) {
        expect(typeof claim.token).toBe("string");
        expect(claim.token.length).toBeGreaterThan(0);
        expect(claim.expiresAt).toBeGreaterThanOrEqual(now + 10_000 - CLOCK_SLACK_MS);
        expect(claim.expiresAt).toBeLessThanOrEqual(Date.now() + 10_000 + CLOCK_SLACK_MS);
      }
      expect(two[0]!.item).toEqual(a);
      expect(idsOf(await queue.claim({ holder: holder("worker"), ttlMs: 10_000, limit: 5 }))).toEqual([b.id]);
      expect(await claimOne(queue, "worker")).toEqual([]);
      // `now` moves the horizon: the later item is due then.
      expect(idsOf(await claimOne(queue, "worker", 10_000, now + 61_000))).toEqual([later.id]);
      expect(await queue.claim({ holder: holder("worker"), ttlMs: 10_000, limit: 10, now: now + 120_000 })).toEqual([]);
    });

    it("never hands out an item that another live claim holds, on any instance", async () => {
      const { ns, store } = await h.fresh();
      const other = queueOf(await h.open(ns));
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("held"));
      const [mine] = await claimOne(queue, "first");
      expect(mine?.item.id).toBe(item.id);
      expect(await claimOne(other, "second")).toEqual([]);
      expect(await claimOne(queue, "same instance")).toEqual([]);
      // Claiming does not hide the item from operators.
      expect((await other.get(item.id))?.state).toBe("queued");
      expect((await other.list()).length).toBe(1);
    });

    it("tells which items are being delivered: those under a live claim, seen from any instance", async () => {
      const { ns, store } = await h.fresh();
      const other = queueOf(await h.open(ns));
      const queue = queueOf(store);
      const sorted = async (q: Queue): Promise<string[]> => [...(await q.delivering())].sort();
      const ids: string[] = [];
      for (const text of ["a", "b", "c"]) ids.push((await enqueueBytes(queue, message(text))).id);
      expect(await queue.delivering()).toEqual([]);
      const claims = await queue.claim({ holder: holder("worker"), ttlMs: 10_000, limit: 2 });
      const held = idsOf(claims).sort();
      expect(held).toHaveLength(2);
      const rest = ids.find((id) => !held.includes(id))!;
      expect(await sorted(queue)).toEqual(held);
      expect(await sorted(other)).toEqual(held);
      // A delivery that ends, either way, is no longer under way.
      await queue.finish(claims[0]!);
      await queue.reschedule(claims[1]!, { nextAttemptAt: Date.now() + 60_000, error: "451 later" });
      expect(await other.delivering()).toEqual([]);
      // Nor is one whose claim expired.
      const [short] = await claimOne(other, "short", 1_000);
      expect(short?.item.id).toBe(rest);
      expect(await queue.delivering()).toEqual([rest]);
      await sleep(1_000 + CLOCK_SLACK_MS);
      expect(await queue.delivering()).toEqual([]);
    });

    it("gives each of 20 items to exactly one of two instances claiming in parallel", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const queue = queueOf(store);
      const items: QueueItem[] = [];
      for (let i = 0; i < 20; i++) items.push(await enqueueBytes(queue, message(`race ${i}`)));
      const worker = async (q: Queue, who: string): Promise<string[]> => {
        const got: string[] = [];
        for (let round = 0; round < 100; round++) {
          const claims = await q.claim({ holder: holder(who), ttlMs: 30_000, limit: 1 + (round % 3) });
          if (claims.length === 0) break;
          got.push(...idsOf(claims));
        }
        return got;
      };
      const [x, y, z] = await Promise.all([worker(queue, "a"), worker(queueOf(other), "b"), worker(queueOf(other), "c")]);
      const all = [...x, ...y, ...z];
      expect(all.length).toBe(20);
      expect(new Set(all)).toEqual(new Set(items.map((i) => i.id)));
    });

    it('lets an expired claim be claimed again; the old claim then gets "lease-lost"', async () => {
      const { ns, store } = await h.fresh();
      const other = queueOf(await h.open(ns));
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("expiring"));
      const [old] = await claimOne(queue, "old", 300);
      expect(old).toBeDefined();
      await sleep(450);
      const [taken] = await claimOne(other, "new", 10_000);
      expect(taken?.item.id).toBe(item.id);
      expect(taken!.token).not.toBe(old!.token);
      await expectStoreError(queue.renew(old!), "lease-lost");
      await expectStoreError(queue.finish(old!), "lease-lost");
      await expectStoreError(queue.reschedule(old!, { nextAttemptAt: Date.now(), error: "stale" }), "lease-lost");
      await expectStoreError(queue.deadLetter(old!, { error: "stale" }), "lease-lost");
      // The stale calls changed nothing, and the new holder still holds it.
      const still = await queue.get(item.id);
      expect(still?.attempts).toBe(0);
      expect(still?.state).toBe("queued");
      expect(await claimOne(queue, "third")).toEqual([]);
      await other.finish(taken!);
      expect(await queue.get(item.id)).toBeNull();
    });

    it("keeps a renewed claim alive past its ttl, and moves expiresAt", async () => {
      const { ns, store } = await h.fresh();
      const other = queueOf(await h.open(ns));
      const queue = queueOf(store);
      await enqueueBytes(queue, message("renewed"));
      let [claim] = await claimOne(queue, "renewer", 600);
      const first = claim!.expiresAt;
      const until = Date.now() + 1_500;
      while (Date.now() < until) {
        await sleep(150);
        claim = await queue.renew(claim!);
      }
      expect(claim!.expiresAt).toBeGreaterThan(first);
      expect(await claimOne(other, "intruder")).toEqual([]);
      await queue.finish(claim!);
      expect(await queue.list()).toEqual([]);
    });

    it("finishes an item: item and message are gone", async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const keep = await enqueueBytes(queue, message("keep"), {}, { notBefore: Date.now() + 60_000 });
      const item = await enqueueBytes(queue, message("done"));
      const [claim] = await claimOne(queue, "finisher");
      expect(claim?.item.id).toBe(item.id);
      await queue.finish(claim!);
      expect(await queue.get(item.id)).toBeNull();
      await expectStoreError(queue.readMessage(item.id), "not-found");
      expect((await queue.list()).map((i) => i.id)).toEqual([keep.id]);
      await expectStoreError(queue.finish(claim!), "lease-lost");
      const reopened = queueOf(await h.open(ns));
      expect((await reopened.list()).map((i) => i.id)).toEqual([keep.id]);
    });

    it("reschedules: counts the attempt, records the error, merges recipients, releases the claim", async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("retry me"), {
        recipients: ["a@one.test", "b@two.test", "c@three.test"],
      });
      const [claim] = await claimOne(queue, "worker");
      const next = Date.now() + 60_000;
      await queue.reschedule(claim!, {
        nextAttemptAt: next,
        error: "451 4.3.0 try later",
        recipients: [
          { address: "a@one.test", status: "delivered", diagnostic: "250 2.0.0 ok" },
          { address: "b@two.test", status: "pending", diagnostic: "451 4.3.0 try later" },
          { address: "c@three.test", status: "failed", diagnostic: "550 5.1.1 no such user", notified: true },
          { address: "nobody@else.test", status: "failed", diagnostic: "not ours" },
        ],
      });
      const expected = {
        ...item,
        attempts: 1,
        nextAttemptAt: next,
        lastError: "451 4.3.0 try later",
        recipients: [
          { address: "a@one.test", status: "delivered", diagnostic: "250 2.0.0 ok" },
          { address: "b@two.test", status: "pending", diagnostic: "451 4.3.0 try later" },
          { address: "c@three.test", status: "failed", diagnostic: "550 5.1.1 no such user", notified: true },
        ],
      };
      const after = await queue.get(item.id);
      expect({ ...after, nextAttemptAt: 0 }).toEqual({ ...expected, nextAttemptAt: 0 });
      expect(Math.abs(after!.nextAttemptAt - next)).toBeLessThanOrEqual(CLOCK_SLACK_MS);
      // Not due yet, then due (the claim was released, not left to expire).
      expect(await claimOne(queue, "early")).toEqual([]);
      const [again] = await claimOne(queueOf(await h.open(ns)), "on time", 10_000, next + CLOCK_SLACK_MS);
      expect(again?.item.id).toBe(item.id);
      expect(again?.item.attempts).toBe(1);
      await expectStoreError(queue.reschedule(claim!, { nextAttemptAt: next, error: "stale" }), "lease-lost");
      await queueOf(await h.open(ns)).reschedule(again!, { nextAttemptAt: Date.now() - 1, error: "second" });
      const reopened = queueOf(await h.open(ns));
      const last = await reopened.get(item.id);
      expect(last?.attempts).toBe(2);
      expect(last?.lastError).toBe("second");
      expect(last?.recipients[0]).toEqual({ address: "a@one.test", status: "delivered", diagnostic: "250 2.0.0 ok" });
      // A recipient the sender was told about stays marked (the next bounce must not name it again).
      expect(last?.recipients[2]).toEqual({ address: "c@three.test", status: "failed", diagnostic: "550 5.1.1 no such user", notified: true });
      expect(idsOf(await claimOne(reopened, "due now"))).toEqual([item.id]);
    });

    it("dead-letters: kept for the operator, never claimed until retried", async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("dead"), { recipients: ["a@one.test", "b@two.test"] });
      const [claim] = await claimOne(queue, "worker");
      await queue.deadLetter(claim!, {
        error: "bounce failed",
        recipients: [{ address: "b@two.test", status: "failed", diagnostic: "550 5.1.1 no such user" }],
      });
      const dead = await queue.get(item.id);
      expect(dead?.state).toBe("dead");
      expect(dead?.attempts).toBe(1);
      expect(dead?.lastError).toBe("bounce failed");
      expect(dead?.recipients).toEqual([
        { address: "a@one.test", status: "pending" },
        { address: "b@two.test", status: "failed", diagnostic: "550 5.1.1 no such user" },
      ]);
      expect(await queue.claim({ holder: holder("w"), ttlMs: 10_000, limit: 10, now: Date.now() + 86_400_000 })).toEqual([]);
      expectSameBytes(await readQueued(queue, item.id), message("dead"));
      const reopened = queueOf(await h.open(ns));
      expect((await reopened.get(item.id))?.state).toBe("dead");

      const before = Date.now();
      await reopened.retry(item.id);
      const retried = await queue.get(item.id);
      expect(retried?.state).toBe("queued");
      expect(retried?.attempts).toBe(1);
      expect(retried?.nextAttemptAt).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
      expect(retried?.nextAttemptAt).toBeLessThanOrEqual(Date.now() + CLOCK_SLACK_MS);
      expect(idsOf(await claimOne(queue, "after retry", 10_000, Date.now() + CLOCK_SLACK_MS))).toEqual([item.id]);
    });

    it("retry makes a waiting item due now, leaves one in delivery alone, and breaks a live claim only when asked", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      const item = await enqueueBytes(queue, message("waiting"), {}, { notBefore: Date.now() + 3_600_000 });
      expect(await claimOne(queue, "early")).toEqual([]);
      expect(await queue.retry(item.id)).toBe("retried");
      const [claim] = await claimOne(queue, "now", 10_000, Date.now() + CLOCK_SLACK_MS);
      expect(claim?.item.id).toBe(item.id);
      // Being delivered right now: a retry would only send it twice.
      expect(await queue.retry(item.id)).toBe("in-delivery");
      expect(await claimOne(queue, "meanwhile", 10_000, Date.now() + CLOCK_SLACK_MS)).toEqual([]);
      await queue.renew(claim!);
      expect(await queue.retry(item.id, { breakClaim: true })).toBe("retried");
      // The broken claim's holder can no longer push the item back, dead-letter it or keep it.
      await expectStoreError(queue.renew(claim!), "lease-lost");
      await expectStoreError(queue.reschedule(claim!, { nextAttemptAt: Date.now() + 3_600_000, error: "late" }), "lease-lost");
      await expectStoreError(queue.deadLetter(claim!, { error: "late" }), "lease-lost");
      const [second] = await claimOne(queue, "after operator", 10_000, Date.now() + CLOCK_SLACK_MS);
      expect(second?.item.id).toBe(item.id);
      await expectStoreError(queue.finish(claim!), "lease-lost");
      await queue.finish(second!);
      expect(await queue.list()).toEqual([]);
    });

    it('removes any item; unknown ids are "not-found" or null', async () => {
      const { ns, store } = await h.fresh();
      const queue = queueOf(store);
      const a = await enqueueBytes(queue, message("a"));
      const b = await enqueueBytes(queue, message("b"), {}, { notBefore: Date.now() + 60_000 });
      const [claim] = await claimOne(queue, "holder");
      expect(claim?.item.id).toBe(a.id);
      await queue.remove(a.id);
      await expectStoreError(queue.finish(claim!), "lease-lost");
      // Nothing the removed item's holder does brings it back.
      await expectStoreError(queue.renew(claim!), "lease-lost");
      await expectStoreError(queue.reschedule(claim!, { nextAttemptAt: Date.now(), error: "gone" }), "lease-lost");
      await expectStoreError(queue.deadLetter(claim!, { error: "gone" }), "lease-lost");
      await expectStoreError(queue.readMessage(a.id), "not-found");
      await expectStoreError(queue.remove(a.id), "not-found");
      await expectStoreError(queue.retry(a.id), "not-found");
      expect(await queue.get(a.id)).toBeNull();
      for (const unknown of ["q000000000nothinghere00", "no-such-item", "../../etc/passwd"]) {
        expect(await queue.get(unknown)).toBeNull();
        await expectStoreError(queue.readMessage(unknown), "not-found");
        await expectStoreError(queue.remove(unknown), "not-found");
        await expectStoreError(queue.retry(unknown), "not-found");
      }
      const reopened = queueOf(await h.open(ns));
      expect((await reopened.list()).map((i) => i.id)).toEqual([b.id]);
    });

    it("keeps the queue apart from mailboxes", async () => {
      const { store } = await h.fresh();
      const queue = queueOf(store);
      await enqueueBytes(queue, message("outbound"), { recipients: ["alice@example.test"] });
      expect(await store.listMailboxes()).toEqual([]);
      expect(await store.mailbox("alice@example.test").list()).toEqual([]);
    });
  });
}
