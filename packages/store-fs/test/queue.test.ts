import { mkdir, mkdtemp, readFile, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { compareAge, fromBytes } from "@mailroom/store";
import { LEASE_FILE, createFsStore } from "../src/index.js";

const tmp = await mkdtemp(join(tmpdir(), "mailroom-store-fs-queue-"));
afterAll(() => rm(tmp, { recursive: true, force: true }));
let n = 0;
const freshRoot = (): string => join(tmp, `r${n++}`);

describe("maildir outbound queue layout", () => {
  it("keeps an item as <root>/.queue/items/<id>/ with message, item.json and the claim as a lease file", async () => {
    const root = freshRoot();
    const store = await createFsStore({ root });
    const data = "Subject: queued\r\n\r\nbody\r\n";
    const item = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes(data));
    const dir = join(root, ".queue", "items", item.id);
    expect((await readdir(dir)).sort()).toEqual(["item.json", "message"]);
    expect(await readFile(join(dir, "message"), "utf8")).toBe(data);
    expect(JSON.parse(await readFile(join(dir, "item.json"), "utf8"))).toEqual(item);
    expect(await readdir(join(root, ".queue", "tmp"))).toEqual([]);

    const [claim] = await store.queue.claim({ holder: "worker", ttlMs: 30_000 });
    const lease = JSON.parse(await readFile(join(dir, LEASE_FILE), "utf8")) as { token: string; holder: string };
    expect(lease).toMatchObject({ token: claim!.token, holder: "worker" });
    await store.queue.reschedule(claim!, { nextAttemptAt: Date.now(), error: "451 later" });
    expect((await readdir(dir)).sort()).toEqual(["item.json", "message"]);

    const [again] = await store.queue.claim({ holder: "worker", ttlMs: 30_000 });
    await store.queue.finish(again!);
    expect(await readdir(join(root, ".queue", "items"))).toEqual([]);
    expect(await readdir(join(root, ".queue", "trash"))).toEqual([]);
    expect(await store.listMailboxes()).toEqual([]);
  });

  it("ignores a half-written enqueue left in tmp/ by a crash, and sweeps it once it is old", async () => {
    const root = freshRoot();
    const store = await createFsStore({ root });
    await store.queue.enqueue({ sender: "", recipients: ["b@remote.test"] }, fromBytes("x"), { notBefore: Date.now() + 60_000 });
    const crashed = join(root, ".queue", "tmp", "q000000000crashedcrash");
    await mkdir(crashed);
    await writeFile(join(crashed, "message"), "half a mess");
    const old = new Date(Date.now() - 2 * 3_600_000);
    await utimes(crashed, old, old);
    const reopened = await createFsStore({ root });
    expect((await reopened.queue.list()).length).toBe(1);
    expect(await reopened.queue.claim({ holder: "w", ttlMs: 1_000 })).toEqual([]);
    expect(await readdir(join(root, ".queue", "tmp"))).toEqual([]);
  });

  it("claims without reading the items while nothing changed, and still sees every change another instance makes", async () => {
    const root = freshRoot();
    const worker = await createFsStore({ root });
    const other = await createFsStore({ root }); // another process: an SMTP worker, or `mailroom queue retry`
    const envelope = { sender: "a@example.test", recipients: ["b@remote.test"] };
    const later = Date.now() + 3_600_000;
    const deferred = await worker.queue.enqueue(envelope, fromBytes("deferred"), { notBefore: later });
    expect(await worker.queue.claim({ holder: "w", ttlMs: 30_000 })).toEqual([]);

    // Unchanged queue: the claim answers from what it holds. An item file edited by hand, with no
    // instance announcing it, is therefore not seen (until the periodic full scan).
    const itemFile = join(root, ".queue", "items", deferred.id, "item.json");
    const original = await readFile(itemFile, "utf8");
    await writeFile(itemFile, JSON.stringify({ ...deferred, nextAttemptAt: 0 }));
    expect(await worker.queue.claim({ holder: "w", ttlMs: 30_000 })).toEqual([]);
    await writeFile(itemFile, original);

    // Another instance's enqueue, retry and removal are each seen by the next claim.
    const fresh = await other.queue.enqueue(envelope, fromBytes("fresh"));
    const [first] = await worker.queue.claim({ holder: "w", ttlMs: 30_000 });
    expect(first!.item.id).toBe(fresh.id);
    await worker.queue.reschedule(first!, { nextAttemptAt: later, error: "451 try later" });
    expect(await worker.queue.claim({ holder: "w", ttlMs: 30_000 })).toEqual([]);
    await other.queue.retry(deferred.id);
    const [second] = await worker.queue.claim({ holder: "w", ttlMs: 30_000 });
    expect(second!.item.id).toBe(deferred.id);
    await worker.queue.reschedule(second!, { nextAttemptAt: later, error: "451 try later" });
    await other.queue.retry(fresh.id);
    await other.queue.remove(fresh.id);
    expect(await worker.queue.claim({ holder: "w", ttlMs: 30_000 })).toEqual([]);
    expect((await worker.queue.list()).map((item) => item.id)).toEqual([deferred.id]);
  });

  it("lists a queue larger than one read slice, oldest first, with synchronous and asynchronous reads", async () => {
    const root = freshRoot();
    const store = await createFsStore({ root });
    const envelope = { sender: "a@example.test", recipients: ["b@remote.test"] };
    const later = Date.now() + 3_600_000;
    const items = [];
    // More than the 256 items a synchronous scan reads between two turns of the event loop.
    for (let i = 0; i < 300; i++) items.push(await store.queue.enqueue(envelope, fromBytes(`m${i}`), { notBefore: later }));
    const ids = items.sort(compareAge).map((item) => item.id);
    // A directory without an item file (a removal under way) is left out, not an error. Its name is an
    // id's with the last character changed (to one the id does not end in: one in 36 runs failed here).
    const oldest = ids[0]!;
    await mkdir(join(root, ".queue", "items", `${oldest.slice(0, -1)}${oldest.endsWith("x") ? "y" : "x"}`));
    const asynchronous = await createFsStore({ root, syncReadBytes: 0 });
    for (const reader of [store, asynchronous]) {
      expect((await reader.queue.list()).map((item) => item.id)).toEqual(ids);
      expect(await reader.queue.claim({ holder: "w", ttlMs: 30_000 })).toEqual([]);
    }
  });

  it("sweeps the change markers of instances gone for an hour", async () => {
    const root = freshRoot();
    const store = await createFsStore({ root });
    await store.queue.enqueue({ sender: "", recipients: ["b@remote.test"] }, fromBytes("x"), { notBefore: Date.now() + 60_000 });
    const changes = join(root, ".queue", "changes");
    const mine = await readdir(changes);
    expect(mine).toHaveLength(1);
    await writeFile(join(changes, "4242-0123456789ab"), "7");
    const old = new Date(Date.now() - 2 * 3_600_000);
    await utimes(join(changes, "4242-0123456789ab"), old, old);
    const reopened = await createFsStore({ root });
    expect(await reopened.queue.claim({ holder: "w", ttlMs: 1_000 })).toEqual([]);
    expect(await readdir(changes)).toEqual(mine);
  });

  it("a retry does not end a first claim made by another process while it looked for one", async () => {
    // The first claim of an item takes no mutex (the claim file is created exclusively), so it can
    // land between retry's look at the claim file and its update of the item. That delivery has
    // begun; ending its claim would let a second worker send the message again.
    const root = freshRoot();
    const store = await createFsStore({ root });
    const other = await createFsStore({ root });
    try {
      const item = await store.queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("x"));
      const queue = store.queue as unknown as { writeItem(item: unknown): Promise<void> };
      const writeItem = queue.writeItem.bind(queue);
      let racing: Awaited<ReturnType<typeof other.queue.claim>> = [];
      queue.writeItem = async (next) => {
        racing = await other.queue.claim({ holder: "the other worker", ttlMs: 30_000 });
        return writeItem(next);
      };
      expect(await store.queue.retry(item.id)).toBe("retried");
      expect(racing.map((c) => c.item.id)).toEqual([item.id]);
      // Still that worker's, and nobody else can claim it.
      await other.queue.renew(racing[0]!);
      expect(await other.queue.delivering()).toEqual([item.id]);
      expect(await store.queue.claim({ holder: "a third worker", ttlMs: 30_000, now: Date.now() + 60_000 })).toEqual([]);
      await other.queue.finish(racing[0]!);
    } finally {
      await other.close();
      await store.close();
    }
  });

  it("does not follow ids that are paths", async () => {
    const root = freshRoot();
    const store = await createFsStore({ root });
    await mkdir(join(root, "secret"), { recursive: true });
    await writeFile(join(root, "secret", "message"), "not yours");
    expect(await store.queue.get("../../secret")).toBeNull();
    await expect(store.queue.readMessage("../../secret")).rejects.toMatchObject({ code: "not-found" });
    await expect(store.queue.remove("../../secret")).rejects.toMatchObject({ code: "not-found" });
    expect(await readFile(join(root, "secret", "message"), "utf8")).toBe("not yours");
  });
});
