import { describe, expect, it } from "vitest";
import { fromBytes } from "@mailroom/store";
import { createMemoryStore } from "@mailroom/store/memory";
import { runExpire } from "../src/index.js";

const DAY = 86_400_000;
const NOW = Date.UTC(2026, 10, 27);

async function storeWithHistory() {
  const store = createMemoryStore();
  const a = store.mailbox("a@example.test");
  await a.append(fromBytes("old\r\n"), { uid: "old", retrievedAt: NOW - 10 * DAY });
  await a.append(fromBytes("recent\r\n"), { uid: "recent", retrievedAt: NOW - 2 * DAY });
  await a.append(fromBytes("unread\r\n"), { uid: "unread", receivedAt: NOW - 100 * DAY });
  const b = store.mailbox("b@example.test");
  await b.append(fromBytes("old too\r\n"), { uid: "b-old", retrievedAt: NOW - 8 * DAY });
  return store;
}

const uids = async (store: ReturnType<typeof createMemoryStore>, id: string) =>
  (await store.mailbox(id).list()).map((m) => m.uid);

describe("runExpire", () => {
  it("removes messages retrieved more than `days` ago and keeps unread ones", async () => {
    const store = await storeWithHistory();
    expect(await runExpire(store, { days: 7, holder: "expire test", now: NOW })).toEqual({
      mailboxes: 2,
      removed: 2,
      skipped: 0,
    });
    expect(await uids(store, "a@example.test")).toEqual(["recent", "unread"]);
    expect(await uids(store, "b@example.test")).toEqual([]);
    expect((await runExpire(store, { days: 7, holder: "expire test", now: NOW })).removed).toBe(0);
  });

  it("skips a mailbox whose lease is held (a POP3 session is in it) and leaves it free afterwards", async () => {
    const store = await storeWithHistory();
    const lease = await store.mailbox("a@example.test").acquireLease({ holder: "pop3 session", ttlMs: 10_000 });
    expect(await runExpire(store, { days: 7, holder: "expire test", now: NOW })).toEqual({
      mailboxes: 1,
      removed: 1,
      skipped: 1,
    });
    expect(await uids(store, "a@example.test")).toEqual(["old", "recent", "unread"]);
    await lease.release();
    expect((await runExpire(store, { days: 1, holder: "expire test", now: NOW })).removed).toBe(2);
    expect(await uids(store, "a@example.test")).toEqual(["unread"]);
    // Its own leases were released.
    await (await store.mailbox("a@example.test").acquireLease({ holder: "after", ttlMs: 1000 })).release();
  });

  it("stops between two mailboxes once its signal is aborted, counting what it did", async () => {
    const store = await storeWithHistory();
    const controller = new AbortController();
    // Abort while the first mailbox is being worked on: that one finishes, the second is not begun.
    const watched = Object.create(store) as typeof store;
    watched.mailbox = (id: string) => {
      const box = store.mailbox(id);
      const list = box.list.bind(box);
      return Object.assign(Object.create(box) as typeof box, {
        list: async () => {
          controller.abort();
          return list();
        },
      });
    };
    const result = await runExpire(watched, { days: 7, holder: "expire test", now: NOW, signal: controller.signal });
    expect(result).toEqual({ mailboxes: 1, removed: 1, skipped: 0 });
    expect(await runExpire(store, { days: 7, holder: "expire test", now: NOW, signal: controller.signal })).toEqual({
      mailboxes: 0,
      removed: 0,
      skipped: 0,
    });
  });

  it("rejects a negative number of days", async () => {
    await expect(runExpire(createMemoryStore(), { days: -1, holder: "x" })).rejects.toThrow(RangeError);
  });
});
