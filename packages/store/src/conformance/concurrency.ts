import { describe, expect, it } from "vitest";
import type { Lease, Store } from "../contract.js";
import { isStoreError } from "../errors.js";
import { fromBytes } from "../streams.js";
import { expectSameBytes, holder, message, readBytes, sleep, useHarness, type ConformanceOptions } from "./harness.js";

/** A source that yields slowly, so that parallel appends really overlap instead of running one by one. */
async function* trickle(data: Uint8Array): AsyncGenerator<Uint8Array> {
  const third = Math.ceil(data.length / 3);
  for (let offset = 0; offset < data.length; offset += third) {
    yield data.subarray(offset, offset + third);
    await sleep(2);
  }
}

/** 40 acquireLease calls on alice's mailbox, alternating between `stores`: one wins, the rest are "in-use". */
async function expectOneWinner(stores: readonly Store[], who: string): Promise<void> {
  const attempts = Array.from({ length: 40 }, (_, i) =>
    stores[i % stores.length]!.mailbox("alice@example.test").acquireLease({ holder: holder(`${who} ${i}`), ttlMs: 10_000 }),
  );
  const results = await Promise.allSettled(attempts);
  const winners = results.filter((r): r is PromiseFulfilledResult<Lease> => r.status === "fulfilled");
  expect(winners).toHaveLength(1);
  for (const r of results) {
    if (r.status === "rejected") expect(isStoreError(r.reason) && r.reason.code, String(r.reason)).toBe("in-use");
  }
  await winners[0]!.value.release();
}

async function appendMany(stores: readonly Store[], count: number): Promise<void> {
  const datas = Array.from({ length: count }, (_, i) => message(`parallel-${i}`, `${"p".repeat(i * 97)}\r\n`));
  const infos = await Promise.all(
    datas.map((data, i) => stores[i % stores.length]!.mailbox("alice@example.test").append(trickle(data))),
  );
  const uids = infos.map((m) => m.uid);
  expect(new Set(uids).size).toBe(count);
  for (const store of stores) {
    const box = store.mailbox("alice@example.test");
    const listed = await box.list();
    expect(listed.map((m) => m.uid).sort()).toEqual([...uids].sort());
    for (const [i, info] of infos.entries()) {
      expect(listed.find((m) => m.uid === info.uid)?.size).toBe(datas[i]!.length);
      expectSameBytes(await readBytes(box, info.uid), datas[i]!, `message ${i}`);
    }
  }
}

export function concurrencyTests(options: ConformanceOptions): void {
  describe("concurrency", () => {
    const h = useHarness(options);

    it("gives 50 parallel appends to one mailbox 50 distinct UIDs, all readable", async () => {
      const { store } = await h.fresh();
      await appendMany([store], 50);
    });

    it("does the same with the appends spread over two instances of one store", async () => {
      const { ns, store } = await h.fresh();
      await appendMany([store, await h.open(ns)], 50);
    });

    it("lets exactly one of 40 racing acquireLease calls on two instances win", async () => {
      const { ns, store } = await h.fresh();
      await expectOneWinner([store, await h.open(ns)], "racer");
    });

    it("lets exactly one of 40 racing acquireLease calls win once the lease before them expired", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      // Taken and never released: only its expiry frees the mailbox (a takeover, not a free mailbox).
      await store.mailbox("alice@example.test").acquireLease({ holder: holder("gone"), ttlMs: 300 });
      await sleep(450);
      await expectOneWinner([store, other], "taker");
    });

    it("parallel deliveries and expunges on different mailboxes do not disturb each other", async () => {
      const { ns, store } = await h.fresh();
      const other = await h.open(ns);
      const names = ["m1", "m2", "m3", "m4"];
      await Promise.all(
        names.map((name, i) => (i % 2 ? store : other).mailbox(name).append(fromBytes(message(`seed-${name}`)))),
      );
      await Promise.all([
        ...names.map(async (name) => {
          const box = store.mailbox(name);
          const l = await box.acquireLease({ holder: holder(name), ttlMs: 10_000 });
          const uids = (await box.list()).map((m) => m.uid);
          await box.expunge(uids, l);
          await l.release();
        }),
        other.deliver(names, fromBytes(message("broadcast"))),
      ]);
      for (const name of names) {
        const listed = await store.mailbox(name).list();
        // The broadcast either arrived before the expunge's snapshot (and went with it) or after.
        expect(listed.length).toBeLessThanOrEqual(1);
      }
    });
  });
}
