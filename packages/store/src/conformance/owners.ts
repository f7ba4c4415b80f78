import { describe, expect, it } from "vitest";
import { processStamp, processStampOf, type ProcessStamp } from "../liveness.js";
import { fromBytes } from "../streams.js";
import { expectStoreError, lease, useHarness, type ConformanceOptions, type OwnerHooks } from "./harness.js";

// Linux never hands out a pid above 2^22: a process with this one has certainly ended.
const NO_SUCH_PID = 2 ** 22 + 1;
const TEN_MINUTES = 600_000;

/** Holders the suite cannot judge or finds running: their leases and claims must hold. */
function liveOrUnknowable(me: ProcessStamp): ReadonlyArray<ProcessStamp | null> {
  return [
    processStampOf(process.ppid), // running: the parent of the test process
    { ...me, pid: NO_SUCH_PID, pidns: "pid:[1]" }, // another container: its pids mean nothing here
    { ...me, pid: NO_SUCH_PID, boot: "00000000-0000-0000-0000-000000000000" }, // another machine or boot
    null,
  ];
}

export function ownerTests(options: ConformanceOptions & { readonly owners: OwnerHooks }): void {
  const me = processStamp();
  describe.skipIf(me === null)("holders that have ended (Linux)", () => {
    const h = useHarness(options);
    const hooks = options.owners;

    it("takes over at once a lease whose process has ended on this machine, and only such a lease", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      await box.append(fromBytes("Subject: x\r\n\r\nhi\r\n"));
      const first = await lease(box, TEN_MINUTES, "a server that will be killed");
      for (const owner of liveOrUnknowable(me!)) {
        await hooks.setLeaseOwner(ns, "alice@example.test", owner);
        await expectStoreError(lease(box, 30_000, "next"), "in-use");
      }
      await hooks.setLeaseOwner(ns, "alice@example.test", { ...me!, pid: NO_SUCH_PID });
      const next = await lease(box, 30_000, "next");
      await expectStoreError(first.renew(), "lease-lost");
      await expectStoreError(box.expunge([(await box.list())[0]!.uid], first), "lease-lost");
      expect(await box.list()).toHaveLength(1);
      await next.release();
    });

    it("claims at once a queue item whose claimer has ended on this machine, and only such an item", async () => {
      const { ns, store } = await h.fresh();
      const queue = store.queue;
      if (!queue) expect.fail(`the ${store.kind} store has no queue`);
      const item = await queue.enqueue({ sender: "a@example.test", recipients: ["b@remote.test"] }, fromBytes("x"));
      const [first] = await queue.claim({ holder: "a worker that will be killed", ttlMs: TEN_MINUTES });
      expect(first?.item.id).toBe(item.id);
      for (const owner of liveOrUnknowable(me!)) {
        await hooks.setClaimOwner(ns, item.id, owner);
        expect(await queue.claim({ holder: "next", ttlMs: 30_000 })).toEqual([]);
        expect(await queue.retry(item.id)).toBe("in-delivery");
        expect(await queue.delivering()).toEqual([item.id]);
      }
      await hooks.setClaimOwner(ns, item.id, { ...me!, pid: NO_SUCH_PID });
      expect(await queue.delivering()).toEqual([]);
      // Nobody is delivering it any more: an operator's retry goes through, and so does a claim.
      expect(await queue.retry(item.id)).toBe("retried");
      const [next] = await queue.claim({ holder: "next", ttlMs: 30_000 });
      expect(next?.item.id).toBe(item.id);
      await expectStoreError(queue.renew(first!), "lease-lost");
      await queue.finish(next!);
      expect(await queue.list()).toEqual([]);
    });
  });
}
