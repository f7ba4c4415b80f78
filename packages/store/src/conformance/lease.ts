import { describe, expect, it } from "vitest";
import {
  CLOCK_SLACK_MS,
  appendBytes,
  expectStoreError,
  lease,
  message,
  readBytes,
  sleep,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";

export function leaseTests(options: ConformanceOptions): void {
  describe("leases", () => {
    const h = useHarness(options);

    it("hands out a lease that describes itself", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const before = Date.now();
      const l = await box.acquireLease({ holder: "pop3 127.0.0.1:5000 on test", ttlMs: 5_000 });
      expect(l.mailbox).toBe("alice@example.test");
      expect(l.holder).toBe("pop3 127.0.0.1:5000 on test");
      expect(typeof l.token).toBe("string");
      expect(l.token.length).toBeGreaterThan(0);
      expect(l.expiresAt).toBeGreaterThanOrEqual(before + 5_000 - CLOCK_SLACK_MS);
      expect(l.expiresAt).toBeLessThanOrEqual(Date.now() + 5_000 + CLOCK_SLACK_MS);
      await l.release();
    });

    it('refuses a second lease with "in-use", on the same and on another instance', async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const l = await lease(store.mailbox("alice@example.test"), 10_000, "first");
      await expectStoreError(lease(store.mailbox("alice@example.test"), 10_000, "same instance"), "in-use");
      await expectStoreError(lease(other.mailbox("alice@example.test"), 10_000, "other instance"), "in-use");
      await l.release();
    });

    it("can be taken again after release, and release is idempotent", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const first = await lease(store.mailbox("alice@example.test"));
      await first.release();
      await first.release();
      const second = await lease(other.mailbox("alice@example.test"));
      expect(second.token).not.toBe(first.token);
      // A stale release must not free the new holder's lease.
      await first.release();
      await expectStoreError(lease(store.mailbox("alice@example.test")), "in-use");
      await second.release();
      const third = await lease(store.mailbox("alice@example.test"));
      expect(new Set([first.token, second.token, third.token]).size).toBe(3);
      await third.release();
    });

    it('lets another instance take an expired lease; the old holder then gets "lease-lost"', async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const box = store.mailbox("alice@example.test");
      const { uid } = await appendBytes(box, message("fenced"));
      const old = await lease(box, 300, "old");
      await sleep(450);
      const taken = await lease(other.mailbox("alice@example.test"), 10_000, "new");
      expect(taken.token).not.toBe(old.token);
      await expectStoreError(old.renew(), "lease-lost");
      await expectStoreError(box.expunge([uid], old), "lease-lost");
      // The old holder's release is harmless: the new holder keeps the mailbox.
      await old.release();
      await expectStoreError(lease(box, 10_000, "third"), "in-use");
      expect(await other.mailbox("alice@example.test").expunge([uid], taken)).toBe(1);
      await taken.release();
    });

    it("stays alive past its ttl while renewed, and moves expiresAt", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const box = store.mailbox("alice@example.test");
      const l = await lease(box, 600, "renewer");
      const firstExpiry = l.expiresAt;
      const until = Date.now() + 1_500;
      while (Date.now() < until) {
        await sleep(150);
        await l.renew();
      }
      expect(l.expiresAt).toBeGreaterThan(firstExpiry);
      await expectStoreError(lease(other.mailbox("alice@example.test"), 10_000, "intruder"), "in-use");
      const { uid } = await appendBytes(box, message("still mine"));
      expect(await box.expunge([uid], l)).toBe(1);
      await l.release();
    });

    it("is per mailbox", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const a = await lease(store.mailbox("alice@example.test"));
      const b = await lease(other.mailbox("bob@example.test"));
      const c = await lease(store.mailbox("Alice@example.test"));
      await expectStoreError(lease(other.mailbox("alice@example.test")), "in-use");
      await Promise.all([a.release(), b.release(), c.release()]);
    });

    it("does not block reading and appending", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const l = await lease(store.mailbox("alice@example.test"));
      const info = await appendBytes(other.mailbox("alice@example.test"), message("while leased"));
      expect((await other.mailbox("alice@example.test").list()).map((m) => m.uid)).toEqual([info.uid]);
      expect((await readBytes(other.mailbox("alice@example.test"), info.uid)).length).toBe(info.size);
      await l.release();
    });
  });
}
