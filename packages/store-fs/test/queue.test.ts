import { mkdir, mkdtemp, readFile, readdir, rm, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fromBytes } from "@mailroom/store";
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
