import { describe, expect, it } from "vitest";
import type { Mailbox, Store } from "../contract.js";
import { isValidUid } from "../names.js";
import { fromBytes } from "../streams.js";
import {
  appendBytes,
  expectSameBytes,
  expectStoreError,
  lease,
  message,
  readBytes,
  uidsOf,
  useHarness,
  type ConformanceOptions,
} from "./harness.js";

/**
 * UIDs a store would plausibly generate next, guessed from the last generated one by counting up its
 * trailing number in decimal, hex and base 36. Importing mail under such UIDs must not make a later
 * generated UID collide with them.
 */
function likelyNextUids(last: string): string[] {
  const out = new Set<string>();
  const bump = (re: RegExp, radix: number): void => {
    const m = re.exec(last);
    if (!m) return;
    const [, head, digits] = m as unknown as [string, string, string];
    const upper = digits !== digits.toLowerCase();
    for (let step = 1; step <= 4; step++) {
      let next = (parseInt(digits, radix) + step).toString(radix).padStart(digits.length, "0");
      if (upper) next = next.toUpperCase();
      out.add(head + next);
    }
  };
  bump(/^(.*?)(\d{1,12})$/, 10);
  bump(/^(.*?)([0-9a-fA-F]{1,12})$/, 16);
  bump(/^(.*?)([0-9a-z]{1,10})$/, 36);
  return [...out].filter((uid) => uid !== last && isValidUid(uid));
}

/** A mailbox's optional UID-mark methods, bound, or null when the store leaves them out. */
function marksOf(box: Mailbox): { uidMark(): Promise<string | null>; skipUids(mark: string): Promise<void> } | null {
  const { uidMark, skipUids } = box;
  if (uidMark === undefined || skipUids === undefined) return null;
  return { uidMark: () => uidMark.call(box), skipUids: (mark) => skipUids.call(box, mark) };
}

export function uidTests(options: ConformanceOptions): void {
  describe("UIDs", () => {
    const h = useHarness(options);

    it("generates valid (1–70 printable ASCII), unique UIDs", async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const uids: string[] = [];
      for (let i = 0; i < 20; i++) uids.push((await appendBytes(box, message(`u${i}`))).uid);
      for (const uid of uids) expect(isValidUid(uid), `UID ${JSON.stringify(uid)}`).toBe(true);
      expect(new Set(uids).size).toBe(uids.length);
      expect(await uidsOf(box)).toEqual(uids);
    });

    it("keeps UIDs, sizes and bytes across a restart", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const datas = [message("r1"), message("r2", "more\r\n"), message("r3", "even more\r\n")];
      for (const data of datas) await appendBytes(box, data);
      const before = await box.list();
      await store.close();
      const reopened = await h.open(ns);
      const again = reopened.mailbox("alice@example.test");
      const after = await again.list();
      expect(after.map((m) => [m.uid, m.size, m.receivedAt, m.retrievedAt])).toEqual(
        before.map((m) => [m.uid, m.size, m.receivedAt, m.retrievedAt]),
      );
      for (const [i, m] of after.entries()) expectSameBytes(await readBytes(again, m.uid), datas[i]!);
    });

    it("never reuses a UID after expunge, neither at once nor after a restart", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const old: string[] = [];
      for (let i = 0; i < 3; i++) old.push((await appendBytes(box, message(`old${i}`))).uid);
      const l = await lease(box);
      expect(await box.expunge(old, l)).toBe(3);
      await l.release();
      const fresh1 = (await appendBytes(box, message("fresh1"))).uid;
      expect(old).not.toContain(fresh1);
      const l2 = await lease(box);
      expect(await box.expunge([fresh1], l2)).toBe(1);
      await l2.release();
      await store.close();

      const reopened = await h.open(ns);
      const again = reopened.mailbox("alice@example.test");
      expect(await again.list()).toEqual([]);
      const fresh: string[] = [];
      for (let i = 0; i < 5; i++) fresh.push((await appendBytes(again, message(`new${i}`))).uid);
      for (const uid of fresh) {
        expect(old).not.toContain(uid);
        expect(uid).not.toBe(fresh1);
      }
      expect(new Set(fresh).size).toBe(5);
    });

    it("never reuses a UID after expunge when the store was never closed (a crash), not even from a second instance", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const old: string[] = [];
      for (let i = 0; i < 3; i++) old.push((await appendBytes(box, message(`kept${i}`))).uid);
      const l = await lease(box);
      expect(await box.expunge(old.slice(1), l)).toBe(2);
      await l.release();
      // No close(): whatever the store keeps only in memory until then is as good as lost.
      const second = (await h.open(ns)).mailbox("alice@example.test");
      const fresh: string[] = [];
      for (let i = 0; i < 3; i++) fresh.push((await appendBytes(second, message(`after${i}`))).uid);
      fresh.push((await appendBytes(box, message("first instance again"))).uid);
      for (const uid of fresh) expect(old).not.toContain(uid);
      expect(new Set(fresh).size).toBe(fresh.length);
    });

    it("uidMark and skipUids (optional, both or neither): a mailbox skipping a mark never generates what it covers", async () => {
      const { ns, store } = await h.fresh();
      const probe = store.mailbox("alice@example.test");
      expect(typeof probe.skipUids, "uidMark and skipUids come together").toBe(typeof probe.uidMark);
      const a = marksOf(probe);
      const b = marksOf(store.mailbox("bob@example.test"));
      if (a === null || b === null) return;
      expect(await a.uidMark()).toBeNull();
      const old: string[] = [];
      for (let i = 0; i < 3; i++) old.push((await appendBytes(probe, message(`marked${i}`))).uid);
      const l = await lease(probe);
      await probe.expunge(old, l);
      await l.release();
      const mark = await a.uidMark();
      if (mark === null) throw new Error("uidMark gave null after three generated UIDs");
      // What a copy does on the target: the mark of the same mailbox in another store.
      await b.skipUids(mark);
      await b.skipUids(mark);
      // A mark of another kind of store is ignored, not refused.
      await b.skipUids("some-other-store:12345");
      const fresh: string[] = [];
      for (let i = 0; i < 3; i++) fresh.push((await appendBytes(store.mailbox("bob@example.test"), message(`skipped${i}`))).uid);
      await store.close();
      const reopened = (await h.open(ns)).mailbox("bob@example.test");
      fresh.push((await appendBytes(reopened, message("after restart"))).uid);
      for (const uid of fresh) expect(old).not.toContain(uid);
      // The mark moved on with bob's own UIDs; an older mark does not take it back.
      const again = marksOf(reopened)!;
      const later = await again.uidMark();
      await again.skipUids(mark);
      expect(await again.uidMark()).toBe(later);
    });

    it("generates UIDs through deliver that are unique among everything the mailbox ever held, mixed with append and explicit UIDs", async () => {
      // deliver is the SMTP path and usually a code path of its own; a UID it hands out twice is mail
      // that a client which keeps its UIDL list never downloads.
      const { ns, store } = await h.fresh();
      const ids = ["alice@example.test", "bob@example.test"];
      const seen = new Map<string, Set<string>>(ids.map((id) => [id, new Set<string>()]));
      const note = (id: string, uid: string, how: string): void => {
        expect(isValidUid(uid), `UID ${JSON.stringify(uid)} from ${how}`).toBe(true);
        const known = seen.get(id)!;
        expect(known.has(uid), `${how} gave ${id} the UID ${uid}, which it had before`).toBe(false);
        known.add(uid);
      };
      const deliver = async (s: Store, marker: string): Promise<void> => {
        for (const d of await s.deliver(ids, fromBytes(message(marker)))) note(d.mailbox, d.message.uid, `deliver ${marker}`);
      };
      const expungeNewest = async (s: Store): Promise<void> => {
        for (const id of ids) {
          const box = s.mailbox(id);
          const newest = (await box.list()).at(-1)!.uid;
          const l = await lease(box);
          expect(await box.expunge([newest], l)).toBe(1);
          await l.release();
        }
      };

      for (let i = 0; i < 3; i++) await deliver(store, `d${i}`);
      const alice = store.mailbox("alice@example.test");
      note("alice@example.test", (await appendBytes(alice, message("appended"))).uid, "append");
      // Explicit UIDs where a delivery counter would go next.
      const last = [...seen.get("alice@example.test")!].at(-1)!;
      for (const uid of likelyNextUids(last).filter((u) => !seen.get("alice@example.test")!.has(u))) {
        note("alice@example.test", (await appendBytes(alice, message(`imported ${uid}`), { uid })).uid, "explicit append");
      }
      await deliver(store, "after explicit");
      await expungeNewest(store);
      await deliver(store, "after expunge");
      await expungeNewest(store);
      // No close(): a second instance on the same data, as after a crash.
      await deliver(await h.open(ns), "from a second instance");
      await expungeNewest(store);
      await store.close();
      const reopened = await h.open(ns);
      await deliver(reopened, "after restart");
      note("alice@example.test", (await appendBytes(reopened.mailbox("alice@example.test"), message("appended later"))).uid, "append");
      await deliver(reopened, "last");
      for (const id of ids) {
        const listed = await uidsOf(reopened.mailbox(id));
        expect(new Set(listed).size, `${id} lists a UID twice`).toBe(listed.length);
        for (const uid of listed) expect(seen.get(id)!.has(uid), `${id} lists ${uid}, which no call returned`).toBe(true);
      }
    });

    it("keeps an explicit UID, also across a restart", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const explicit = ["00000001.4f3a9c2d", "UID-from-dovecot~x", "!", "~".repeat(70)];
      for (const uid of explicit) {
        const info = await appendBytes(box, message(`explicit ${uid}`), { uid });
        expect(info.uid).toBe(uid);
      }
      const generated = (await appendBytes(box, message("generated"))).uid;
      expect(explicit).not.toContain(generated);
      expect(await uidsOf(box)).toEqual([...explicit, generated]);
      await store.close();
      const again = (await h.open(ns)).mailbox("alice@example.test");
      expect(await uidsOf(again)).toEqual([...explicit, generated]);
      for (const uid of explicit) {
        expect(new TextDecoder().decode(await readBytes(again, uid))).toContain(`explicit ${uid}`);
      }
    });

    it("never generates a UID that an explicit append already took", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const generated: string[] = [];
      for (let i = 0; i < 3; i++) generated.push((await appendBytes(box, message(`g${i}`))).uid);
      const imported = likelyNextUids(generated[generated.length - 1]!).filter((uid) => !generated.includes(uid));
      for (const uid of imported) await appendBytes(box, message(`imported ${uid}`), { uid });
      for (const s of [store, await h.open(ns)]) {
        for (let i = 0; i < 8; i++) generated.push((await appendBytes(s.mailbox("alice@example.test"), message(`later${i}`))).uid);
      }
      const all = await uidsOf(box);
      expect(new Set(all).size).toBe(all.length);
      expect(all).toHaveLength(generated.length + imported.length);
      for (const uid of imported) expect(new TextDecoder().decode(await readBytes(box, uid))).toContain(`imported ${uid}`);
    });

    it('refuses an explicit UID that is present with "exists", keeping the original', async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      const first = await appendBytes(box, message("first"));
      await expectStoreError(appendBytes(box, message("second"), { uid: first.uid }), "exists");
      await appendBytes(box, message("third"), { uid: "chosen" });
      await expectStoreError(appendBytes(box, message("fourth"), { uid: "chosen" }), "exists");
      expect(await uidsOf(box)).toEqual([first.uid, "chosen"]);
      expect(new TextDecoder().decode(await readBytes(box, first.uid))).toContain("first");
      expect(new TextDecoder().decode(await readBytes(box, "chosen"))).toContain("third");
    });

    it('refuses an invalid explicit UID with "invalid-name" and keeps nothing', async () => {
      const { store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      for (const uid of ["", "with space", "x".repeat(71), "ü", "tab\there", "line\r\nbreak", "nul\0"]) {
        await expectStoreError(appendBytes(box, message("bad uid"), { uid }), "invalid-name");
      }
      expect(await box.list()).toEqual([]);
    });

    it("keeps receivedAt and retrievedAt given to append, also across a restart", async () => {
      const { ns, store } = await h.fresh();
      const box = store.mailbox("alice@example.test");
      // Whole seconds, so that a store keeping second precision still keeps them exactly.
      const receivedAt = Date.UTC(2021, 4, 6, 7, 8, 9);
      const retrievedAt = Date.UTC(2022, 0, 2, 3, 4, 5);
      const a = await appendBytes(box, message("a"), { receivedAt });
      const b = await appendBytes(box, message("b"), { receivedAt, retrievedAt });
      const c = await appendBytes(box, message("c"), { retrievedAt: null });
      expect([a.receivedAt, a.retrievedAt]).toEqual([receivedAt, null]);
      expect([b.receivedAt, b.retrievedAt]).toEqual([receivedAt, retrievedAt]);
      expect(c.retrievedAt).toBeNull();
      await store.close();
      const listed = await (await h.open(ns)).mailbox("alice@example.test").list();
      expect(listed.map((m) => [m.uid, m.receivedAt, m.retrievedAt])).toEqual([
        [a.uid, receivedAt, null],
        [b.uid, receivedAt, retrievedAt],
        [c.uid, c.receivedAt, null],
      ]);
    });
  });
}
