import { describe, expect, it } from "vitest";
import { readdir } from "node:fs/promises";
import { join, relative } from "node:path";
import { hasStoreErrorCode } from "@mailroom/store";
import { createFsStore, fsAdapter, locateMailbox, pathFromUrl } from "../src/index.js";
import { openStore, readText, tempRoot, text } from "./helpers.js";

const root = await tempRoot("adapter");
let n = 0;
const fresh = () => join(root, `ns${++n}`);
const MSG = "Subject: hi\r\n\r\nbody\r\n";

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    out.push(join(dir, entry.name));
    if (entry.isDirectory()) out.push(...(await walk(join(dir, entry.name))));
  }
  return out;
}

describe("maildir adapter", () => {
  it("keeps every unsafe id inside the root, readable where it can be, and lists it exactly", async () => {
    const ns = fresh();
    const store = await openStore(ns);
    const ids = [
      "../escape", ".", "..", "a/b@c/d", "Alice@Example.test", "ünï@example.test", "x".repeat(320),
      "@lead", "trail@", "mailroom-directory.json", "a@b@c", "%41@x", ".hidden@example.test",
    ];
    for (const id of ids) await store.mailbox(id).append(text(MSG));
    for (const id of ids) expect(await store.mailbox(id).list()).toHaveLength(1);
    expect([...(await store.listMailboxes())].sort()).toEqual([...ids].sort());
    for (const path of await walk(ns)) {
      const rel = relative(ns, path);
      expect(rel.startsWith("..")).toBe(false);
      for (const segment of rel.split("/")) expect(Buffer.byteLength(segment)).toBeLessThanOrEqual(255);
    }
    expect(relative(ns, locateMailbox(ns, "alice@example.test").dir)).toBe("example.test/alice");
    expect(relative(ns, locateMailbox(ns, "Alice@Example.test").dir)).toBe("%45xample.test/%41lice");
    expect(relative(ns, locateMailbox(ns, "../escape").dir)).toBe("@/%2E.%2Fescape");
    expect(relative(ns, locateMailbox(ns, "x".repeat(320)).dir)).toMatch(/^@\/x{60}~[0-9a-f]{32}$/);
  });

  it("delivers twice into one mailbox named twice", async () => {
    const store = await openStore(fresh());
    const out = await store.deliver(["a@example.test", "a@example.test"], text(MSG));
    expect(new Set(out.map((d) => d.message.uid)).size).toBe(2);
    const list = await store.mailbox("a@example.test").list();
    expect(list.map((m) => m.uid)).toEqual(out.map((d) => d.message.uid));
    for (const m of list) expect(await readText(store.mailbox("a@example.test").read(m.uid))).toBe(MSG);
  });

  it("parses maildir: URLs and opens through the adapter", async () => {
    expect(pathFromUrl("maildir:/srv/mail")).toBe("/srv/mail");
    expect(pathFromUrl("maildir:///srv/mail%20x")).toBe("/srv/mail x");
    expect(pathFromUrl("maildir:./data")).toBe(join(process.cwd(), "data"));
    expect(pathFromUrl("maildir:data")).toBe(join(process.cwd(), "data"));
    for (const bad of ["maildir://host/x", "maildir:", "postgres://x"]) {
      expect(() => pathFromUrl(bad)).toThrow();
    }
    expect(fsAdapter.name).toBe("maildir");
    expect(fsAdapter.schemes).toEqual(["maildir"]);
    const ns = fresh();
    const store = await fsAdapter.open(`maildir://${ns}`, { fsync: false, hostname: "mx1" });
    expect(store.kind).toBe("maildir");
    expect(store.capabilities).toEqual({ sharedAcrossProcesses: true, boundedMemory: true });
    const { uid } = await store.mailbox("a@example.test").append(text(MSG));
    expect(uid.endsWith(".mx1")).toBe(true);
    await expect(fsAdapter.open(`maildir:${ns}`, { fsync: "yes" })).rejects.toSatisfy((e) => hasStoreErrorCode(e, "invalid-name"));
    for (const bad of [-1, 1.5, "4096"]) {
      await expect(fsAdapter.open(`maildir:${ns}`, { sync_read_bytes: bad })).rejects.toThrow("sync_read_bytes");
    }
    for (const limit of [0, 4096n, 1 << 20]) {
      const reader = await fsAdapter.open(`maildir:${ns}`, { sync_read_bytes: limit });
      expect(await readText(reader.mailbox("a@example.test").read(uid))).toBe(MSG);
    }
    for (const bad of [-1, 0.5, "262144", true]) {
      await expect(fsAdapter.open(`maildir:${ns}`, { delivery_log_bytes: bad })).rejects.toThrow("delivery_log_bytes");
    }
    for (const limit of [0, 1024n, 1 << 20]) {
      const writer = await fsAdapter.open(`maildir:${ns}`, { delivery_log_bytes: limit });
      const [delivered] = await writer.deliver(["a@example.test"], text(MSG));
      expect(await readText(writer.mailbox("a@example.test").read(delivered!.message.uid))).toBe(MSG);
      await writer.close();
    }
    await expect(fsAdapter.open(`maildir:${ns}`, { file_thread: "no" })).rejects.toThrow("file_thread");
    for (const fileThread of [true, false]) {
      const writer = await fsAdapter.open(`maildir:${ns}`, { file_thread: fileThread });
      const [delivered] = await writer.deliver(["a@example.test"], text(MSG));
      expect(await readText(writer.mailbox("a@example.test").read(delivered!.message.uid))).toBe(MSG);
      await writer.close();
    }
    expect((await (await createFsStore({ root: ns })).mailbox("a@example.test").list())[0]!.uid).toBe(uid);
  });
});
