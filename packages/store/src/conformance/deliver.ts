import { describe, expect, it } from "vitest";
import { fromBytes } from "../streams.js";
import {
  expectSameBytes,
  expectStoreError,
  failingSource,
  listenerCount,
  message,
  readBytes,
  sleep,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";

export function deliverTests(options: ConformanceOptions): void {
  describe("deliver", () => {
    const h = useHarness(options);
    const targets = ["alice@example.test", "bob@example.test", "carol@other.test"];

    it("stores one message in three mailboxes with identical bytes", async () => {
      const { ns, store } = await h.fresh();
      const data = message("to three", "z".repeat(70_000) + "\r\n");
      const delivered = await store.deliver(targets, fromBytes(data, 8192));
      expect(delivered.map((d) => d.mailbox)).toEqual(targets);
      for (const d of delivered) {
        expect(d.message.size).toBe(data.length);
        const box = store.mailbox(d.mailbox);
        expect((await box.list()).map((m) => m.uid)).toEqual([d.message.uid]);
        expectSameBytes(await readBytes(box, d.message.uid), data, d.mailbox);
      }
      await store.close();
      const reopened = await h.open(ns);
      for (const d of delivered) {
        expectSameBytes(await readBytes(reopened.mailbox(d.mailbox), d.message.uid), data, `${d.mailbox} after restart`);
      }
    });

    it("keeps receivedAt and the mailboxes' own UID sequences", async () => {
      const { store } = await h.fresh();
      const receivedAt = Date.UTC(2023, 5, 6, 7, 8, 9);
      const before = await store.mailbox("alice@example.test").append(fromBytes(message("before")));
      const delivered = await store.deliver(targets, fromBytes(message("stamped")), { receivedAt });
      for (const d of delivered) expect(d.message.receivedAt).toBe(receivedAt);
      const alice = await store.mailbox("alice@example.test").list();
      expect(alice.map((m) => m.uid)).toEqual([before.uid, delivered[0]!.message.uid]);
      expect(alice[1]!.receivedAt).toBe(receivedAt);
    });

    it("delivers to none when the source fails midway", async () => {
      const { ns, store } = await h.fresh();
      await expect(store.deliver(targets, failingSource(message("broken", "q".repeat(100_000))))).rejects.toThrow();
      for (const id of targets) expect(await store.mailbox(id).list()).toEqual([]);
      await store.close();
      const reopened = await h.open(ns);
      for (const id of targets) expect(await reopened.mailbox(id).list()).toEqual([]);
    });

    it('refuses more than maxBytes with "too-big" and delivers to none', async () => {
      const { store } = await h.fresh();
      const data = message("too big", "t".repeat(30_000));
      await expectStoreError(store.deliver(targets, fromBytes(data, 1024), { maxBytes: data.length - 1 }), "too-big");
      for (const id of targets) expect(await store.mailbox(id).list()).toEqual([]);
      const ok = await store.deliver(targets, fromBytes(data, 1024), { maxBytes: data.length });
      expect(ok).toHaveLength(3);
    });

    it("delivers to none when aborted", async () => {
      const { store } = await h.fresh();
      const controller = new AbortController();
      const data = message("aborted", "a".repeat(50_000));
      async function* source(): AsyncGenerator<Uint8Array> {
        yield data.subarray(0, 1000);
        controller.abort(new Error("client went away"));
        await sleep(1);
        yield data.subarray(1000);
      }
      await expect(store.deliver(targets, source(), { signal: controller.signal })).rejects.toThrow();
      for (const id of targets) expect(await store.mailbox(id).list()).toEqual([]);
    });

    it("lets go of a signal when the delivery settles: one signal can serve many deliveries", async () => {
      const { store } = await h.fresh();
      const controller = new AbortController();
      const delivered = [];
      for (let i = 0; i < 20; i++) {
        delivered.push(...(await store.deliver(["alice@example.test"], fromBytes(message(`shared ${i}`)), { signal: controller.signal })));
      }
      await expect(store.deliver(["alice@example.test"], failingSource(message("fails", "f".repeat(50_000))), { signal: controller.signal })).rejects.toThrow();
      expect(await listenerCount(controller.signal)).toBe(0);
      // A later abort (the client leaves after its last message) touches none of what was delivered.
      controller.abort(new Error("client went away"));
      await sleep(5);
      expect((await store.mailbox("alice@example.test").list()).map((m) => m.uid)).toEqual(delivered.map((d) => d.message.uid));
    });

    it('refuses an invalid mailbox id with "invalid-name" and delivers to none', async () => {
      const { store } = await h.fresh();
      await expectStoreError(store.deliver(["alice@example.test", "bad\0id"], fromBytes(message("x"))), "invalid-name");
      expect(await store.mailbox("alice@example.test").list()).toEqual([]);
    });

    it("takes accepted: true (mail this server already acknowledged) like any delivery", async () => {
      const { store } = await h.fresh();
      const data = message("acknowledged", "k".repeat(70_000));
      const delivered = await store.deliver(targets, fromBytes(data, 8192), { accepted: true });
      expect(delivered).toHaveLength(3);
      for (const d of delivered) {
        expect(d.message.size).toBe(data.length);
        expectSameBytes(await readBytes(store.mailbox(d.mailbox), d.message.uid), data, d.mailbox);
      }
    });

    it("answers hasRoomFor, where the store has it, with true on an empty store with room", async () => {
      const { store } = await h.fresh();
      if (store.hasRoomFor === undefined) return;
      expect(await store.hasRoomFor(0)).toBe(true);
      expect(await store.hasRoomFor(10_000)).toBe(true);
      // No side effect: asking many times sets nothing aside, and the delivery still goes through.
      for (let i = 0; i < 100; i++) expect(await store.hasRoomFor(1_000_000)).toBe(true);
      expect(await store.deliver(["alice@example.test"], fromBytes(message("after asking")))).toHaveLength(1);
    });

    it("delivers to a single mailbox like append", async () => {
      const { store } = await h.fresh();
      const data = message("single");
      const [d] = await store.deliver(["alice@example.test"], fromBytes(data));
      expect(d!.mailbox).toBe("alice@example.test");
      expectSameBytes(await readBytes(store.mailbox("alice@example.test"), d!.message.uid), data);
    });
  });
}
