import { describe, expect, it } from "vitest";
import { isStoreError } from "../errors.js";
import {
  CLOCK_SLACK_MS,
  appendBytes,
  expectStoreError,
  lease,
  message,
  sleep,
  uidsOf,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";

export function expungeTests(options: ConformanceOptions): void {
  describe("expunge and markRetrieved", () => {
    const h = useHarness(options);

    it("lets a read that began before an expunge end whole, or fail with a StoreError, never short", async () => {
      // POP3 streams RETR straight from the store; a reply cut short would be taken for the message.
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
      const data = message("read while deleted", line.repeat(28_000));
      const { uid } = await appendBytes(box, data);
      const stream = (await box.read(uid))[Symbol.asyncIterator]();
      const first = await stream.next();
      expect(first.done).toBe(false);
      const pieces: Uint8Array[] = [first.value as Uint8Array];
      const other = (await h.open(ns)).mailbox("alice@example.test");
      const l = await lease(other);
      expect(await other.expunge([uid], l)).toBe(1);
      await l.release();
      let failure: unknown = null;
      try {
        for (let next = await stream.next(); !next.done; next = await stream.next()) pieces.push(next.value);
      } catch (error) {
        failure = error;
      }
      if (failure !== null) {
        expect(isStoreError(failure), String(failure)).toBe(true);
      } else {
        expect(pieces.reduce((n, p) => n + p.length, 0)).toBe(data.length);
      }
      await expectStoreError(box.read(uid), "not-found");
    });

    it("deletes the given messages, counts them, ignores UIDs already gone, and is durable", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const uids: string[] = [];
      for (let i = 0; i < 4; i++) uids.push((await appendBytes(box, message(`e${i}`))).uid);
      const l = await lease(box);
      expect(await box.expunge([uids[0]!, uids[2]!, "never-existed"], l)).toBe(2);
      expect(await uidsOf(box)).toEqual([uids[1], uids[3]]);
      expect(await box.expunge([uids[0]!], l)).toBe(0);
      expect(await box.expunge([], l)).toBe(0);
      await expectStoreError(box.read(uids[0]!), "not-found");
      await l.release();
      await store.close();
      const again = (await h.open(ns)).mailbox("alice@example.test");
      expect(await uidsOf(again)).toEqual([uids[1], uids[3]]);
      await expectStoreError(again.read(uids[2]!), "not-found");
    });

    it("counts a UID listed twice once", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const { uid } = await appendBytes(box, message("dup"));
      const l = await lease(box);
      expect(await box.expunge([uid, uid], l)).toBe(1);
      expect(await box.list()).toEqual([]);
    });

    it("leaves other mailboxes alone", async () => {
      const { store } = await h.fresh();
      const a = store.mailbox("alice@example.test");
      const b = store.mailbox("bob@example.test");
      const ua = await appendBytes(a, message("a"), { uid: "same-uid" });
      const ub = await appendBytes(b, message("b"), { uid: "same-uid" });
      const l = await lease(a);
      expect(await a.expunge([ua.uid], l)).toBe(1);
      expect(await uidsOf(b)).toEqual([ub.uid]);
    });

    it('refuses with "lease-lost" for a released lease or one of another mailbox, deleting nothing', async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const other = store.mailbox("bob@example.test");
      const { uid } = await appendBytes(box, message("x"));
      const released = await lease(box);
      await released.release();
      await expectStoreError(box.expunge([uid], released), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], released), "lease-lost");
      const foreign = await lease(other);
      await expectStoreError(box.expunge([uid], foreign), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], foreign), "lease-lost");
      // Still refused while someone else holds the mailbox's own lease.
      const live = await lease(box);
      await expectStoreError(box.expunge([uid], foreign), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], foreign), "lease-lost");
      await expectStoreError(box.expunge([uid], released), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], released), "lease-lost");
      expect(await uidsOf(box)).toEqual([uid]);
      expect((await box.list())[0]!.retrievedAt).toBeNull();
      expect(await box.expunge([uid], live)).toBe(1);
    });

    it('refuses with "lease-lost" a lease that expired, also when nobody took the mailbox since', async () => {
      // A holder that stalled past its ttl cannot know whether someone else deleted or read mail in the
      // meantime; only a live lease may write. Comparing tokens alone lets this through.
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const { uid } = await appendBytes(box, message("x"));
      const expired = await lease(box, 300, "stalled");
      await sleep(450);
      await expectStoreError(box.expunge([uid], expired), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], expired), "lease-lost");
      expect((await box.list()).map((m) => [m.uid, m.retrievedAt])).toEqual([[uid, null]]);
      await expired.release();
      const fresh = await lease(box, 10_000, "next");
      expect(await box.expunge([uid], fresh)).toBe(1);
      await fresh.release();
    });

    it('refuses with "lease-lost" once an expired lease was taken over', async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const box = store.mailbox("alice@example.test");
      const { uid } = await appendBytes(box, message("x"));
      const old = await lease(box, 300, "old");
      await sleep(450);
      const taken = await lease(other.mailbox("alice@example.test"), 10_000, "new");
      await expectStoreError(box.expunge([uid], old), "lease-lost");
      await expectStoreError(box.markRetrieved([uid], old), "lease-lost");
      expect(await uidsOf(box)).toEqual([uid]);
      expect(await other.mailbox("alice@example.test").expunge([uid], taken)).toBe(1);
    });

    it("takes the lease of another instance of the same store", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const { uid } = await appendBytes(store.mailbox("alice@example.test"), message("x"));
      const l = await lease(other.mailbox("alice@example.test"));
      expect(await store.mailbox("alice@example.test").expunge([uid], l)).toBe(1);
      expect(await other.mailbox("alice@example.test").list()).toEqual([]);
    });

    it("records the first retrieval time once, keeps it across a restart, ignores missing UIDs", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const a = await appendBytes(box, message("a"));
      const b = await appendBytes(box, message("b"));
      const known = Date.UTC(2020, 1, 2, 3, 4, 5);
      const c = await appendBytes(box, message("c"), { retrievedAt: known });
      const l = await lease(box);
      const before = Date.now();
      await box.markRetrieved([a.uid, c.uid, "missing"], l);
      const after = Date.now();
      const first = await box.list();
      const firstA = first.find((m) => m.uid === a.uid)!.retrievedAt;
      expect(firstA).not.toBeNull();
      expect(firstA!).toBeGreaterThanOrEqual(before - CLOCK_SLACK_MS);
      expect(firstA!).toBeLessThanOrEqual(after + CLOCK_SLACK_MS);
      expect(first.find((m) => m.uid === b.uid)!.retrievedAt).toBeNull();
      expect(first.find((m) => m.uid === c.uid)!.retrievedAt).toBe(known);

      await sleep(1_100);
      await box.markRetrieved([a.uid, b.uid], l);
      const second = await box.list();
      expect(second.find((m) => m.uid === a.uid)!.retrievedAt).toBe(firstA);
      const secondB = second.find((m) => m.uid === b.uid)!.retrievedAt;
      expect(secondB).not.toBeNull();
      await l.release();
      await store.close();

      const again = await (await h.open(ns)).mailbox("alice@example.test").list();
      expect(again.map((m) => [m.uid, m.retrievedAt])).toEqual([
        [a.uid, firstA],
        [b.uid, secondB],
        [c.uid, known],
      ]);
    });
  });
}
